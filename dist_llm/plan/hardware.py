"""The devices a plan is made for: memory per device, peak dense FLOP/s, link bandwidths, and the
assumptions about how much of them training gets. Every figure here is printed with a plan.

GPU figures are datasheet values (SXM parts); `cpu` is this machine, measured: its memory is
MemTotal split over the ranks of a node, its peak a matmul timed on this process's threads (one
rank's worth of cores under OMP_NUM_THREADS), its links gloo's all-reduce, all-gather and latency
between two processes (`links`), its fixed per-process cost the resident memory of this process
once torch and the training code are imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from functools import cache

GB = 1e9
GIB = 2**30


@dataclass(frozen=True)
class Hardware:
    name: str
    memory_bytes: float
    """Memory one rank may use: a GPU's own memory, or (cpu) host memory / ranks per node."""
    peak_tflops: dict[str, float]
    """Dense peak per device by compute dtype (bf16, fp32)."""
    intra_gbps: float
    """Bandwidth per device per direction inside a node, GB/s (NVLink; cpu: shared memory via gloo)."""
    inter_gbps: float
    """Bandwidth per device per direction between nodes, GB/s (one InfiniBand NIC per GPU)."""
    latency_s: float
    """Fixed cost of one collective (launch and synchronization), seconds."""
    efficiency: float
    """Share of the peak that a Transformer's forward and backward reach (the MFU before
    communication): an assumption, see the README."""
    memory_gbps: float
    """Device memory bandwidth, GB/s: bounds the optimizer step (AdamW reads and writes ~32 bytes
    per parameter)."""
    host_gbps: float
    """Host <-> device bandwidth, GB/s (PCIe), for CPU offload; cpu: unused."""
    runtime_bytes: float
    """Fixed per-rank cost besides the training state (CUDA context, NCCL, allocator slack; cpu:
    the measured resident memory of torch and the training code)."""
    gather_ratio: float = 1.0
    """All-gather / reduce-scatter bandwidth relative to all-reduce's (NCCL: about 1; gloo on a
    CPU host: measured, about 0.1-0.2)."""
    overlap: float = 0.7
    """Share of the compute time during which data-parallel traffic is hidden (prefetched
    all-gathers, bucketed reductions); TP and pipeline traffic is never hidden."""
    is_cpu: bool = False

    def assumptions(self) -> dict[str, object]:
        return {
            "device": self.name,
            "memory GB per rank": round(self.memory_bytes / GB, 2),
            "peak TFLOP/s": {k: float(f"{v:.3g}") for k, v in self.peak_tflops.items()},
            "share of peak reached": self.efficiency,
            "intra-node GB/s": self.intra_gbps,
            "all-gather/reduce-scatter vs all-reduce bandwidth": round(self.gather_ratio, 3),
            "inter-node GB/s": self.inter_gbps,
            "collective latency us": round(self.latency_s * 1e6, 1),
            "data-parallel traffic hidden behind compute": self.overlap,
            "memory GB/s (optimizer step)": self.memory_gbps,
            "host link GB/s (offload)": self.host_gbps,
            "fixed runtime GB per rank": round(self.runtime_bytes / GB, 2),
        }


GPUS = {
    "h100": Hardware(
        name="h100 (H100 SXM 80 GB)",
        memory_bytes=80 * GIB,
        peak_tflops={"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
        intra_gbps=450.0,
        inter_gbps=50.0,
        latency_s=20e-6,
        efficiency=0.5,
        memory_gbps=3350.0,
        host_gbps=25.0,
        runtime_bytes=3 * GB,
    ),
    "h200": Hardware(
        name="h200 (H200 SXM 141 GB)",
        memory_bytes=141 * GB,
        peak_tflops={"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
        intra_gbps=450.0,
        inter_gbps=50.0,
        latency_s=20e-6,
        efficiency=0.5,
        memory_gbps=4800.0,
        host_gbps=25.0,
        runtime_bytes=3 * GB,
    ),
    "a100": Hardware(
        name="a100 (A100 SXM 80 GB)",
        memory_bytes=80 * GIB,
        peak_tflops={"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
        intra_gbps=300.0,
        inter_gbps=25.0,
        latency_s=20e-6,
        efficiency=0.5,
        memory_gbps=2039.0,
        host_gbps=25.0,
        runtime_bytes=3 * GB,
    ),
}
KINDS = (*GPUS, "cpu")


def host_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@cache
def _measured_cpu_peaks() -> dict[str, float]:
    import torch

    from dist_llm.metrics.peak import measured_peak_tflops

    return {"fp32": measured_peak_tflops(torch.device("cpu"), torch.float32)}


@cache
def runtime_resident_bytes(fresh: bool) -> int:
    """Resident memory of a process that has imported torch and the training code: what every rank
    holds before its first parameter. `fresh=False`: this process's, after the same imports (the
    fit check, in the `dist-llm train` process that is about to spawn the ranks); `fresh=True`: a
    new process's (the planner and its benchmark, which may run in a process holding much more,
    such as a test session or a notebook)."""
    if fresh:
        probe = "import dist_llm.trainer, dist_llm.plan.hardware as h; print(h.resident_bytes())"
        child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        return int(child.stdout)
    import dist_llm.trainer  # noqa: F401  (the imports a rank makes, counted in its resident size)

    return resident_bytes()


def hardware(
    kind: str, ranks_per_node: int, peak_tflops: float | None = None, timing: bool = True
) -> Hardware:
    """The spec of `kind` (h100, h200, a100, cpu) for `ranks_per_node` ranks on each node;
    `peak_tflops` (logging.peak_tflops) replaces the peak when given. `timing=False` (a memory check
    only, from the `dist-llm train` process) skips measuring this host's peak and links and takes
    the runtime's memory from this process."""
    if kind in GPUS:
        hw = GPUS[kind]
    elif kind == "cpu":
        hw = _cpu(ranks_per_node, peak_tflops, timing)
    else:
        raise ValueError(f"unknown device kind {kind!r}; choose from {', '.join(KINDS)}")
    if peak_tflops and not hw.is_cpu:
        hw = replace(hw, peak_tflops={k: peak_tflops for k in hw.peak_tflops})
    return hw


def _cpu(ranks_per_node: int, peak_tflops: float | None, timing: bool) -> Hardware:
    from dist_llm.plan.links import Links, measure_links

    if peak_tflops or not timing:
        peaks, source = {"fp32": peak_tflops or 1.0}, "configured" if peak_tflops else "not measured"
    else:
        peaks, source = _measured_cpu_peaks(), "measured by a matmul"
    links = measure_links() if timing else Links(1.0, 1.0, 1e-3)
    return Hardware(
        name=f"cpu (this host: {host_memory_bytes() / GB:.1f} GB over {ranks_per_node} ranks, "
        f"fp32 peak {source}, gloo links {'measured' if timing else 'not measured'})",
        memory_bytes=host_memory_bytes() / ranks_per_node,
        peak_tflops={**peaks, "bf16": peaks["fp32"] / 50},  # bf16 is emulated without AVX512-BF16
        intra_gbps=round(links.allreduce_gbps, 3),
        inter_gbps=round(links.allreduce_gbps, 3),
        latency_s=links.latency_s,
        efficiency=0.6,
        memory_gbps=10.0,
        host_gbps=0.0,
        runtime_bytes=runtime_resident_bytes(fresh=timing),
        gather_ratio=links.gather_gbps / links.allreduce_gbps,
        overlap=0.0,
        is_cpu=True,
    )
