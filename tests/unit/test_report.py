"""`dist-llm report`: plots and summary of a real (small, resumed) run; metrics.jsonl stitching of
resumed attempts; errors that name file:line."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from matplotlib.image import imread

from dist_llm.checkpoint.discovery import committed_steps
from dist_llm.cli import main
from dist_llm.config import dump_config
from dist_llm.errors import DataError
from dist_llm.report.history import read_history
from dist_llm.report.plots import has_memory
from tests.conftest import make_trainer, read_metrics

RUN = ["train.eval_interval=4", "checkpoint.interval=4", "train.straggler_interval=4"]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, dataset) -> str:
    """12 steps, then resumed to 16: one metrics.jsonl with two attempts, as `dist-llm train` writes
    it. In-process trainers (no process start-ups) on one thread: on a 2-core machine busy with
    other tests, two threads per step make the steps ~10x slower."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for overrides in (["train.max_steps=12"], ["train.max_steps=16", "checkpoint.resume=auto"]):
            trainer = make_trainer(run_dir, dataset, [*RUN, *overrides], [])
            with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(dump_config(trainer.cfg))
            trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_report_of_a_resumed_run(resumed_run, capsys):
    assert main(["report", resumed_run]) == 0
    out_dir = os.path.join(resumed_run, "report")
    printed = capsys.readouterr().out.split()
    assert os.path.join(out_dir, "summary.md") in printed
    records = read_metrics(resumed_run)
    has_memory = any("memory_rss_bytes" in r or "memory_gpu_peak_bytes" in r for r in records)
    pngs = ["loss.png", "throughput.png", "lr.png", *(["memory.png"] if has_memory else []), "ranks.png"]
    for png in pngs:
        path = os.path.join(out_dir, png)
        assert path in printed
        height, width, channels = imread(path).shape
        assert width >= 800 and height >= 400 and channels in (3, 4)
    with open(os.path.join(out_dir, "summary.md"), encoding="utf-8") as f:
        summary = f.read()
    for png in pngs:
        assert f"]({png})" in summary
    if not has_memory:
        assert "memory.png not drawn" in summary
    val = [r for r in records if "val_loss" in r]
    best = min(val, key=lambda r: r["val_loss"])
    assert "| Steps | 16 of 16 planned |" in summary
    assert f"| Tokens seen | {16 * 8 * 64:,} " in summary
    assert "| Resumes | 1 (continued at step 13) |" in summary
    assert f"| Best validation loss | {best['val_loss']:.4f} (step {best['step']}) |" in summary
    assert f"perplexity {val[-1]['val_ppl']:.2f}" in summary
    committed = {r["checkpoint_committed"] for r in records if "checkpoint_committed" in r}
    assert not committed or f"; {len(committed)} committed" in summary
    kept = sorted(committed_steps(os.path.join(resumed_run, "checkpoints")))
    assert f"on storage (steps {', '.join(map(str, kept))})" in summary
    assert "| Model | decoder: 2 layers, d_model 64, 4 heads (2 KV)" in summary
    # One rank: its timings every 4 steps (a resume continues the schedule), never a straggler.
    timings = [r for r in records if "straggler_count" in r]
    assert [r["step"] for r in timings] == [4, 8, 12, 16]
    assert all(r["rank0_busy_ms"] > 0 and r["rank0_wait_ms"] == 0 and not r["stragglers"] for r in timings)
    assert "| Stragglers | none in 4 checks |" in summary


def _write(run_dir, lines: list) -> str:
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return path


def _train(step: int, loss: float, first: bool = False, **extra) -> dict:
    record = {
        "step": step,
        "loss": loss,
        "lr": 1e-3,
        "tokens_per_s": 100.0,
        "consumed_tokens": 10 * step,
        **extra,
    }
    return {**record, "param_bytes": 1, "grad_bytes": 1, "optimizer_bytes": 2} if first else record


def test_a_replayed_step_takes_the_later_attempts_records(tmp_path):
    # Crash after step 6, resumed from the checkpoint at 4: steps 5 and 6 run again.
    _write(
        tmp_path,
        [
            {"step": 0, "val_loss": 9.0, "val_ppl": 8103.0},
            *(_train(s, 10.0 - s, first=s == 1) for s in range(1, 7)),
            {"step": 2, "checkpoint_blocked_s": 0.1, "checkpoint_skipped": False},
            {"step": 4, "checkpoint_blocked_s": 0.1, "checkpoint_skipped": False},
            # Both async saves noticed as committed at step 4: outcomes are told apart by their checkpoint.
            {"step": 4, "checkpoint_committed": 2, "checkpoint_save_s": 1.0},
            {"step": 4, "checkpoint_committed": 4, "checkpoint_save_s": 1.0},
            {"step": 6, "val_loss": 3.0, "val_ppl": 20.0},  # from the abandoned timeline
            {"step": 6, "checkpoint_blocked_s": 0.1, "checkpoint_skipped": False},
            {"step": 6, "checkpoint_failed": 6},
            "",
            *(_train(s, 20.0 - s, first=s == 5) for s in range(5, 9)),
            {"step": 8, "val_loss": 5.0, "val_ppl": 148.4},
            {"step": 8, "some_future_kind": 1},
        ],
    )
    h = read_history(str(tmp_path))
    assert h.resumed_at == [5]
    assert [r["step"] for r in h.train] == list(range(1, 9))
    assert [r["loss"] for r in h.train] == [9, 8, 7, 6, 15, 14, 13, 12]
    assert [r["step"] for r in h.val] == [0, 8]
    assert [r["step"] for r in h.saves] == [2, 4]
    assert [r["checkpoint_committed"] for r in h.committed] == [2, 4] and not h.failed
    assert h.tokens_for([0, 4, 8]) == [0.0, 40.0, 80.0]


def test_a_resume_that_continues_is_found_by_the_engine_memory_report(tmp_path):
    _write(
        tmp_path,
        [
            *(_train(s, 1.0, first=s == 1) for s in range(1, 5)),
            *(_train(s, 1.0, first=s == 5) for s in range(5, 9)),
        ],
    )
    assert read_history(str(tmp_path)).resumed_at == [5]


def test_out_dir_memory_plot_and_a_run_without_config(tmp_path, capsys):
    run_dir, out = tmp_path / "run", str(tmp_path / "elsewhere")
    run_dir.mkdir()
    _write(run_dir, [_train(s, 1.0, first=s == 1) for s in range(1, 4)])
    assert not has_memory(read_history(str(run_dir)))
    _write(run_dir, [_train(s, 1.0, first=s == 1, memory_rss_bytes=2**30 * s) for s in range(1, 4)])
    assert main(["report", str(run_dir), "--out", out]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.startswith(out) for p in printed)
    assert imread(os.path.join(out, "memory.png")).shape[1] >= 800
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        summary = f.read()
    assert "config.yaml not found" in summary and "| Steps | 3 |" in summary and "](memory.png)" in summary
    assert not os.path.exists(run_dir / "report")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([_train(1, 1.0), '{"step": 2, "loss"'], ":2: not valid JSON"),
        ([_train(1, 1.0), "[1, 2]"], ":2: a JSON list, not an object"),
        ([_train(1, 1.0), {"loss": 1.0}], ":2: step=None"),
        ([_train(1, 1.0), {"step": 1, "checkpoint_committed": "x"}], ":2: checkpoint_committed='x'"),
        ([], ": no training step records"),
        ([{"step": 0, "val_loss": 9.0, "val_ppl": 8103.0}], ": no training step records"),
    ],
)
def test_bad_metrics_name_file_and_line(tmp_path, capsys, lines, message):
    path = _write(tmp_path, lines)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dist-llm report: error: ") and f"{path}{message}" in err
    with pytest.raises(DataError, match=re.escape(f"{path}{message}")):
        read_history(str(tmp_path))


def test_missing_run_dir_and_metrics(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert main(["report", missing]) == 2
    assert f"{missing}: no such run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}: not found" in capsys.readouterr().err
