"""Typed config loading: bases, overrides, and errors that name the file, line and key."""

import pytest

from dist_llm.config import config_from_dict, load_config
from dist_llm.distributed.dims import ParallelDims
from dist_llm.errors import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_base_and_overrides_merge(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  d_model: 64\n  n_heads: 2\ntrain:\n  max_steps: 7\n")
    top = write(tmp_path, "top.yaml", "base: base.yaml\ntrain:\n  max_steps: 9\n  micro_batch_size: 4\n")
    cfg = load_config(top, ["optim.lr=0.5", "model.n_kv_heads=1"])
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads) == (64, 2, 1)
    assert cfg.train.max_steps == 9 and cfg.train.micro_batch_size == 4
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.where("train.max_steps").endswith("top.yaml:3")
    assert cfg.where("model.d_model").endswith("base.yaml:2")


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  max_steps: 5\n  micro_batch: 2\n")
    expected = r"c\.yaml:3: unknown key train\.micro_batch \(did you mean train\.micro_batch_size\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: train\.max_steps='lots' should be int"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"train\.precision='fp8' is not one of"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="should be bool"):
        load_config(None, ["model.tie_embeddings=3"])


def test_batch_divisibility_checked_against_world_size(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  global_batch_size: 24\n  micro_batch_size: 4\n")
    cfg = load_config(path)
    cfg.validate(world_size=2)  # 24 = 4 x 2 x 3
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml:2: train\.global_batch_size=24 is not divisible by "
        r"train\.micro_batch_size=4 x 4 data-parallel ranks",
    ):
        cfg.validate(world_size=4)


def test_impossible_combinations_rejected():
    with pytest.raises(ConfigError, match="data.seq_len=512 exceeds model.max_seq_len=256"):
        load_config(None, ["data.seq_len=512"]).validate()
    with pytest.raises(ConfigError, match="must divide"):
        load_config(None, ["model.n_heads=3"]).validate()
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        load_config(None, ["train.precision=fp16"]).validate()
    with pytest.raises(ConfigError, match=r"train.hang_timeout_s=0.5: give seconds >= 1, 0 to turn"):
        load_config(None, ["train.hang_timeout_s=0.5"]).validate()
    with pytest.raises(ConfigError, match="train.straggler_threshold=0.0 must be > 0"):
        load_config(None, ["train.straggler_threshold=0"]).validate()
    with pytest.raises(ConfigError, match="train.straggler_interval=-1 must be >= 0"):
        load_config(None, ["train.straggler_interval=-1"]).validate()
    for hang in ("null", "0", "30"):  # sized from step times, off, fixed
        load_config(None, [f"train.hang_timeout_s={hang}"]).validate()


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = write(tmp_path, "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.max_steps"])


def test_round_trip_through_dict():
    cfg = load_config("configs/tiny.yaml", ["train.max_steps=3"])
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_parallel_layouts_validated_before_launch():
    with pytest.raises(ConfigError, match="world size 6 is not divisible by the product 4"):
        load_config(None, ["engine.tp=4", "model.n_heads=4", "model.n_kv_heads=4"]).validate(world_size=6)
    with pytest.raises(ConfigError, match="= 8 but the world size is 4"):
        load_config(None, ["engine.tp=2", "engine.dp_shard=2", "engine.dp_replicate=2"]).validate(
            world_size=4
        )
    with pytest.raises(ConfigError, match="only one of dp_shard, tp may be -1"):
        load_config(None, ["engine.tp=-1"]).validate(world_size=4)
    with pytest.raises(ConfigError, match="engine.tp=4 must divide model.n_kv_heads=2"):
        load_config(None, ["engine.tp=4", "model.n_kv_heads=2"]).validate(world_size=4)
    with pytest.raises(ConfigError, match="engine.tp=2 must divide data.seq_len=255"):
        load_config(None, ["engine.tp=2", "data.seq_len=255"]).validate(world_size=2)
    with pytest.raises(ConfigError, match="model.dropout=0.1 with engine.tp=2"):
        load_config(None, ["engine.tp=2", "model.dropout=0.1"]).validate(world_size=2)
    with pytest.raises(ConfigError, match="engine.pp=9 exceeds model.n_layers"):
        load_config(None, ["engine.pp=9", "model.n_layers=8"]).validate(world_size=9)
    with pytest.raises(ConfigError, match="cpu_offload=true offloads FSDP2's shards"):
        load_config(None, ["engine.cpu_offload=true"]).validate(world_size=1)
    with pytest.raises(ConfigError, match="run on engine.type=torch"):
        load_config(None, ["engine.type=deepspeed", "engine.zero_stage=1", "engine.tp=2"]).validate(2)
    with pytest.raises(ConfigError, match="leave them at their defaults"):
        load_config(None, ["engine.type=deepspeed", "engine.dp_replicate=2"]).validate(2)
    with pytest.raises(ConfigError, match="offload_params=cpu needs engine.zero_stage=3"):
        load_config(
            None, ["engine.type=deepspeed", "engine.zero_stage=2", "engine.offload_params=cpu"]
        ).validate()
    with pytest.raises(ConfigError, match="needs engine.type=deepspeed"):
        load_config(None, ["engine.offload_optimizer=cpu"]).validate()
    cfg = load_config(
        None, ["engine.tp=2", "engine.pp=2", "train.global_batch_size=12", "train.micro_batch_size=2"]
    )
    cfg.validate(world_size=8)  # dp = 8 / (2 x 2) = 2, and 12 = 2 x 2 x 3
    assert cfg.engine.dims(8) == ParallelDims(pp=2, dp_replicate=1, dp_shard=2, tp=2)
    with pytest.raises(ConfigError, match="x 4 data-parallel ranks"):
        cfg.validate(world_size=16)


def test_layout_coordinates_follow_the_device_mesh():
    """tp varies fastest, then dp_shard, dp_replicate, pp: init_device_mesh's row-major order."""
    dims = [ParallelDims.resolve(2, 2, 2, 2, 16, rank) for rank in range(16)]
    assert [d.tp_rank for d in dims[:4]] == [0, 1, 0, 1]
    assert [d.dp_rank for d in dims[:8]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [d.pp_rank for d in dims] == [0] * 8 + [1] * 8
    assert dims[0].dp == 4 and dims[0].world_size == 16


def test_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-3` as a string; float fields take it as the number users mean.
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")
    assert load_config(str(path), ["optim.weight_decay=1e-2"]).optim.lr == 3e-4
    assert load_config(str(path), ["optim.weight_decay=1e-2"]).optim.weight_decay == 0.01
    with pytest.raises(ConfigError, match=r"optim.lr='fast' should be float"):
        load_config(str(path), ["optim.lr=fast"])
