"""`dist-llm launch`: check the config once, then run the launcher command line for this node."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from dist_llm.errors import ConfigError
from dist_llm.launch.deepspeed_launcher import DS_LAUNCHERS, deepspeed_command, read_hostfile
from dist_llm.launch.preflight import check_training
from dist_llm.launch.torchrun import torchrun_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="start a training run on this node through torchrun or the deepspeed "
        "launcher (multi-node: the same command on every node)",
    )
    p.add_argument("config", help="training config, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=1000")
    p.add_argument("--launcher", choices=["torchrun", "deepspeed"], default="torchrun")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help="ranks on this node (default: launch.nproc_per_node; deepspeed: the hostfile's slots)",
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (default: continue from the run's latest checkpoint, so restarts resume), "
        "none, or a checkpoint path",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command line, run nothing")
    t = p.add_argument_group("torchrun")
    t.add_argument("--nnodes", type=int, default=1)
    t.add_argument(
        "--rdzv-endpoint",
        help="host:port of one node (multi-node c10d rendezvous; every node gives the same)",
    )
    t.add_argument(
        "--rdzv-id",
        default=os.environ.get("SLURM_JOB_ID", "dist-llm"),
        help="job id shared by the nodes (default: $SLURM_JOB_ID or dist-llm)",
    )
    t.add_argument("--max-restarts", type=int, default=0, help="restart all ranks this often after a failure")
    d = p.add_argument_group("deepspeed")
    d.add_argument("--hostfile", help="'<hostname> slots=<N>' per node (see launch/hostfile.example)")
    d.add_argument("--master-addr", help="default: the hostfile's first host")
    d.add_argument("--master-port", type=int, default=29500)
    d.add_argument(
        "--ds-launcher",
        choices=DS_LAUNCHERS,
        default="pdsh",
        help="how the launcher reaches the other hosts (ignored with --no-ssh)",
    )
    d.add_argument(
        "--no-ssh",
        action="store_true",
        help="run only this node's ranks; start the same command on every node with its --node-rank",
    )
    d.add_argument("--node-rank", type=int, help="this node's line in the hostfile, from 0 (with --no-ssh)")


def build_command(args: argparse.Namespace) -> list[str]:
    """The launcher command line, after checking the whole job's config for its world size."""
    if args.launcher == "deepspeed":
        if not args.hostfile:
            raise ConfigError("--launcher deepspeed needs --hostfile (see launch/hostfile.example)")
        hosts = read_hostfile(args.hostfile)
        if args.no_ssh and args.node_rank is None:
            raise ConfigError("--no-ssh needs --node-rank (this node's line in the hostfile, from 0)")
        nnodes, nproc = len(hosts), hosts[0].slots
    else:
        if args.nnodes > 1 and not args.rdzv_endpoint:
            raise ConfigError(
                f"--nnodes {args.nnodes} needs --rdzv-endpoint host:port (one of the nodes, "
                "the same on every node)"
            )
        nnodes, nproc = args.nnodes, args.nproc_per_node
    overrides = [*args.overrides, f"launch.nnodes={nnodes}", f"checkpoint.resume={args.resume}"]
    if nproc:
        overrides.append(f"launch.nproc_per_node={nproc}")
    cfg = check_training(args.config, overrides, check_fit=True)
    train = ["train", args.config, *overrides]
    if args.launcher == "deepspeed":
        return deepspeed_command(
            train,
            args.hostfile,
            args.master_addr or hosts[0].name,
            args.master_port,
            args.node_rank if args.no_ssh else None,
            args.ds_launcher,
        )
    return torchrun_command(
        train, cfg.launch.nproc_per_node, nnodes, args.rdzv_endpoint or "", args.rdzv_id, args.max_restarts
    )


def run(args: argparse.Namespace) -> int:
    cmd = build_command(args)
    print(shlex.join(cmd), file=sys.stderr if not args.dry_run else sys.stdout)
    if args.dry_run:
        return 0
    # A restarted attempt must not reuse the previous one's rendezvous store (pytorch/pytorch#135712).
    return subprocess.call(cmd, env={**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
