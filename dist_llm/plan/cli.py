"""`dist-llm plan CONFIG [key=value ...] --nodes N --gpus-per-node G --gpu KIND`: the candidate
layouts of a run, what each rank would hold and how fast each would train, before any is paid for."""

from __future__ import annotations

import argparse
import json

from dist_llm.plan.hardware import KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="candidate layouts (FSDP/HSDP/TP/PP, micro-batch, activation checkpointing, offload) with "
        "per-GPU memory by component and estimated step time, tokens/s and MFU (assumptions printed)",
    )
    p.add_argument("config", help="training config, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.vocab_size=32000")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="ranks per node")
    p.add_argument("--gpu", choices=KINDS, default="h100", help="device kind; cpu = this machine")
    p.add_argument("--max-pp", type=int, default=8, help="deepest pipeline to consider")
    p.add_argument(
        "--efficiency",
        type=float,
        help="share of the peak FLOPs compute reaches (default per device kind, printed); give one "
        "device's measured MFU from `dist-llm bench train` at the micro-batch you will use",
    )
    p.add_argument("--inter-gbps", type=float, help="GB/s per device between nodes (default per device kind)")
    p.add_argument("--top", type=int, default=10, help="fitting layouts to list")
    p.add_argument("--json", help="also write every layout's estimate to this JSON file")


def run(args: argparse.Namespace) -> int:
    from dist_llm.plan.fit import load_for_planning
    from dist_llm.plan.planner import plan
    from dist_llm.plan.report import format_plan, plan_json

    cfg = load_for_planning(args.config, args.overrides)
    result = plan(
        cfg, args.nodes, args.gpus_per_node, args.gpu, args.max_pp, args.efficiency, args.inter_gbps
    )
    print(format_plan(result, top=args.top))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(plan_json(result), f, indent=1)
    return 0
