"""This host's collective bandwidths and latency as gloo delivers them between two processes: what
the planner assumes for `--gpu cpu`. Measured, not assumed, because gloo's all-gather and
reduce-scatter (FSDP's collectives) run an order of magnitude slower than its all-reduce here."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from functools import cache

MESSAGE_BYTES = 25_000_000  # about one block of a 100M-parameter model in fp32
REPEATS = 3


@dataclass(frozen=True)
class Links:
    allreduce_gbps: float
    """All-reduce: bytes each rank sends, 2 (n - 1) / n x the tensor, per second."""
    gather_gbps: float
    """All-gather and reduce-scatter: (n - 1) / n x the unsharded tensor per second."""
    latency_s: float
    """One small all-reduce."""


def _timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _worker(rank: int, world: int, store: str, out: mp.Queue) -> None:
    import warnings

    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)  # the *_tensor names' deprecation
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    shard = torch.ones(MESSAGE_BYTES // 4 // world)
    full = torch.empty(shard.numel() * world)
    gather = _timed(lambda: dist.all_gather_into_tensor(full, shard), REPEATS)
    scatter = _timed(lambda: dist.reduce_scatter_tensor(shard, full), REPEATS)
    reduce = _timed(lambda: dist.all_reduce(full), REPEATS)
    small = torch.zeros(1)
    latency = _timed(lambda: dist.all_reduce(small), 50)
    if rank == 0:
        moved = full.numel() * 4 * (world - 1) / world
        out.put(Links(2 * moved / reduce / 1e9, 2 * moved / (gather + scatter) / 1e9, latency))
    dist.destroy_process_group()


@cache
def measure_links(world: int = 2) -> Links:
    """Two (or `world`) gloo processes on this host, timed on a 25 MB tensor (a few seconds)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, args=(r, world, store, out)) for r in range(world)]
        for p in procs:
            p.start()
        links = out.get(timeout=300)
        for p in procs:
            p.join()
    return links
