"""The DeepSpeed JSON: generated from our config, or a user's file whose keys are checked against
DeepSpeed's schema (DeepSpeed itself ignores misspelled keys) and whose values must agree with ours."""

from __future__ import annotations

import json

import pytest

from dist_llm.config import load_config
from dist_llm.engine.deepspeed_config import (
    check_keys,
    generate_deepspeed_config,
    load_deepspeed_config,
    validate_deepspeed_config,
)
from dist_llm.errors import ConfigError
from tests.conftest import REPO

READY_MADE = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


def ds_cfg(*overrides: str):
    return load_config(
        None,
        [
            "engine.type=deepspeed",
            "train.global_batch_size=16",
            "train.micro_batch_size=2",
            "launch.nproc_per_node=2",
            *overrides,
        ],
    )


def write(tmp_path, ds: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return str(path)


def test_generated_config_follows_train_and_optim():
    cfg = ds_cfg(
        "engine.zero_stage=3",
        "engine.offload_optimizer=cpu",
        "engine.offload_params=cpu",
        "train.precision=bf16",
        "optim.grad_clip=0.5",
    )
    ds = generate_deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4  # 16 / (2 per micro-batch x 2 ranks)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and "fp16" not in ds
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert "optimizer" not in ds and "scheduler" not in ds  # ours: same AdamW as DDP, LR set per step
    check_keys(ds, "generated")
    assert "bf16" not in generate_deepspeed_config(ds_cfg("train.precision=fp32"), 2)


@pytest.mark.parametrize("path", READY_MADE, ids=[p.name for p in READY_MADE])
def test_ready_made_configs_are_valid(path):
    stage = json.loads(path.read_text())["zero_optimization"]["stage"]
    precision = path.stem.rsplit("_", 1)[1]
    cfg = ds_cfg(
        f"engine.deepspeed_config={path}", f"engine.zero_stage={stage}", f"train.precision={precision}"
    )
    validate_deepspeed_config(cfg, world_size=2)
    ds = load_deepspeed_config(cfg, world_size=2)
    assert ds["gradient_accumulation_steps"] == 4  # batch sizes left out of the file come from train.*


def test_ready_made_configs_cover_every_stage_and_precision():
    names = {p.stem for p in READY_MADE}
    stages = ("zero1", "zero2", "zero3", "zero3_offload")
    assert names == {f"{z}_{p}" for z in stages for p in ("bf16", "fp16")} | {"zero3_nvme_fp32"}


@pytest.mark.parametrize(
    "ds, message",
    [
        ({"zero_optimization": {"stag": 3}}, "unknown key zero_optimization.stag (did you mean stage?)"),
        (
            {"zero_optimisation": {"stage": 1}},
            "unknown key zero_optimisation (did you mean zero_optimization?)",
        ),
        (
            {"zero_optimization": {"stage": 3, "offload_param": {"devcie": "cpu"}}},
            "unknown key zero_optimization.offload_param.devcie (did you mean device?)",
        ),
        ({"train_micro_batch_size_per_gpus": 2}, "unknown key train_micro_batch_size_per_gpus"),
        ({"bf16": {"enable": True}}, "unknown key bf16.enable (did you mean enabled?)"),
        ({"optimizer": {"type": "AdamW", "parms": {}}}, "unknown key optimizer.parms (did you mean params?)"),
    ],
)
def test_mistyped_keys_are_reported(tmp_path, ds, message):
    path = write(tmp_path, ds)
    with pytest.raises(ConfigError) as err:
        validate_deepspeed_config(ds_cfg(f"engine.deepspeed_config={path}"), world_size=2)
    assert str(err.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize(
    "ds, overrides, names",
    [
        ({"train_batch_size": 32}, [], ["train_batch_size=32", "train.global_batch_size", "16"]),
        ({"train_micro_batch_size_per_gpu": 4}, [], ["train_micro_batch_size_per_gpu=4", "= 2"]),
        ({"gradient_clipping": 2.0}, [], ["gradient_clipping=2.0", "optim.grad_clip", "1.0"]),
        ({"bf16": {"enabled": True}}, ["train.precision=fp32"], ["enables bf16", "train.precision=fp32"]),
        ({"zero_optimization": {"stage": 3}}, [], ["zero_optimization.stage=3", "engine.zero_stage=1"]),
        (
            {"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.999]}}},
            [],
            ["optimizer.params.betas=[0.9, 0.999]", "0.95"],
        ),
        ({"optimizer": {"type": "Lamb"}}, [], ["optimizer.type='Lamb'", "only AdamW"]),
        ({"scheduler": {"type": "WarmupLR"}}, [], ["scheduler", "optim.schedule"]),
        (
            {"zero_optimization": {"stage": 3}},
            ["engine.zero_stage=3", "engine.offload_params=cpu"],
            ["zero_optimization.offload_param.device=none", "engine.offload_params=cpu"],
        ),
    ],
)
def test_json_must_agree_with_our_config(tmp_path, ds, overrides, names):
    path = write(tmp_path, {"zero_optimization": {"stage": 1}, **ds})
    with pytest.raises(ConfigError) as err:
        validate_deepspeed_config(ds_cfg(f"engine.deepspeed_config={path}", *overrides), world_size=2)
    for name in names:
        assert name in str(err.value)


def test_agreeing_json_is_used_with_our_batch_sizes(tmp_path):
    path = write(
        tmp_path,
        {
            "train_batch_size": 16,
            "gradient_clipping": 1.0,
            "optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.95], "lr": 5.0}},
            "zero_optimization": {"stage": 2, "overlap_comm": False},
        },
    )
    ds = load_deepspeed_config(
        ds_cfg(f"engine.deepspeed_config={path}", "engine.zero_stage=2", "train.precision=fp32"), world_size=2
    )
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert ds["gradient_accumulation_steps"] == 4 and "optimizer" not in ds


def test_unreadable_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 1,}}')
    with pytest.raises(ConfigError, match=r"bad.json:1: invalid JSON"):
        validate_deepspeed_config(ds_cfg(f"engine.deepspeed_config={bad}"), world_size=2)
    with pytest.raises(ConfigError, match="file not found"):
        validate_deepspeed_config(ds_cfg(f"engine.deepspeed_config={tmp_path}/nope.json"), world_size=2)
