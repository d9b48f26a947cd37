"""Step-time breakdown from profiler intervals: data, forward, backward, optimizer, communication.

Communication is the union of the collectives' intervals (gloo records each one from enqueue to
completion, on its worker threads; on CUDA the NCCL kernels). Much of it runs inside another phase
(DDP all-reduces gradient buckets while backward goes on and ends backward waiting for the last
one), so it is split by the phase it ran inside; only the part outside every phase ("exposed")
adds to the step. Per step: step = data + forward + backward + optimizer + exposed comm + other.
"""

from __future__ import annotations

from dataclasses import dataclass

from dist_llm.metrics.phases import PHASES, STEP, short

Interval = tuple[float, float]


@dataclass(frozen=True)
class Span:
    name: str
    start: float
    end: float


def is_communication(name: str, on_device: bool) -> bool:
    """A collective's interval: gloo's host-side work, or an NCCL kernel on the device (its host
    events are launches only and are left out)."""
    return name.startswith("nccl") if on_device else name.startswith("gloo:")


def _union(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: list[Interval], b: list[Interval]) -> float:
    """Length of the intersection of two unions (each sorted and disjoint)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def step_breakdowns(markers: list[Span], comm: list[Span]) -> list[dict[str, float]]:
    """Per profiled step (one STEP marker each), milliseconds of: `step`, each phase present, `comm`
    (all collectives), `comm_ops` (the collectives' durations summed, overlaps counted each time:
    `rank_timing` compares it across ranks), `comm_in_<phase>`, `comm_exposed`, `other`, from spans
    in nanoseconds."""
    steps = sorted((m for m in markers if m.name == STEP), key=lambda m: m.start)
    out = []
    for s in steps:
        inside = [m for m in markers if m.name in PHASES and s.start <= m.start < s.end]
        clipped = [
            (max(c.start, s.start), min(c.end, s.end)) for c in comm if c.end > s.start and c.start < s.end
        ]
        comm_union = _union(clipped)
        row = {
            "step": (s.end - s.start) / 1e6,
            "comm": _length(comm_union) / 1e6,
            "comm_ops": _length(clipped) / 1e6,
        }
        in_phases, comm_inside = 0.0, 0.0
        for name in PHASES:
            spans = _union([(m.start, m.end) for m in inside if m.name == name])
            if spans:
                row[short(name)] = _length(spans) / 1e6
                row[f"comm_in_{short(name)}"] = _overlap(comm_union, spans) / 1e6
                in_phases += row[short(name)]
                comm_inside += row[f"comm_in_{short(name)}"]
        row["comm_exposed"] = max(row["comm"] - comm_inside, 0.0)  # max: float rounding only
        row["other"] = row["step"] - in_phases - row["comm_exposed"]
        out.append(row)
    return out


def mean_breakdown(steps: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each quantity over the steps (ms per step). Means, not medians, so the parts still
    add up to the step: data + phases + exposed comm + other = step."""
    keys = dict.fromkeys(k for s in steps for k in s)
    return {k: sum(s.get(k, 0.0) for s in steps) / len(steps) for k in keys}
