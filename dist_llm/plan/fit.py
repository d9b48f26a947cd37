"""The fit check `dist-llm train` and `dist-llm launch` run before spawning a rank: the planner's
estimate of the configured layout on this node's devices (a CUDA GPU's memory, else host memory
split over the node's ranks), refused with the numbers when it exceeds them. `launch.check_fit=false`
turns it off."""

from __future__ import annotations

from dataclasses import replace

from dist_llm.config import Config, load_config
from dist_llm.errors import ConfigError, DataError
from dist_llm.plan.hardware import GB, GPUS, Hardware, hardware
from dist_llm.plan.planner import Estimate, check_layout


def load_for_planning(config: str, overrides: list[str]) -> Config:
    """The config with its vocabulary known: model.vocab_size, or the prepared dataset's tokenizer."""
    cfg = load_config(config, overrides)
    cfg.model.validate(require_vocab=False)
    fill_vocab(cfg)
    return cfg


def fill_vocab(cfg: Config) -> None:
    if cfg.model.vocab_size:
        return
    from data_prep.manifest import read_header

    path = cfg.data.source_list()[0].path
    try:
        cfg.model.vocab_size = read_header(path)["tokenizer"]["vocab_size"]
    except (DataError, OSError) as e:  # no dataset yet: the vocabulary must be given
        raise ConfigError(
            f"model.vocab_size=0 takes the dataset's vocabulary, but {path} cannot be read ({e}); "
            "give model.vocab_size=N to plan without the dataset"
        ) from None


def local_hardware(ranks_per_node: int, peak_tflops: float | None) -> Hardware:
    """This node's devices: its CUDA GPU (memory as the driver reports it), else its host."""
    import torch

    if not torch.cuda.is_available():
        return hardware("cpu", ranks_per_node, peak_tflops, timing=False)  # memory only
    props = torch.cuda.get_device_properties(0)
    spec = next((GPUS[k] for k in GPUS if k in props.name.lower()), GPUS["h100"])
    return replace(spec, name=props.name, memory_bytes=float(props.total_memory))


def check_fit(cfg: Config, world: int, ranks_per_node: int) -> Estimate | None:
    """Raise ConfigError naming predicted and available bytes per component if the configured
    layout does not fit this node's devices; None when launch.check_fit is off."""
    if not cfg.launch.check_fit:
        return None
    fill_vocab(cfg)
    hw = local_hardware(ranks_per_node, cfg.logging.peak_tflops)
    est = check_layout(cfg, world, ranks_per_node, hw)
    if est.fits:
        return est
    mem = est.memory
    parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in mem.components().items())
    raise ConfigError(
        f"the configured layout ({est.layout.label()}, micro-batch {est.layout.micro_batch}) does "
        f"not fit: rank {mem.rank} needs {mem.device_total / GB:.2f} GB ({parts}) but {hw.name} "
        f"has {hw.memory_bytes / GB:.2f} GB per rank; `dist-llm plan` lists layouts that fit "
        "(more ranks, FSDP, TP/PP, activation checkpointing, offload); set launch.check_fit=false "
        "to launch anyway"
    )
