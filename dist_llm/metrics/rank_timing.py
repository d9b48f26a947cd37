"""Per-rank step and phase times, gathered from all ranks, and the stragglers among them.

In synchronous training every rank's step takes as long as the slowest rank's: the others wait for
it inside the collectives. So the step time does not tell ranks apart, and neither do the phases
that hold collectives (FSDP gathers in forward, reduces in backward; the norm in the optimizer).
What does is how long each rank waits in them. A collective lasts, on each rank, from the moment
that rank starts it until the last rank's part arrives: the rank that arrives last has the
shortest, the others' are longer by the time they waited. Ranks are compared within their pipeline
stage (stages differ in work by design; with one rank per stage there is nothing to compare): each
rank's `comm` (its collectives' durations, summed) less the smallest `comm` in its stage is its
`wait`, and `busy` = step - wait is the time its own work took. A rank whose busy time exceeds its
stage's median by more than the threshold is a straggler. Subtracting the smallest sum, rather than using a
rank's own collective time, matters when a whole process stalls (preempted, stopped, starved of
CPU) while one of its collectives is in flight: every rank's copy of that collective lasts the
stall, so it cancels out and the stall counts as the stalled rank's own time.

Each rank sends `FIELDS` (ms per step, means over the sampled steps) and its pipeline stage; the
record built from them has flat numeric keys, so every sink (JSONL, W&B, TensorBoard) takes it as
it is.
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
_STEP, _COMM, _STAGE = FIELDS.index("step"), FIELDS.index("comm_ops"), len(FIELDS)


def rank_row(steps: list[dict[str, float]], stage: int) -> list[float]:
    """This rank's row: the mean of each field over its sampled steps (NaN if none), then its
    pipeline stage."""
    mean = mean_breakdown(steps) if steps else {}
    return [*(mean.get(f, math.nan) for f in FIELDS), float(stage)]


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Straggler:
    rank: int
    host: str
    excess: float
    """busy / the median busy of its stage - 1."""


class RankTimes:
    """One gather: `table[r]` is rank r's row (`rank_row`), `hosts[r]` its host. A rank whose own
    profiler was running sent NaN and is left out."""

    def __init__(self, table: list[list[float]], hosts: list[str], threshold: float) -> None:
        self.table, self.hosts, self.threshold = table, hosts, threshold
        self.ranks = [r for r, row in enumerate(table) if math.isfinite(row[_STEP] - row[_COMM])]
        self.stages: dict[float, list[int]] = {}
        for r in self.ranks:
            self.stages.setdefault(table[r][_STAGE], []).append(r)
        self.wait: dict[int, float] = {}
        """Time per step each rank spent waiting for the others in collectives."""
        self.busy: dict[int, float] = {}
        self.excess: dict[int, float] = {}
        """busy / the median busy of the rank's stage - 1."""
        for members in self.stages.values():
            least = min(table[r][_COMM] for r in members)
            for r in members:
                self.wait[r] = table[r][_COMM] - least
                self.busy[r] = table[r][_STEP] - self.wait[r]
            median = _median([self.busy[r] for r in members])
            for r in members:
                self.excess[r] = self.busy[r] / median - 1 if median > 0 else 0.0
        self.median_busy = _median(list(self.busy.values()))

    def median_row(self, rank: int) -> list[float]:
        """Per field, the median over the ranks of `rank`'s stage."""
        members = self.stages[self.table[rank][_STAGE]]
        return [_median([self.table[r][i] for r in members]) for i in range(len(FIELDS))]

    def stragglers(self) -> list[Straggler]:
        """Ranks busy longer than their stage's median by more than the threshold, slowest first."""
        slow = [Straggler(r, self.hosts[r], e) for r, e in self.excess.items() if e > self.threshold]
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
        if not self.ranks:
            return record
        slowest = max(self.excess, key=self.excess.__getitem__)
        record.update(
            {
                "ranks_step_ms": _median([self.table[r][_STEP] for r in self.ranks]),
                RECORD_MARKER: self.median_busy,
                "ranks_slowest": slowest,
                "ranks_slowest_excess": self.excess[slowest],
            }
        )
        for r in self.ranks:
            record[f"rank{r}_busy_ms"] = self.busy[r]
            record[f"rank{r}_wait_ms"] = self.wait[r]
            record[f"rank{r}_excess"] = self.excess[r]
            for name, value in zip(FIELDS, self.table[r]):
                if name != "step" and math.isfinite(value):
                    record[f"rank{r}_{name.removesuffix('_ops')}_ms"] = value
        return record

    def describe(self, s: Straggler) -> str:
        """One straggler for the log: its excess and where its time went, beside the median's."""
        median = self.median_row(s.rank)
        median_busy = self.busy[s.rank] / (1 + s.excess)
        parts = [
            f"{name.removesuffix('_ops')} {value:.1f}/{med:.1f}"
            for name, value, med in zip(FIELDS, self.table[s.rank], median)
            if math.isfinite(value)
        ]
        busy = f"busy {self.busy[s.rank]:.1f}/{median_busy:.1f}"
        return (
            f"rank {s.rank} on {s.host}: +{100 * s.excess:.0f}% ({busy}, {', '.join(parts)} ms, rank/median)"
        )
