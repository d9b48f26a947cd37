"""The DeepSpeed JSON a run uses: generated from our config, or a user's file checked against it.

DeepSpeed silently ignores keys it does not know, so a typo such as `"stag": 3` trains with ZeRO
disabled and nobody notices. Every key of a user's file is therefore checked against DeepSpeed's
own config schema (its pydantic models where a section has one, its key-name constants elsewhere).
Importing that schema imports deepspeed (seconds), so `validate_deepspeed_config` is called only
for `engine.type=deepspeed`: by the CLI before processes are spawned and again by each rank.
"""

from __future__ import annotations

import difflib
import importlib
import json
import typing
from typing import Any

from dist_llm.config import Config
from dist_llm.errors import ConfigError

# Sections of a DeepSpeed JSON described by a pydantic model: their keys are checked recursively.
_MODEL_SECTIONS = {
    "zero_optimization": "deepspeed.runtime.zero.config:DeepSpeedZeroConfig",
    "bf16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "bfloat16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "fp16": "deepspeed.runtime.precision_config:DeepSpeedFP16Config",
    "tensorboard": "deepspeed.monitor.config:TensorBoardConfig",
    "wandb": "deepspeed.monitor.config:WandbConfig",
    "csv_monitor": "deepspeed.monitor.config:CSVConfig",
    "comet": "deepspeed.monitor.config:CometConfig",
    "comms_logger": "deepspeed.comm.config:CommsLoggerConfig",
    "compile": "deepspeed.compile.config:CompileConfig",
    "hybrid_engine": "deepspeed.runtime.config:HybridEngineConfig",
    "tensor_parallel": "deepspeed.runtime.tensor_parallel.config:TPTrainingConfig",
}
# Modules whose UPPERCASE string constants are DeepSpeed's key names (a superset: some constants
# are values, which only makes the check for the other sections more permissive, never wrong).
# Modules move between DeepSpeed releases; one that is missing has no keys in this release.
_CONSTANT_MODULES = (
    "deepspeed.runtime.constants",
    "deepspeed.runtime.config",
    "deepspeed.runtime.precision_config",
    "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.runtime.data_pipeline.constants",
    "deepspeed.runtime.model_checkpointing.constants",
    "deepspeed.runtime.activation_checkpointing.config",
    "deepspeed.runtime.torch_autocast",
    "deepspeed.profiling.constants",
    "deepspeed.autotuning.constants",
    "deepspeed.comm.constants",
    "deepspeed.compile.constants",
    "deepspeed.checkpoint.constants",
    "deepspeed.utils.config",
    "deepspeed.elasticity.constants",
    "deepspeed.compression.constants",
)
# Sections DeepSpeed reads by literal name rather than through a constant.
_LITERAL_KEYS = {"weight_quantization", "pipeline", "compression_training", "hybrid_engine"}
# The optimizer is ours (optim.*) and so is the LR schedule: these optimizer types compute AdamW.
_ADAMW_TYPES = {"adamw", "adam"}


def generate_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON equivalent of our config (batch sizes, precision, clipping, ZeRO, offload).

    No optimizer or scheduler section: the engine passes its own AdamW and sets the LR each step.
    """
    t, e = cfg.train, cfg.engine
    dp = e.dims(world_size).dp
    zero: dict[str, Any] = {"stage": e.zero_stage}
    if e.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(e.offload_optimizer, e.nvme_path)
    if e.offload_params != "none":
        zero["offload_param"] = _offload(e.offload_params, e.nvme_path)
    ds: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * dp),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,  # we log; DeepSpeed's own step prints would interleave
    }
    if t.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        ds["fp16"] = {"enabled": True}
    return ds


def _offload(device: str, nvme_path: str) -> dict[str, Any]:
    # Pinned memory needs CUDA; on a CPU-only host pinning fails.
    out: dict[str, Any] = {"device": device, "pin_memory": _cuda_available()}
    if device == "nvme":
        out["nvme_path"] = nvme_path
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The JSON this run hands to DeepSpeed: the user's file (checked) or the generated one."""
    validate_deepspeed_config(cfg, world_size)
    if not cfg.engine.deepspeed_config:
        return generate_deepspeed_config(cfg, world_size)
    # What the file leaves out (e.g. batch sizes, so one file serves every batch size) comes from
    # our config; what it says has been checked to agree. The optimizer section has been checked
    # against optim.* too, and the engine builds that optimizer itself.
    ds = {**generate_deepspeed_config(cfg, world_size), **_read_json(cfg.engine.deepspeed_config)}
    ds.pop("optimizer", None)
    return ds


def offload_device(ds: dict[str, Any], section: str) -> str:
    """Where a ZeRO section (`offload_optimizer`/`offload_param`) puts its tensors: none, cpu, nvme."""
    return str((ds.get("zero_optimization", {}).get(section) or {}).get("device") or "none")


def validate_deepspeed_config(cfg: Config, world_size: int | None = None) -> None:
    """Check engine.deepspeed_config (if set): known keys only, and agreement with train/optim.

    Call before spawning processes when engine.type=deepspeed (imports deepspeed's schema)."""
    path = cfg.engine.deepspeed_config
    if cfg.engine.type != "deepspeed" or not path:
        return
    world = world_size or cfg.launch.nproc_per_node * cfg.launch.nnodes
    ds = _read_json(path)
    check_keys(ds, path)
    _check_agreement(ds, generate_deepspeed_config(cfg, world), cfg, path)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"engine.deepspeed_config={path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return ds


def check_keys(ds: dict[str, Any], origin: str) -> None:
    """Raise ConfigError naming the first key DeepSpeed would silently ignore."""
    known = _known_top_level_keys()
    for key, value in ds.items():
        if key not in known:
            _unknown(origin, key, key, known)
        if key in _MODEL_SECTIONS and isinstance(value, dict):
            _check_model_keys(value, _import(_MODEL_SECTIONS[key]), key, origin)
        elif key == "optimizer" and isinstance(value, dict):
            _check_plain_keys(value, {"type", "params", "legacy_fusion"}, key, origin)


def _check_model_keys(section: dict[str, Any], model: Any, prefix: str, origin: str) -> None:
    fields = model.model_fields
    by_name = {name: f for name, f in fields.items()}
    by_name.update({f.alias: f for f in fields.values() if f.alias})
    for key, value in section.items():
        dotted = f"{prefix}.{key}"
        if key not in by_name:
            _unknown(origin, dotted, key, set(by_name))
        sub = _pydantic_model(by_name[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_model_keys(value, sub, dotted, origin)


def _check_plain_keys(section: dict[str, Any], allowed: set[str], prefix: str, origin: str) -> None:
    for key in section:
        if key not in allowed:
            _unknown(origin, f"{prefix}.{key}", key, allowed)


def _pydantic_model(annotation: Any) -> Any:
    """The pydantic model class inside `annotation` (also `Optional[Model]`), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    for tp in candidates:
        if isinstance(tp, type) and hasattr(tp, "model_fields"):
            return tp
    return None


def _unknown(origin: str, dotted: str, key: str, known: set[str]) -> None:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{origin}: unknown key {dotted}{hint}; DeepSpeed would silently ignore it")


def _known_top_level_keys() -> set[str]:
    keys = set(_MODEL_SECTIONS) | _LITERAL_KEYS
    for name in _CONSTANT_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        keys.update(v for k, v in vars(module).items() if k.isupper() and isinstance(v, str))
    return keys


def _import(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _precision_of(ds: dict[str, Any]) -> str | None:
    """bf16 / fp16 / fp32 if the JSON has a precision section, None if it leaves it to us."""
    precision_keys = ("bf16", "bfloat16", "fp16")
    if not any(key in ds for key in precision_keys):
        return None
    return next(
        (
            key[:2] + "16"
            for key in precision_keys
            if isinstance(ds.get(key), dict) and ds[key].get("enabled")
        ),
        "fp32",
    )


def json_precision(path: str) -> str | None:
    """The precision a DeepSpeed JSON file enables, or None if it has no precision section."""
    return _precision_of(_read_json(path))


def _check_agreement(ds: dict[str, Any], ours: dict[str, Any], cfg: Config, origin: str) -> None:
    """Batch sizes, precision and clipping in the JSON must be what train/optim say: the trainer
    slices data and logs tokens by train.*, so a disagreeing JSON would silently train otherwise."""
    for key, ours_key in (
        ("train_batch_size", "train.global_batch_size"),
        ("train_micro_batch_size_per_gpu", "train.micro_batch_size"),
        ("gradient_accumulation_steps", "train.global_batch_size / (micro x dp)"),
        ("gradient_clipping", "optim.grad_clip"),
    ):
        if key in ds and ds[key] != ours[key]:
            raise ConfigError(
                f"{origin}: {key}={ds[key]} disagrees with {ours_key} "
                f"(= {ours[key]}); remove {key} from the JSON or make them equal"
            )
    precision = _precision_of(ds)
    if precision and cfg.train.precision not in ("auto", precision):  # auto follows the JSON
        raise ConfigError(
            f"{origin}: the JSON enables {precision} but train.precision="
            f"{cfg.train.precision}; set train.precision={precision} (or auto) or change "
            "the JSON"
        )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage != cfg.engine.zero_stage:
        raise ConfigError(
            f"{origin}: zero_optimization.stage={stage} disagrees with engine.zero_stage="
            f"{cfg.engine.zero_stage}; set engine.zero_stage={stage} or change the JSON"
        )
    for section, key in (
        ("offload_optimizer", "engine.offload_optimizer"),
        ("offload_param", "engine.offload_params"),
    ):
        ours_device = getattr(cfg.engine, key.split(".")[1])
        if ours_device != "none" and offload_device(ds, section) != ours_device:
            raise ConfigError(
                f"{origin}: zero_optimization.{section}.device="
                f"{offload_device(ds, section)} disagrees with {key}={ours_device}; "
                f"leave {key} unset when the JSON configures offload"
            )
    if "scheduler" in ds:
        raise ConfigError(
            f"{origin}: remove the scheduler section: the LR schedule is optim.schedule "
            "(the trainer sets the LR every step)"
        )
    _check_optimizer(ds.get("optimizer"), cfg, origin)


def _check_optimizer(section: dict[str, Any] | None, cfg: Config, origin: str) -> None:
    if section is None:
        return
    kind = str(section.get("type", "")).lower()
    params = section.get("params", {})
    if kind not in _ADAMW_TYPES or (kind == "adam" and not params.get("adam_w_mode", True)):
        raise ConfigError(
            f"{origin}: optimizer.type={section.get('type')!r}: only AdamW is supported "
            "(the engine builds it from optim.*); remove the optimizer section"
        )
    o = cfg.optim
    expected = {"betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay}
    for key, value in expected.items():
        given = params.get(key, value)
        if (list(given) if key == "betas" else given) != value:
            raise ConfigError(
                f"{origin}: optimizer.params.{key}={given} disagrees with optim.* "
                f"(= {value}); remove it from the JSON or make them equal"
            )
