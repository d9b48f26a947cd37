"""train.precision=auto: bf16 only where the device multiplies bf16 natively, else fp32; a DeepSpeed
JSON that names a precision decides; explicit choices stay as asked."""

from __future__ import annotations

import json

import pytest
import torch

from dist_llm.config import load_config
from dist_llm.precision import choose_precision, native_bf16, resolve_precision
from tests.conftest import make_trainer


@pytest.mark.parametrize(
    "requested, native, json_precision, expected",
    [
        ("auto", True, None, "bf16"),
        ("auto", False, None, "fp32"),
        ("auto", False, "bf16", "bf16"),  # the JSON decides
        ("auto", True, "fp32", "fp32"),
        ("bf16", False, None, "bf16"),  # asked for explicitly: kept (with a warning)
        ("fp32", True, None, "fp32"),
    ],
)
def test_choose_precision(requested, native, json_precision, expected):
    assert choose_precision(requested, native, json_precision) == expected


def test_native_bf16_matches_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    assert native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_trainer_resolves_auto_and_records_it(tmp_path, dataset):
    trainer = make_trainer(tmp_path / "run", dataset, ["train.precision=auto"], [])
    assert trainer.cfg.train.precision == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert trainer.engine.precision == trainer.cfg.train.precision


def test_auto_follows_a_deepspeed_json(tmp_path, dataset):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    cfg = load_config(None, ["engine.type=deepspeed", f"engine.deepspeed_config={path}"])
    assert cfg.train.precision == "auto"
    assert resolve_precision(cfg, torch.device("cpu")) == "bf16"
