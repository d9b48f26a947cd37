"""torch objects <-> bytes, so checkpoint files can go to any storage URI without a local path."""

from __future__ import annotations

import io
from typing import Any

import torch


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, device: torch.device | str = "cpu") -> Any:
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
