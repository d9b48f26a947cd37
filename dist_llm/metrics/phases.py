"""Named phases of a training step, marked for the profiler only while one is recording.

`dist-llm bench train` profiles a window of steps (`logging.profile_steps`) and splits each step
into these phases (`metrics.breakdown`). Markers are gated on the profiler being on: a bare
`record_function` costs about 20 us even with no profiler (measured on CPU), the gate 0.1 us, so
a normal run pays nothing measurable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.profiler import record_function

STEP = "dist_llm/step"
DATA = "dist_llm/data"
FORWARD = "dist_llm/forward"
BACKWARD = "dist_llm/backward"
FORWARD_BACKWARD = "dist_llm/forward_backward"
"""Pipeline schedules interleave micro-batch forwards and backwards: one phase for both."""
OPTIMIZER = "dist_llm/optimizer"
"""From final gradients to updated weights: clipping, the optimizer step, zeroing gradients."""
PHASES = (DATA, FORWARD, BACKWARD, FORWARD_BACKWARD, OPTIMIZER)
"""The disjoint parts of a STEP; what they leave out is communication outside them, or other."""

_OFF = contextlib.nullcontext()


def phase(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mark `name` for a running profiler; a no-op otherwise."""
    # torch.autograd._profiler_enabled is what torch's own profiling hooks test; public in torch.autograd.
    return _marked(name, device) if torch.autograd._profiler_enabled() else _OFF


@contextlib.contextmanager
def _marked(name: str, device: torch.device) -> Iterator[None]:
    # CUDA kernels run after the host has moved on: synchronize at both ends (profiled steps only)
    # so the marker spans the phase's device work rather than its launches.
    sync = device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    with record_function(name):
        yield
        if sync:
            torch.cuda.synchronize(device)
