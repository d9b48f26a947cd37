"""`dist-llm env`: report this host, or under torchrun every rank with rank 0 comparing them.

Exit status 1 when any check FAILs, so a launch script can gate on it:
    dist-llm env --master-addr node0 --master-port 29500 --nnodes 4 || exit 1
    torchrun --nnodes 4 --nproc-per-node 8 ... -m dist_llm.cli env   # every rank, compared
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from dist_llm.launch.torchrun import in_torchrun

if TYPE_CHECKING:
    from dist_llm.envinfo.checks import Check

# The rest of dist_llm.envinfo is imported inside the functions: every `dist-llm` command builds
# this parser, and should not pay for the torch import the facts need.


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env",
        help="versions, devices, interconnect and checks for multi-node failures "
        "(under torchrun: every rank, compared); exit 1 on any FAIL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print facts and checks as one JSON document")
    p.add_argument("--master-addr", help="the job's master (rendezvous) host to check; default $MASTER_ADDR")
    p.add_argument("--master-port", help="its port (default: $MASTER_PORT, else torchrun's 29500)")
    p.add_argument("--nnodes", type=int, help="nodes the job will span; default: torchrun's or SLURM's count")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="under torchrun: seconds to wait for every rank to join and report",
    )


def _emit(args: argparse.Namespace, facts: dict, checks: list[Check], ranks: list[dict] | None) -> None:
    from dist_llm.envinfo.report import format_text, to_json

    if args.json:
        print(json.dumps(to_json(facts, checks, ranks), indent=1))
    else:
        print(format_text(facts, checks, ranks))


def _collect(args: argparse.Namespace) -> tuple[dict, list[Check]]:
    from dist_llm.envinfo.checks import run_checks
    from dist_llm.envinfo.facts import collect_facts

    facts = collect_facts(args.master_addr, args.master_port, args.nnodes)
    return facts, run_checks(facts)


def _run_ranks(args: argparse.Namespace) -> int:
    """Join a gloo group (CPU-only, so it works even where NCCL or CUDA is what is broken), check
    each rank after the group formed (the master port then answers), gather to rank 0, and give
    every rank rank 0's verdict so each node's torchrun exits with the same status. A rank that
    cannot join reports itself with a failed `rendezvous` check."""
    import torch.distributed as dist

    from dist_llm.distributed import broadcast_object, shutdown
    from dist_llm.envinfo.checks import FAIL, Check, worst
    from dist_llm.envinfo.compare import compare_ranks
    from dist_llm.envinfo.report import merge_checks

    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    except RuntimeError as e:  # still report this host: its own checks often say why
        facts, checks = _collect(args)
        launch = facts["launch"]
        joined = Check(
            "rendezvous",
            FAIL,
            f"rank {launch['rank']} could not join the other ranks at "
            f"{launch['master_addr']}:{launch['master_port']}: {e}",
            "start every node within --timeout; see the checks above for address/port problems",
        )
        _emit(args, facts, [*checks, joined], None)
        return 1
    facts, checks = _collect(args)
    gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((facts, checks), gathered, dst=0)
    status = None
    if gathered is not None:
        all_facts = [f for f, _ in gathered]
        merged = merge_checks([c for _, c in gathered]) + compare_ranks(all_facts)
        _emit(args, facts, merged, all_facts)
        status = worst(merged)
    status = broadcast_object(status)
    shutdown()
    return 1 if status == FAIL else 0


def run(args: argparse.Namespace) -> int:
    from dist_llm.envinfo.checks import FAIL, worst

    if in_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        return _run_ranks(args)
    facts, checks = _collect(args)
    _emit(args, facts, checks, None)
    return 1 if worst(checks) == FAIL else 0
