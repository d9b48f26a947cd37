"""Moving batches to the device and the autocast context, shared by the engines."""

from __future__ import annotations

import contextlib

import torch

from dist_llm.engine.base import Batch

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()
