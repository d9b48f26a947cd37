"""Per-rank step and phase times, gathered from all ranks, and the stragglers among them.

In synchronous training every rank's step takes as long as the slowest rank's: the others wait for
it inside the collectives. So the step time does not tell ranks apart, and neither do the phases
that hold collectives (FSDP gathers in forward, reduces in backward; the norm in the optimizer).
What does is how long each rank waits in them. A collective lasts, on each rank, from the moment
that rank starts it until the last rank's part arrives: the rank that arrives last has the
shortest, the others' are longer by the time they waited. So each rank's `comm` (its collectives'
durations, summed) less the smallest `comm` of any rank is its `wait`, and `busy` = step - wait is
the time its own work took. A rank whose busy time exceeds the median over ranks by more than the
threshold is a straggler. Subtracting the smallest sum, rather than using a rank's own collective
time, matters when a whole process stalls (preempted, stopped, starved of CPU) while one of its
collectives is in flight: every rank's copy of that collective lasts the stall, so it cancels out
and the stall counts as the stalled rank's own time.

Each rank sends `FIELDS` (ms per step, means over the sampled steps); the record built from them
has flat numeric keys, so every sink (JSONL, W&B, TensorBoard) takes it as it is.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from dist_llm.metrics.breakdown import mean_breakdown

FIELDS = ("step", "data", "forward", "backward", "forward_backward", "optimizer", "comm_ops")
"""What each rank sends, in this order; NaN for a phase this layout does not have."""
RECORD_MARKER = "ranks_busy_ms"
"""The key that identifies a rank-timing record among the metric records."""
_STEP, _COMM = FIELDS.index("step"), FIELDS.index("comm_ops")


def rank_row(steps: list[dict[str, float]]) -> list[float]:
    """This rank's row: the mean of each field over its sampled steps (all NaN if none)."""
    mean = mean_breakdown(steps) if steps else {}
    return [mean.get(f, math.nan) for f in FIELDS]


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Straggler:
    rank: int
    host: str
    excess: float
    """busy / median busy - 1."""


class RankTimes:
    """One gather: `table[r]` is rank r's row of FIELDS, `hosts[r]` its host. A rank whose own
    profiler was running sent NaN and is left out."""

    def __init__(self, table: list[list[float]], hosts: list[str], threshold: float) -> None:
        self.table, self.hosts, self.threshold = table, hosts, threshold
        self.ranks = [r for r, row in enumerate(table) if math.isfinite(row[_STEP] - row[_COMM])]
        least = min((table[r][_COMM] for r in self.ranks), default=0.0)
        self.wait = {r: table[r][_COMM] - least for r in self.ranks}
        """Time per step each rank spent waiting for the others in collectives."""
        self.busy = {r: table[r][_STEP] - self.wait[r] for r in self.ranks}
        self.median_busy = _median(list(self.busy.values()))

    def median_row(self) -> list[float]:
        return [_median([row[i] for row in self.table]) for i in range(len(FIELDS))]

    def stragglers(self) -> list[Straggler]:
        """Ranks busy longer than the median by more than the threshold, the slowest first."""
        median = self.median_busy
        if not median > 0:
            return []
        slow = [
            Straggler(r, self.hosts[r], b / median - 1)
            for r, b in self.busy.items()
            if b > median * (1 + self.threshold)
        ]
        return sorted(slow, key=lambda s: -s.excess)

    def record(self, step: int, sampled: int) -> dict[str, Any]:
        """The metric record: medians, the slowest rank, the stragglers, and each rank's busy,
        communication and phase times (`rank<r>_<field>_ms`)."""
        stragglers = self.stragglers()
        record: dict[str, Any] = {
            "step": step,
            "ranks_sampled_steps": sampled,
            "straggler_threshold": self.threshold,
            "straggler_count": len(stragglers),
            "stragglers": ", ".join(
                f"rank {s.rank} on {s.host} (+{100 * s.excess:.0f}%)" for s in stragglers
            ),
        }
        median = self.median_busy
        if not median > 0:
            return record
        slowest = max(self.busy, key=self.busy.__getitem__)
        record.update(
            {
                "ranks_step_ms": self.median_row()[_STEP],
                RECORD_MARKER: median,
                "ranks_slowest": slowest,
                "ranks_slowest_excess": self.busy[slowest] / median - 1,
            }
        )
        for r in self.ranks:
            record[f"rank{r}_busy_ms"] = self.busy[r]
            record[f"rank{r}_wait_ms"] = self.wait[r]
            for name, value in zip(FIELDS, self.table[r]):
                if name != "step" and math.isfinite(value):
                    record[f"rank{r}_{name.removesuffix('_ops')}_ms"] = value
        return record

    def describe(self, s: Straggler) -> str:
        """One straggler for the log: its excess and where its time went, beside the median's."""
        median = self.median_row()
        parts = [
            f"{name.removesuffix('_ops')} {value:.1f}/{med:.1f}"
            for name, value, med in zip(FIELDS, self.table[s.rank], median)
            if math.isfinite(value)
        ]
        busy = f"busy {self.busy[s.rank]:.1f}/{self.median_busy:.1f}"
        return (
            f"rank {s.rank} on {s.host}: +{100 * s.excess:.0f}% ({busy}, {', '.join(parts)} ms, rank/median)"
        )
