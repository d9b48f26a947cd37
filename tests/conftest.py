"""Session fixtures shared by the unit and distributed tests: one small prepared dataset and a
helper that runs `dist-llm train` in real subprocesses (torchrun for several ranks)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_llm.bench.s3_server import free_port
from dist_llm.checkpoint.commit import check_manifest, read_verified
from dist_llm.checkpoint.discovery import find_resumable
from dist_llm.checkpoint.offline import model_tensors
from dist_llm.config import load_config
from dist_llm.distributed import World
from dist_llm.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

# A model small enough that a training step takes milliseconds on one core.
SMALL_MODEL = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "optim.warmup_steps=2",
    "train.eval_interval=0",
    "train.eval_batches=2",
    "eval.tasks=[]",
    "train.log_interval=1",
    "logging.peak_tflops=1.0",
]


@pytest.fixture
def warnings_log(caplog) -> pytest.LogCaptureFixture:
    """The library logger does not propagate to the root logger, so attach caplog to it directly."""
    logger = logging.getLogger("dist_llm")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="dist_llm")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    """The built-in default corpus prepared with a small vocabulary (about 10 s once per session)."""
    out = str(tmp_path_factory.mktemp("data") / "ds")
    subprocess.run(
        [sys.executable, "-m", "data_prep", "--out", out, "--vocab-size", "1024", "--quiet"],
        check=True,
        cwd=REPO,
    )
    return out


def train_command(run_dir: str, dataset: str, overrides: list[str], nproc: int = 1) -> list[str]:
    args = [
        "train",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        f"logging.run_dir={run_dir}",
        f"launch.nproc_per_node={nproc}",
        *SMALL_MODEL,
        *overrides,
    ]
    if nproc == 1:
        return [sys.executable, "-m", "dist_llm.cli", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{free_port()}",
        "-m",
        "dist_llm.cli",
        *args,
    ]


def run_train(
    run_dir: str, dataset: str, overrides: list[str], nproc: int = 1, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run training to completion in fresh processes; fails the test with the log on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        train_command(run_dir, dataset, overrides, nproc),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(run_dir: str) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def final_weights(run_dir: str) -> dict[str, torch.Tensor]:
    """The model weights of a run's newest checkpoint, read tensor by tensor (a tied head once)."""
    return dict(model_tensors(find_resumable(os.path.join(run_dir, "checkpoints"))))


def verify_checkpoint(step_uri: str) -> dict:
    """Check every file of a checkpoint against its manifest (what the ranks that read it check)."""
    manifest = check_manifest(step_uri)
    for name in manifest["files"]:
        read_verified(step_uri, manifest, name)
    return manifest


def assert_weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def make_trainer(run_dir, dataset: str, overrides: list[str], callbacks: list) -> Trainer:
    """An in-process, single-rank Trainer on the small model (fp32, 8 steps unless overridden)."""
    cfg = load_config(
        str(REPO / "configs" / "tiny.yaml"),
        [
            f"data.path={dataset}",
            f"logging.run_dir={run_dir}",
            "launch.nproc_per_node=1",
            *SMALL_MODEL,
            "train.precision=fp32",
            "train.max_steps=8",
            "checkpoint.async_save=false",
            *overrides,
        ],
    )
    cfg.validate(world_size=1)
    return Trainer(cfg, World(rank=0, local_rank=0, size=1, device=torch.device("cpu")), callbacks=callbacks)
