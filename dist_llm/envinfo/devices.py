"""Compute devices and host resources: GPUs as torch sees them (and as /dev shows them, which can
differ), the CPU with the ISA extensions bf16 speed depends on, memory, /dev/shm and ulimits."""

from __future__ import annotations

import glob
import os
import platform
import re
import resource

import torch

GIB = 1024**3
# CPU flags worth knowing for training: bf16/fp16 matmul speed on CPU ranks depends on them
# (x86 names from /proc/cpuinfo "flags", Arm names from "Features").
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)


def gpus() -> list[dict]:
    """The GPUs this process can use (after CUDA_VISIBLE_DEVICES), in torch's order."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": p.name,
                "memory_gib": round(p.total_memory / GIB, 1),
                "capability": f"{p.major}.{p.minor}",
                "multiprocessors": p.multi_processor_count,
            }
        )
    return out


def nvidia_device_nodes() -> int:
    """GPUs present on the host (or given to this container): /dev/nvidia0, /dev/nvidia1, ...
    Counted without CUDA, so it still tells "GPUs exist" when torch cannot use them."""
    return len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (model name, flags, ...)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs: hyper-threads share a core's matmul units."""
    cores = set()
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology"):
        try:
            with open(f"{path}/physical_package_id") as p, open(f"{path}/core_id") as c:
                cores.add((p.read().strip(), c.read().strip()))
        except OSError:
            continue
    return len(cores) or None


def _read_first(*paths: str) -> str | None:
    """The contents of the first readable file (cgroup v2 path first, then v1)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def _cgroup_cpus() -> float | None:
    """The container's CPU quota in CPUs; None when unlimited. Affinity does not show it, and
    torch's default thread count ignores it."""
    v2 = _read_first("/sys/fs/cgroup/cpu.max")  # "max 100000" or "200000 100000"
    quota, period = (
        v2.split()[:2]
        if v2
        else (
            _read_first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
            _read_first("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
        )
    )
    if quota in (None, "max", "-1") or not period:
        return None
    return round(int(quota) / int(period), 2)


def cpu() -> dict:
    """Model, cores, the CPUs this process may run on (affinity, cgroup quota), NUMA nodes, ISA."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "physical_cores": _physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cgroup_cpus": _cgroup_cpus(),
        "numa_nodes": len(glob.glob("/sys/devices/system/node/node[0-9]*")) or None,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def memory() -> dict:
    """Total and available RAM, and the container's memory limit when it is below the total."""
    meminfo = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    total = meminfo.get("MemTotal")
    limit = _read_first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    limit_bytes = int(limit) if limit and limit.isdigit() else None
    return {
        "total_gib": round(total / GIB, 1) if total else None,
        "available_gib": round(meminfo["MemAvailable"] / GIB, 1) if "MemAvailable" in meminfo else None,
        "cgroup_limit_gib": round(limit_bytes / GIB, 1)
        if limit_bytes and total and limit_bytes < total
        else None,
    }


def shm() -> dict | None:
    """Size of /dev/shm, where NCCL's intra-node buffers and DataLoader worker batches live."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return {
        "total_gib": round(st.f_blocks * st.f_frsize / GIB, 3),
        "free_gib": round(st.f_bavail * st.f_frsize / GIB, 3),
    }


def limits() -> dict:
    """Soft/hard ulimits that break runs: open files (DataLoader workers, NCCL sockets) and locked
    memory (RDMA registers buffers). None means unlimited."""

    def pair(which: int) -> list[int | None]:
        return [None if v == resource.RLIM_INFINITY else v for v in resource.getrlimit(which)]

    return {"nofile": pair(resource.RLIMIT_NOFILE), "memlock": pair(resource.RLIMIT_MEMLOCK)}


def device_facts() -> dict:
    return {
        "gpus": gpus(),
        "nvidia_device_nodes": nvidia_device_nodes(),
        "torch_arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cpu": cpu(),
        "memory": memory(),
        "shm": shm(),
        "limits": limits(),
    }
