"""Named phases of a training step: marked for the profiler while one is recording, and always
noted as the phase this process is in now.

`dist-llm bench train` profiles a window of steps (`logging.profile_steps`), the straggler check a
few steps every `train.straggler_interval`; both split each step into these phases
(`metrics.breakdown`). Profiler markers are gated on the profiler being on: a bare
`record_function` costs about 20 us even with no profiler (measured on CPU), the gate 0.1 us.
The note for the hang watchdog (`NOW`: which phase, and how many phases were left so far) is two
attribute writes per phase, read from the watchdog's thread without a lock or a device sync.
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
EVAL = "dist_llm/eval"
"""One validation or task-scoring batch (outside steps; for the hang watchdog, not the step
breakdown)."""
CHECKPOINT = "dist_llm/checkpoint"
"""The part of a checkpoint save the loop waits for."""


class _Now:
    """What this process's training loop is doing, as the hang watchdog reads it."""

    phase = ""
    """The innermost phase running now; empty between phases (callbacks, logging)."""
    exits = 0
    """Phases left so far: it moves as long as the loop makes progress."""


NOW = _Now()


class _Noted:
    """Notes the phase in NOW. A slotted class, not a generator: ~1 us a phase (BENCHMARKS.md)."""

    __slots__ = ("name", "outer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.outer = ""

    def __enter__(self) -> None:
        self.outer, NOW.phase = NOW.phase, self.name

    def __exit__(self, *exc: object) -> None:
        NOW.phase = self.outer
        NOW.exits += 1


def phase(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Note `name` as the current phase, and mark it for a running profiler."""
    # torch.autograd._profiler_enabled is what torch's own profiling hooks test; public in torch.autograd.
    return _marked(name, device) if torch.autograd._profiler_enabled() else _Noted(name)


def short(name: str) -> str:
    """A phase's last component ("dist_llm/forward" -> "forward")."""
    return name.rsplit("/", 1)[-1]


@contextlib.contextmanager
def _marked(name: str, device: torch.device) -> Iterator[None]:
    # CUDA kernels run after the host has moved on: synchronize at both ends (profiled steps only)
    # so the marker spans the phase's device work rather than its launches.
    sync = device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    with _Noted(name), record_function(name):
        yield
        if sync:
            torch.cuda.synchronize(device)
