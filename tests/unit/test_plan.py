"""The pre-launch planner: its training-state bytes are the engine's own, its layouts are the ones
the config accepts, and `dist-llm train`/`launch` refuse a layout it says cannot fit, before
spawning, unless launch.check_fit=false."""

from __future__ import annotations

import json

import pytest

from dist_llm.cli import main
from dist_llm.config import load_config
from dist_llm.models import count_params
from dist_llm.plan.layouts import candidate_layouts, with_layout
from dist_llm.plan.planner import plan
from dist_llm.plan.shares import ADAM_STATE, FP32, rank_share
from tests.conftest import REPO, SMALL_MODEL, make_trainer

TINY = str(REPO / "configs" / "tiny.yaml")
# ~6.5B parameters: 105 GB of fp32 training state, more than any CPU host here holds on 2 ranks.
HUGE = ["model.d_model=4096", "model.n_layers=32", "model.n_heads=32", "model.n_kv_heads=8"]


def small_config(*overrides: str):
    return load_config(TINY, [*SMALL_MODEL, "model.vocab_size=1024", "train.precision=fp32", *overrides])


def test_planned_state_is_the_engines_memory_report(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset, ["train.max_steps=1"], [])
    trainer.fit()
    share = rank_share(trainer.cfg, world=1, rank=0)
    report = trainer.engine.memory_report()
    assert (share.param_bytes, share.grad_bytes, share.optimizer_bytes) == (
        report["param_bytes"],
        report["grad_bytes"],
        report["optimizer_bytes"],
    )


@pytest.mark.parametrize("layout", [["engine.dp_shard=4"], ["engine.tp=2"], ["engine.pp=2"]])
def test_shards_of_all_ranks_add_up_to_the_model(layout):
    cfg = small_config(*layout)
    cfg.validate(world_size=4)
    shares = [rank_share(cfg, 4, r) for r in range(4)]
    dims = cfg.engine.dims(4)
    tied_copy = cfg.model.vocab_size * cfg.model.d_model if dims.pp > 1 and cfg.model.tie_embeddings else 0
    norms = (2 * cfg.model.n_layers + 1) * cfg.model.d_model  # replicated on every TP rank
    params = sum(s.param_bytes for s in shares) // FP32
    assert params == count_params(cfg.model) + tied_copy + (dims.tp - 1) * norms
    assert all(s.grad_bytes == s.param_bytes for s in shares)
    assert all(s.optimizer_bytes >= s.param_bytes // FP32 * ADAM_STATE for s in shares)


def test_candidate_layouts_are_the_ones_the_config_accepts():
    cfg = small_config()  # 4 heads, 2 KV heads, 2 layers, global batch 8, seq 64
    layouts = candidate_layouts(cfg, world=8, ranks_per_node=8)
    assert layouts
    for lay in layouts:
        assert lay.pp * lay.dp * lay.tp == 8
        assert cfg.model.kv_heads % lay.tp == 0 and lay.pp <= cfg.model.n_layers
        assert cfg.train.global_batch_size % (lay.micro_batch * lay.dp) == 0
        with_layout(cfg, lay).validate(world_size=8)
    assert {lay.tp for lay in layouts} == {1, 2}  # tp=4, 8 would split 2 KV heads
    assert {lay.pp for lay in layouts} <= {1, 2}
    assert any(lay.dp_shard == 8 for lay in layouts) and any(lay.cpu_offload for lay in layouts)


def test_plan_lists_fitting_layouts_fastest_first_with_memory_by_component():
    result = plan(small_config(), nodes=1, ranks_per_node=4, kind="h100")
    fits = [e for e in result.estimates if e.fits]
    assert len(fits) == len(result.estimates)  # a 2-layer model fits an H100 any way
    speeds = [e.time.tokens_per_s for e in fits]
    assert speeds == sorted(speeds, reverse=True)
    best = fits[0].memory
    assert best.params > 0 and best.activations > 0 and best.runtime > 0
    assert 0 < fits[0].time.mfu < 1


def test_train_refuses_a_layout_that_cannot_fit_before_spawning(dataset, capsys):
    args = [TINY, f"data.path={dataset}", "eval.tasks=[]", "launch.nproc_per_node=2", *HUGE]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "launch.check_fit=false" in err
    for part in ("params", "grads", "optimizer", "activations", "GB per rank"):
        assert part in err
    # With the check off, the launcher goes on to the next stage: the torchrun command line.
    assert main(["launch", *args, "launch.check_fit=false", "--dry-run"]) == 0
    assert "torch.distributed.run" in capsys.readouterr().out


def test_the_readme_job_passes_the_fit_check(dataset, capsys):
    assert main(["launch", TINY, f"data.path={dataset}", "--dry-run"]) == 0


def test_plan_command_prints_the_table_and_its_assumptions(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = [TINY, *SMALL_MODEL, "model.vocab_size=1024", "--gpus-per-node", "2", "--gpu", "a100"]
    assert main(["plan", *args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layouts fit" in text and "best: engine.dp_shard=" in text
    assert "assumptions:" in text and "share of peak reached 0.5" in text and "fake process group" in text
    layouts = json.loads(out.read_text())["layouts"]
    assert layouts and all({"params", "activations", "total"} <= set(e["memory_bytes"]) for e in layouts)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_shares_follow_the_stage(stage):
    cfg = small_config("engine.type=deepspeed", f"engine.zero_stage={stage}")
    n, whole = count_params(cfg.model), rank_share(cfg, 1, 0)
    share = rank_share(cfg, 4, 1)
    assert whole.param_bytes == n * FP32 and whole.optimizer_bytes == n * ADAM_STATE
    assert share.param_bytes == (-(-n // 4) if stage == 3 else n) * FP32
    assert share.grad_bytes == (-(-n // 4) if stage >= 2 else n) * FP32
    assert share.optimizer_bytes == (-(-n // 4) if stage >= 1 else n) * ADAM_STATE
