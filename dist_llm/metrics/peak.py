"""The peak FLOP/s that MFU is stated against.

Known accelerators use their datasheet dense bf16 peak; elsewhere (CPUs) the peak is measured with a
large matmul in the run's compute dtype, so MFU means "share of what this device's matmul unit
reached here", and the figure is printed next to every MFU.
"""

from __future__ import annotations

import time

import torch

# Dense (non-sparse) bf16 tensor-core peaks from vendor datasheets, TFLOP/s.
_DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0}


def datasheet_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _DATASHEET_TFLOPS.items() if k in name), None)


def measured_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 1024,
                         seconds: float = 0.3) -> float:
    """Best TFLOP/s of repeated size^3 matmuls within about `seconds`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    torch.mm(a, b)  # warm-up: first call pays for kernel selection
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e12)
    return best


def peak_tflops(device: torch.device, precision: str, configured: float | None) -> tuple[float, str]:
    """(peak, where it came from) for the MFU denominator."""
    if configured:
        return configured, "configured"
    sheet = datasheet_peak_tflops(device)
    if sheet:
        return sheet, f"{torch.cuda.get_device_name(device)} bf16 dense datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measured_peak_tflops(device, dtype), f"measured {dtype} matmul on {device.type}"
