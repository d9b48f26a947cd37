"""The peak FLOP/s that MFU is stated against.

Known accelerators use their datasheet dense bf16 peak; elsewhere (CPUs) the peak is measured with a
large matmul in the run's compute dtype, so MFU means "share of what this device's matmul unit
reached here", and the figure is printed next to every MFU. `dist-llm bench train` measures
both the bf16 and the fp32 peak in the benchmarked run and states MFU against the run's precision.
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


def measured_peak_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Best TFLOP/s of repeated square matmuls within about `seconds` (at least one timed).

    The size doubles from 256 while one matmul takes under a tenth of the budget (up to 8192), so
    the matmul is large for the device: 1024 for fp32 on a CPU core, 256 for bf16 where a CPU
    emulates it (~50x slower), 8192 on a GPU.
    """
    size, elapsed = 128, 0.0
    while elapsed < seconds / 10 and size < 8192:
        size *= 2
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        elapsed = _time_mm(a, b)  # the first call at a size also pays for kernel selection
    best = 2 * size**3 / elapsed / 1e12
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 2 * size**3 / _time_mm(a, b) / 1e12)
    return best


def _time_mm(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    torch.mm(a, b)
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start


PEAK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def measured_peaks(device: torch.device, precision: str) -> dict[str, float]:
    """Measured TFLOP/s of bf16 and fp32 matmuls (and fp16 for an fp16 run) on this rank's device
    and threads: what `dist-llm bench` states MFU against, for the run's precision."""
    names = {"bf16", "fp32", precision}
    return {name: measured_peak_tflops(device, PEAK_DTYPES[name]) for name in sorted(names)}


def peak_tflops(device: torch.device, precision: str, configured: float | None) -> tuple[float, str]:
    """(peak, where it came from) for the MFU denominator."""
    if configured:
        return configured, "configured"
    sheet = datasheet_peak_tflops(device)
    if sheet:
        return sheet, f"{torch.cuda.get_device_name(device)} bf16 dense datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measured_peak_tflops(device, dtype), f"measured {dtype} matmul on {device.type}"
