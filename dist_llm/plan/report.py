"""The plan as text: a table of layouts (fitting ones by tokens/s, then the closest misses with
what does not fit) and the assumptions behind every figure."""

from __future__ import annotations

from dataclasses import asdict

from dist_llm.plan.hardware import GB
from dist_llm.plan.planner import Estimate, Plan

HEADER = (
    "# | layout | micro-batch | AC | offload | params | grads | optimizer | activations | buffers | "
    "runtime | total GB/rank | step s | tokens/s | MFU | fits"
)


def _row(i: int, est: Estimate) -> str:
    lay, mem, t = est.layout, est.memory, est.time
    cells = [f"{v / GB:.2f}" for v in mem.components().values()]
    fits = "yes" if est.fits else f"no: {est.why_not()}"
    return (
        f"{i} | {lay.label()} | {lay.micro_batch} | {'on' if lay.activation_checkpointing else 'off'} | "
        f"{'cpu' if lay.cpu_offload else '-'} | {' | '.join(cells)} | {mem.device_total / GB:.2f} | "
        f"{t.step_s:.3g} | {t.tokens_per_s:,.0f} | {100 * t.mfu:.1f}% | {fits}"
    )


def assumptions(plan: Plan) -> list[str]:
    hw = plan.hardware
    return [
        f"{plan.world} ranks ({plan.ranks_per_node} per node), compute dtype {plan.precision}; "
        f"training state built on meta tensors by the engine's own sharding code under a fake "
        f"process group ({plan.share_seconds:.1f} s); memory is the most loaded rank's",
        "activations, buffers and step time by formula: `dist_llm.plan.memory` and "
        "`dist_llm.plan.step_time` state them",
        "hardware: " + ", ".join(f"{k} {v}" for k, v in hw.assumptions().items()),
    ]


def format_plan(plan: Plan, top: int = 10, misses: int = 3) -> str:
    fitting = [e for e in plan.estimates if e.fits]
    missing = [e for e in plan.estimates if not e.fits]
    lines = [
        f"{len(fitting)} of {len(plan.estimates)} layouts fit; the {min(top, len(fitting))} fastest, "
        f"then the {min(misses, len(missing))} smallest that do not fit (GB per rank):",
        HEADER,
        "---|" * 15 + "---",
    ]
    lines += [_row(i + 1, e) for i, e in enumerate(fitting[:top])]
    lines += [_row(len(fitting) + i + 1, e) for i, e in enumerate(missing[:misses])]
    if fitting:
        lines.append(f"best: {' '.join(fitting[0].layout.overrides())}")
    lines += ["assumptions:", *(f"- {a}" for a in assumptions(plan))]
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict:
    return {
        "world": plan.world,
        "ranks_per_node": plan.ranks_per_node,
        "precision": plan.precision,
        "hardware": plan.hardware.assumptions(),
        "assumptions": assumptions(plan),
        "layouts": [
            {
                "layout": asdict(e.layout),
                "overrides": e.layout.overrides(),
                "memory_bytes": {**e.memory.components(), "total": e.memory.device_total},
                "rank": e.memory.rank,
                "offloaded_bytes": e.memory.offloaded,
                "time": asdict(e.time),
                "fits": e.fits,
                "available_bytes": e.available_bytes,
            }
            for e in plan.estimates
        ],
    }
