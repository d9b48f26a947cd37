"""One rank's facts as a JSON-able dict: host, launch (who this rank is and what the job is meant
to be), software, devices, interconnect and the environment variables that steer distributed runs.
A dict rather than dataclasses because it travels as-is through gather_object and into --json."""

from __future__ import annotations

import os
import platform
import socket
import sys

from dist_llm.envinfo import devices, network, software
from dist_llm.launch.torchrun import in_torchrun

ENV_PREFIXES = (
    "NCCL_",
    "GLOO_",
    "TORCH_",
    "TORCHELASTIC_",
    "PYTORCH_",
    "CUDA_",
    "SLURM_",
    "OMP_",
    "MKL_",
    "HF_",
    "WANDB_",
    "DS_",
    "FI_",
    "UCX_",
    "NVIDIA_",
)
ENV_NAMES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "NODE_RANK",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
)
# Values never printed: reports get pasted into tickets and chats.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def relevant_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables that change how ranks find each other and talk, secrets shown as <set>."""
    out = {}
    for name in sorted(environ):
        if name in ENV_NAMES or name.startswith(ENV_PREFIXES):
            out[name] = "<set>" if any(m in name for m in SECRET_MARKERS) else environ[name]
    return out


def _env_int(*names: str) -> int | None:
    """The first of `names` set to an integer."""
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return None


def launch_facts(
    master_addr: str | None = None, master_port: str | None = None, nnodes: int | None = None
) -> dict:
    """Who this rank is and what the job is meant to be. Inside torchrun its variables say it;
    before a launch, `dist-llm env --master-addr/--master-port/--nnodes` (or MASTER_ADDR,
    MASTER_PORT and SLURM's node count) describe the job the checks should judge."""
    world = _env_int("WORLD_SIZE") or 1
    local_world = _env_int("LOCAL_WORLD_SIZE") or 1
    nodes = (
        nnodes
        or _env_int("GROUP_WORLD_SIZE", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
        or max(1, world // local_world)
    )
    return {
        "in_torchrun": in_torchrun(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "rank": _env_int("RANK") or 0,
        "local_rank": _env_int("LOCAL_RANK") or 0,
        "world_size": world,
        "local_world_size": local_world,
        "nnodes": nodes,
        "node_rank": _env_int("GROUP_RANK", "SLURM_NODEID"),
        "master_addr": master_addr or os.environ.get("MASTER_ADDR"),
        "master_port": master_port or os.environ.get("MASTER_PORT"),
    }


def host_facts() -> dict:
    boot_id = None
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            boot_id = f.read().strip()  # tells two machines apart even when their hostnames agree
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "boot_id": boot_id,
        "os": platform.platform(),
        "python_executable": sys.executable,
    }


def collect_facts(
    master_addr: str | None = None, master_port: str | None = None, nnodes: int | None = None
) -> dict:
    """Everything `dist-llm env` reports about this rank (a few seconds: torch's import dominates)."""
    return {
        "host": host_facts(),
        "launch": launch_facts(master_addr, master_port, nnodes),
        "software": software.software_facts(),
        "devices": devices.device_facts(),
        "interconnect": {
            "interfaces": network.interfaces(),
            "infiniband": network.infiniband(),
            "gpudirect_rdma": network.gpudirect_rdma(),
            "topology": network.gpu_topology(),
        },
        "env": relevant_env(dict(os.environ)),
    }
