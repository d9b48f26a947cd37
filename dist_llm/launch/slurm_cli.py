"""`dist-llm slurm submit|status|cancel|requeue`."""

from __future__ import annotations

import argparse
import os
import sys

from dist_llm.launch import slurm
from dist_llm.launch.preflight import check_training
from dist_llm.launch.sbatch import SbatchSpec, render_sbatch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "slurm", help="submit a training run to SLURM (requeued jobs resume), watch or stop it"
    )
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser(
        "submit", help="render the sbatch script, check the config, submit, print the job id"
    )
    s.add_argument("config", help="training config, e.g. configs/tiny.yaml")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=1000")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one rank per GPU")
    s.add_argument(
        "--nproc-per-node",
        type=int,
        default=0,
        help="ranks per node (default: --gpus-per-node; required on CPU partitions)",
    )
    s.add_argument("--cpus-per-task", type=int, default=0, help="CPUs for each node's task (all its ranks)")
    s.add_argument("--partition", default="")
    s.add_argument(
        "--time",
        default="",
        help="time limit, e.g. 4:00:00 (the job checkpoints and requeues itself before it)",
    )
    s.add_argument("--account", default="")
    s.add_argument("--job-name", default="", help="default: dist-llm-<config name>")
    s.add_argument(
        "--signal-before",
        type=int,
        default=300,
        metavar="SECONDS",
        help="SIGUSR1 this long before the time limit starts checkpoint-and-requeue",
    )
    s.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="restart all ranks in place this often after a failure (a dead or hung rank)",
    )
    s.add_argument(
        "--rdzv-port",
        type=int,
        default=0,
        help="c10d rendezvous port on the first node (default: 20000 + job id %% 10000)",
    )
    s.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH option (repeatable)")
    s.add_argument(
        "--srun-arg",
        action="append",
        default=[],
        help="extra srun option (repeatable), e.g. --container-image=... with pyxis",
    )
    s.add_argument(
        "--python",
        default=sys.executable,
        help="the Python the job runs (default: this one; inside a container image: python)",
    )
    s.add_argument(
        "--workdir",
        default=os.getcwd(),
        help="the job's working directory (default: here; inside a container image: its /workspace)",
    )
    s.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    st = actions.add_parser(
        "status", help="state of dist-llm jobs (all of yours by default) and their progress"
    )
    st.add_argument("job_ids", nargs="*")
    for name, text in (
        ("cancel", "cancel jobs (no final checkpoint: use requeue or let the time limit act)"),
        ("requeue", "stop jobs now and queue them again; they resume from their latest checkpoint"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("job_ids", nargs="+")


def _spec(args: argparse.Namespace) -> SbatchSpec:
    spec = SbatchSpec(
        config=args.config,
        overrides=list(args.overrides),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        nproc_per_node=args.nproc_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time=args.time,
        account=args.account,
        signal_before_s=args.signal_before,
        max_restarts=args.max_restarts,
        rdzv_port=args.rdzv_port,
        workdir=args.workdir,
        python=args.python,
        sbatch_args=args.sbatch_arg,
        srun_args=args.srun_arg,
    )
    spec.check()
    # The whole job's config is checked here, on the login node, not after hours in the queue.
    cfg = check_training(
        args.config,
        [*spec.overrides, f"launch.nnodes={spec.nodes}", f"launch.nproc_per_node={spec.ranks_per_node}"],
    )
    spec.run_dir = cfg.logging.run_dir
    spec.job_name = args.job_name or f"dist-llm-{os.path.splitext(os.path.basename(args.config))[0]}"
    return spec


def run(args: argparse.Namespace) -> int:
    if args.action == "submit":
        spec = _spec(args)
        if args.dry_run:
            print(render_sbatch(spec), end="")
            return 0
        job_id, script = slurm.submit(spec)
        # The id alone on stdout (for `JOB=$(dist-llm slurm submit ...)`), the details on stderr.
        print(
            f"submitted job {job_id}: script {script}, log {spec.run_dir}/slurm/{spec.job_name}-{job_id}.out",
            file=sys.stderr,
        )
        print(job_id)
        return 0
    if args.action == "status":
        rows = slurm.list_jobs(args.job_ids)
        print(
            f"{'JOBID':<10} {'STATE':<11} {'ELAPSED':>10} {'LIMIT':>10} {'NODES':>5}  {'NAME':<22} "
            f"{'NODELIST(REASON)':<18} PROGRESS"
        )
        for r in rows:
            progress = (slurm.latest_progress(r.run_dir) or "-") if r.run_dir else ""
            print(
                f"{r.job_id:<10} {r.state:<11} {r.elapsed:>10} {r.time_limit:>10} {r.nodes:>5}  "
                f"{r.name:<22} {r.where:<18} {progress}"
            )
        return 0
    getattr(slurm, args.action)(args.job_ids)
    print(f"{args.action}: {' '.join(args.job_ids)}")
    return 0
