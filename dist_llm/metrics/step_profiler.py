"""Profiler events -> per-step breakdowns (`breakdown.step_breakdowns`), and a light profiler that
records only what a breakdown needs.

`dist-llm bench` profiles everything (`torch.profiler.profile`, every operator). The straggler check
profiles a few steps every `train.straggler_interval` while training goes on, so it records only
the user-scope events: phase markers (ours and FSDP's) and the collectives (gloo records each one
as a user-scope event), plus, on CUDA, the device kernels (NCCL's among them). Measured on the test
model (CPU, one rank): the full profiler adds ~35 ms to a 38 ms step, this one ~2 ms to a 110 ms
step, and starting plus stopping it ~1 ms (BENCHMARKS.md has the 2-rank figures).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd import (
    DeviceType,
    ProfilerConfig,
    ProfilerState,
    _disable_profiler,
    _enable_profiler,
    _prepare_profiler,
)
from torch.profiler import ProfilerActivity

from dist_llm.metrics.breakdown import Span, is_communication, step_breakdowns
from dist_llm.metrics.phases import PHASES, STEP


def steps_from_events(events: Any) -> list[dict[str, float]]:
    """Per-step breakdowns (ms) from a profiler's raw Kineto events (`kineto_results.events()`).

    Raw events, not `profile.events()`: that builds a tree of Python objects (~60 us an event,
    seconds for a few steps of a small model) that the breakdown does not need. On CUDA a marker
    also appears as a device-side annotation: the host one is the phase."""
    markers, comm = [], []
    for e in events:
        name, on_device = e.name(), e.device_type() != DeviceType.CPU
        if (name == STEP or name in PHASES) and not on_device:
            markers.append(Span(name, e.start_ns(), e.end_ns()))
        elif is_communication(name, on_device):
            comm.append(Span(name, e.start_ns(), e.end_ns()))
    return step_breakdowns(markers, comm)


class LightProfiler:
    """Kineto with only user-scope host events (phase markers, collectives) and device kernels.

    torch.profiler.profile has no way to choose record scopes; torch.autograd's own entry points
    (what it calls underneath) do."""

    def __init__(self, device: torch.device) -> None:
        self.activities = {ProfilerActivity.CPU}
        if device.type == "cuda":
            self.activities.add(ProfilerActivity.CUDA)
        # Positional: report_input_shapes, profile_memory, with_stack, with_flops, with_modules.
        self.config = ProfilerConfig(
            ProfilerState.KINETO, False, False, False, False, False, torch._C._profiler._ExperimentalConfig()
        )
        self.running = False

    def start(self) -> None:
        _prepare_profiler(self.config, self.activities)
        _enable_profiler(self.config, self.activities, {torch._C._profiler.RecordScope.USER_SCOPE})
        self.running = True

    def stop(self) -> list[dict[str, float]]:
        """The breakdown of every step that ran since `start`."""
        self.running = False
        return steps_from_events(_disable_profiler().events())
