"""The autocast dtype a run computes in. `train.precision=auto` (the default) picks bf16 where the
hardware multiplies bf16 natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX) and fp32
elsewhere: without those instructions PyTorch's CPU bf16 matmul is a fallback path, measured 40-100x
slower than fp32 on an AVX2-only EPYC (about 0.6-0.8 GFLOP/s per core against 34-80 for fp32,
depending on the matmul size)."""

from __future__ import annotations

import torch

from dist_llm.config import Config
from dist_llm.log import get_logger

log = get_logger("precision")


def native_bf16(device: torch.device) -> bool:
    """Whether matmuls in bf16 run on native bf16 instructions on this device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def choose_precision(requested: str, native: bool, json_precision: str | None) -> str:
    """`requested` made concrete: auto follows a DeepSpeed JSON that names a precision, else the
    hardware (bf16 if native, fp32 if not); anything else stays as asked."""
    if requested != "auto":
        return requested
    return json_precision or ("bf16" if native else "fp32")


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """The precision this rank trains in; says why, and warns when bf16 was asked for on a device
    that would run it slower than fp32."""
    json_precision = None
    if cfg.engine.type == "deepspeed" and cfg.engine.deepspeed_config:
        from dist_llm.engine.deepspeed_config import json_precision as read_json_precision

        json_precision = read_json_precision(cfg.engine.deepspeed_config)
    native = native_bf16(device)
    chosen = choose_precision(cfg.train.precision, native, json_precision)
    if cfg.train.precision == "auto":
        why = (
            "as the DeepSpeed JSON says"
            if json_precision
            else f"{device.type} {'has' if native else 'lacks'} native bf16"
        )
        log.info("train.precision=auto: %s (%s)", chosen, why)
    elif chosen == "bf16" and not native:
        log.warning(
            "train.precision=bf16 on a %s without native bf16 (no AVX512-BF16/AMX): bf16 matmuls "
            "run many times slower than fp32 here; use train.precision=auto or fp32",
            device.type,
        )
    return chosen
