"""The README's main job through the real `dist-llm` command: prep -> train on 2 ranks -> eval ->
generate; and bad input that must fail before any process is spawned."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, SMALL_MODEL, final_weights, read_metrics


def dist_llm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dist-llm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.distributed
def test_train_two_ranks_eval_and_generate(tmp_path, dataset):
    run = str(tmp_path / "run")
    train = dist_llm(
        "train",
        "configs/tiny.yaml",
        "--nproc-per-node",
        "2",
        f"data.path={dataset}",
        f"logging.run_dir={run}",
        *SMALL_MODEL,
        "train.max_steps=40",
        "train.eval_interval=20",
        "optim.lr=0.01",
        "checkpoint.interval=20",
    )
    assert train.returncode == 0, train.stderr[-4000:]
    vals = [m for m in read_metrics(run) if "val_loss" in m]
    assert [v["step"] for v in vals] == [0, 20, 40]
    assert vals[0]["val_loss"] == pytest.approx(math.log(1024), abs=0.3), "untrained loss ~ ln(vocab)"
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.8, f"validation loss did not fall: {vals}"
    steps = [m for m in read_metrics(run) if "loss" in m]
    assert all(k in steps[-1] for k in ("lr", "grad_norm", "tokens_per_s", "mfu"))
    assert os.path.exists(os.path.join(run, "config.yaml"))

    # The same 8 validation windows the in-run eval used (2 ranks x 2 batches x micro-batch 2).
    result = dist_llm("eval", run, "--max-batches", "4", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads(result.stdout)
    assert evaluated["step"] == 40
    assert evaluated["val_loss"] == pytest.approx(vals[-1]["val_loss"], rel=0.005)
    assert evaluated["val_ppl"] == pytest.approx(math.exp(evaluated["val_loss"]))

    sample = dist_llm("generate", run, "--prompt", "Return the", "--max-new-tokens", "20", "--seed", "1")
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("Return the") and len(sample.stdout) > len("Return the") + 5
    again = dist_llm("generate", run, "--prompt", "Return the", "--max-new-tokens", "20", "--seed", "1")
    assert again.stdout == sample.stdout, "seeded sampling is reproducible"

    export = dist_llm("export", run, "--out", str(tmp_path / "export"))
    assert export.returncode == 0, export.stderr[-3000:]
    exported = load_file(export.stdout.strip())
    assert exported["tok_embeddings.weight"].dtype == torch.float32
    assert torch.equal(exported["norm.weight"], final_weights(run)["norm.weight"])

    # The Hugging Face export loads with transformers' Auto classes and gives our logits.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dist_llm.evaluate import load_trained_model

    hf = dist_llm("export", run, "--format", "hf", "--out", str(tmp_path / "hf"))
    assert hf.returncode == 0, hf.stderr[-3000:]
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tokenizer("Return the value", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = load_trained_model(run).model.eval()(ids)
        assert (hf_model(ids).logits - ours).abs().max() < 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train.global_batch_size=12"],
            "override 'train.global_batch_size=12': train.global_batch_size=12 is "
            "not divisible by train.micro_batch_size=8 x 2",
        ),
        (["train.max_stepz=3"], "unknown key train.max_stepz (did you mean train.max_steps?)"),
        (["data.path=/nonexistent/ds"], "/nonexistent/ds"),
    ],
)
def test_bad_config_fails_before_spawning(args, message):
    result = dist_llm("train", "configs/tiny.yaml", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "torch.distributed" not in result.stderr and "Traceback" not in result.stderr


def test_mistyped_deepspeed_key_fails_before_spawning(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stag": 2}}')
    result = dist_llm("train", "configs/tiny.yaml", "engine.type=deepspeed", f"engine.deepspeed_config={bad}")
    assert result.returncode == 2
    assert "unknown key zero_optimization.stag (did you mean stage?)" in result.stderr
    assert "torch.distributed" not in result.stderr and "Traceback" not in result.stderr
