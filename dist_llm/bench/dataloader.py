"""`dist-llm bench dataloader`: how much of a training step goes into getting its batch, and how
many bytes remote data costs per trained token.

For each data location (the config's, optionally s3:// copies) two measurements:
- the loader alone: rank 0's `next_step()` in a loop, as the trainer builds it (remote data with
  an empty cache, so the first step pays for its fetches and the rest show whether prefetch keeps
  up);
- a real `dist-llm train` of the same config, again with an empty cache: the median `data_time_s`
  against the median `step_time_s` of the logged steps after `warmup`. Their ratio is the loader's
  share of a step.

With `s3=True` the benchmark starts a local SeaweedFS (as the integration tests do) and uploads the
dataset twice: as prepared (read by byte range) and with its manifest in the format before range
reads, which the loader downloads as whole shards: the baseline. The store's own count of bytes
sent per bucket during the training run, over the tokens that run trained, is the bytes fetched
per trained token; it includes the manifest and the final validation pass (one batch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from data_prep import store
from data_prep.checks import checks_path
from data_prep.manifest import (
    MANIFEST_NAME,
    SHARD_TABLE_NAME,
    SPLITS,
    TABLE_SCHEMAS,
    WHOLE_SHARD_FORMAT,
    Manifest,
    manifest_path,
    read_manifest,
)
from dist_llm.bench.s3_server import S3Server, SeaweedFS
from dist_llm.config import load_config
from dist_llm.data.sources import open_training_data, train_batches
from dist_llm.errors import ConfigError
from dist_llm.launch.torchrun import torchrun_command
from dist_llm.uri import join

RANGED = "range reads"
WHOLE = "whole shards"


@dataclass
class LoaderBenchResult:
    location: str
    """data.path the run read (a local directory or a URI)."""
    ranks: int
    loader_first_ms: float
    """The loader alone, first step (remote: includes the first fetches)."""
    loader_ms: float
    """The loader alone, median over the steps after warmup."""
    train_data_ms: float
    """In a real training run: median data_time_s (rank 0)."""
    train_data_max_ms: float
    """In a real training run: the slowest batch after warmup."""
    train_step_ms: float
    """In a real training run: median step_time_s."""
    ratio: float
    """train_data_ms / train_step_ms: the loader's share of a step (goal: < 1%)."""
    reads: str = ""
    """s3 copies made by the benchmark: RANGED or WHOLE (the baseline); "" otherwise."""
    trained_tokens: int = 0
    """Tokens the training run trained on (all ranks)."""
    fetched_bytes: int | None = None
    """Bytes the object store sent during the training run (all processes); None where unknown."""
    fetched_per_token: float | None = None
    """fetched_bytes / (trained_tokens x bytes per token id) (goal for range reads: <= 1.5)."""


def write_whole_shard_manifest(data_dir: str, manifest: Manifest) -> None:
    """Write `manifest` at `data_dir` in the format before range reads (no offsets, no chunk
    size), which remote readers download as whole shards: the benchmark's baseline."""
    schema = TABLE_SCHEMAS[WHOLE_SHARD_FORMAT]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as ipc:
        for split in SPLITS:
            ipc.write_batch(manifest.shards[split].to_batch().select(schema.names))
    table = sink.getvalue().to_pybytes()
    store.write_bytes(join(data_dir, SHARD_TABLE_NAME), table)
    header = {k: v for k, v in manifest.header.items() if k != "chunk_bytes"}
    header |= {
        "format": WHOLE_SHARD_FORMAT,
        "shard_table": {
            "path": SHARD_TABLE_NAME,
            "bytes": len(table),
            "sha256": hashlib.sha256(table).hexdigest(),
        },
    }
    store.write_bytes(manifest_path(data_dir), (json.dumps(header, indent=2) + "\n").encode())


def _upload(local: str, uri: str, whole_shards: bool) -> None:
    """Copy what training reads of the dataset at `local` to `uri`."""
    manifest = read_manifest(local)
    shards = [table.path(i) for table in manifest.shards.values() for i in range(len(table))]
    files = shards if whole_shards else [*shards, *map(checks_path, shards), SHARD_TABLE_NAME, MANIFEST_NAME]
    for rel in files:
        with open(os.path.join(local, rel), "rb") as f:
            store.write_bytes(join(uri, rel), f.read())
    if whole_shards:
        write_whole_shard_manifest(uri, manifest)


@contextlib.contextmanager
def _local_s3(work_dir: str, dataset: str) -> Iterator[tuple[S3Server, list[tuple[str, str, str]]]]:
    """A SeaweedFS holding both copies of `dataset`, its credentials in this process's environment
    (and so in the training runs'); yields the server and (uri, bucket, reads) per copy."""
    import s3fs  # optional (the s3 extra): only --s3 needs it

    server = SeaweedFS(Path(work_dir))
    saved = dict(os.environ)
    try:
        s3 = server.start()
        os.environ.update(s3.env)
        s3fs.S3FileSystem.clear_instance_cache()
        copies = []
        for reads in (RANGED, WHOLE):
            bucket = s3.new_bucket()
            _upload(dataset, f"s3://{bucket}/ds", reads == WHOLE)
            copies.append((f"s3://{bucket}/ds", bucket, reads))
        yield s3, copies
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
        s3fs.S3FileSystem.clear_instance_cache()


def _loader_times(config: str, overrides: list[str], steps: int) -> list[float]:
    cfg = load_config(config, overrides)
    world = cfg.launch.nproc_per_node * cfg.launch.nnodes
    cfg.validate(world_size=world)
    data = open_training_data(cfg.data)
    batches = train_batches(cfg, data, 0, cfg.engine.dims(world).dp)
    times = []
    try:
        for _ in range(steps):
            start = time.perf_counter()
            batches.next_step()
            times.append(time.perf_counter() - start)
    finally:
        data.close()
    return times


def _train_records(config: str, overrides: list[str], steps: int, run_dir: str) -> tuple[int, list[dict]]:
    cfg = load_config(config, overrides)
    ranks = cfg.launch.nproc_per_node
    args = [
        "train",
        config,
        *overrides,
        f"logging.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.log_interval=1",
        "train.eval_interval=0",
        "train.eval_batches=1",  # the final validation pass: one batch, a sliver of the bytes read
        "eval.tasks=[]",
        "checkpoint.interval=0",
    ]
    cmd = [sys.executable, "-m", "dist_llm.cli", *args] if ranks == 1 else torchrun_command(args, ranks)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return ranks, [r for r in map(json.loads, f) if "data_time_s" in r]


def bench_dataloader(
    config: str, overrides: list[str], uris: list[str], steps: int, warmup: int, s3: bool = False
) -> list[LoaderBenchResult]:
    if warmup >= steps:
        raise ConfigError(f"--warmup {warmup} must be below --steps {steps}")
    cfg = load_config(config, overrides)
    trained_tokens = steps * cfg.train.global_batch_size * cfg.data.seq_len
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        locations: list[tuple[str | None, str, str]] = [(None, "", ""), *((uri, "", "") for uri in uris)]
        server = None
        if s3:
            os.makedirs(os.path.join(tmp, "seaweedfs"))
            server, copies = stack.enter_context(_local_s3(os.path.join(tmp, "seaweedfs"), cfg.data.path))
            locations += copies
        for i, (uri, bucket, reads) in enumerate(locations):
            # An empty cache per location: remote runs fetch what they read, as on a fresh node.
            where = [] if uri is None else [f"data.path={uri}", f"data.cache_dir={tmp}/cache{i}"]
            # max_steps: the loader prefetches nothing past the steps measured.
            loader = _loader_times(config, [*overrides, *where, f"train.max_steps={steps}"], steps)
            if uri is not None:
                where[-1] = f"data.cache_dir={tmp}/train-cache{i}"
            sent = server.sent_bytes(bucket) if bucket else 0
            ranks, records = _train_records(config, [*overrides, *where], steps, os.path.join(tmp, f"run{i}"))
            fetched = server.sent_bytes(bucket) - sent if bucket else None
            data_s = [r["data_time_s"] for r in records[warmup:]]
            step_s = statistics.median(r["step_time_s"] for r in records[warmup:])
            results.append(
                LoaderBenchResult(
                    location=uri or cfg.data.path,
                    ranks=ranks,
                    loader_first_ms=1e3 * loader[0],
                    loader_ms=1e3 * statistics.median(loader[warmup:]),
                    train_data_ms=1e3 * statistics.median(data_s),
                    train_data_max_ms=1e3 * max(data_s),
                    train_step_ms=1e3 * step_s,
                    ratio=statistics.median(data_s) / step_s,
                    reads=reads,
                    trained_tokens=trained_tokens,
                    fetched_bytes=fetched,
                    fetched_per_token=None
                    if fetched is None
                    else fetched / (trained_tokens * _token_bytes(cfg.data.path)),
                )
            )
    return results


def _token_bytes(data_path: str) -> int:
    return np.dtype(read_manifest(data_path).header["token_dtype"]).itemsize


def format_table(results: list[LoaderBenchResult]) -> str:
    baseline = next((r.fetched_bytes for r in results if r.reads == WHOLE), None)
    lines = [
        "data | ranks | loader alone: first / median ms | in training: data ms median (max) | "
        "step ms | data / step | fetched MB (cold cache) | per trained token byte | vs whole shards",
        "---|---|---|---|---|---|---|---|---",
    ]
    for r in results:
        fetched = "-" if r.fetched_bytes is None else f"{r.fetched_bytes / 1e6:.2f}"
        per_token = "-" if r.fetched_per_token is None else f"{r.fetched_per_token:.2f}x"
        versus = f"{r.fetched_bytes / baseline:.3f}x" if baseline and r.fetched_bytes is not None else "-"
        label = f"{r.location} ({r.reads})" if r.reads else r.location
        lines.append(
            f"{label} | {r.ranks} | {r.loader_first_ms:.2f} / {r.loader_ms:.3f} | "
            f"{r.train_data_ms:.3f} ({r.train_data_max_ms:.2f}) | {r.train_step_ms:.1f} | "
            f"{100 * r.ratio:.2f}% | {fetched} | {per_token} | {versus}"
        )
    return "\n".join(lines)
