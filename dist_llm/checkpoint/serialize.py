"""torch objects <-> bytes, so checkpoint files can go to any storage URI without a local path."""

from __future__ import annotations

import io
from typing import Any

import torch


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def snapshot(obj: Any) -> Any:
    """A copy of every tensor in a (nested) state dict, on CPU: later training steps cannot change
    it, so serializing it can happen in the background. A memcpy, far cheaper than pickling."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def from_bytes(data: bytes, device: torch.device | str = "cpu") -> Any:
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
