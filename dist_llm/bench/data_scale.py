"""`dist-llm bench data-scale`: a training rank's data start-up at 10T tokens, without the data.

For each dataset size a synthetic dataset is written: the real manifest (JSON header + columnar
shard table, by `data_prep.manifest.write_manifest`) of `shards` shards whose token counts are
drawn around tokens/shards and sum to exactly `tokens`, 1% of them in the validation split as
prep's default `val_fraction` puts there, with plausible document counts, byte sizes, paths and
(random) checksums. No shard file exists: 1M shards are a table of about 100 MB and nothing else.

Each measured rank then runs in a fresh process (so its memory is its own) the code a training
rank runs, up to the point where it would open token files:
- start: `load_config`, `open_training_data` (the manifest read and checked, both splits' shard
  tables and token indices) and `train_batches` (the global sample order) for rank r of `world`;
- resume: `load_state` of the data state a checkpoint at a random step (in the first two epochs)
  holds, and `state()` as the next checkpoint would take it;
- next batch: `step_samples` (this rank's sample ids of the next step, as `next_step` asks for
  them) and each sample's shard pieces and their byte ranges in the shard files (`pieces`,
  `byte_range`), which is what `next_step` would then read (locally by memory map, remotely by
  range request, rounded out to the dataset's checked chunks); and the same for every sample of
  the whole next global batch (all ranks' slices); medians of 5, the rest timed once.
Reading the tokens is left out: there are none. The peak RSS of the process (the kernel's
high-water mark) is reported with that of a process that only imported the same modules,
measured in the same run: the difference is what the data path costs the rank.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, TypeVar

import numpy as np
import pyarrow as pa

from data_prep.checks import CHUNK_BYTES
from data_prep.manifest import FORMAT, SPLITS, ShardTable, token_dtype, write_manifest
from dist_llm.config import load_config
from dist_llm.data.sources import open_training_data, train_batches

T = TypeVar("T")
VAL_FRACTION = 0.01
"""Share of shards and tokens in the validation split (prep's default `val_fraction`)."""
DOC_TOKENS = 800
"""Mean tokens per document of the synthetic shards (a web-text average)."""
SHARDS_PER_UNIT = 8
VOCAB_SIZE = 32_000
"""A vocabulary of under 65,536 entries: uint16 token ids, as for most pretraining tokenizers."""


def _split_table(rng: np.random.Generator, tokens: int, shards: int, split: str) -> ShardTable:
    """`shards` rows whose token counts are spread +-50% around the mean and sum to `tokens`."""
    weights = rng.uniform(0.5, 1.5, shards)
    counts = np.floor(weights / weights.sum() * tokens).astype(np.int64)
    short = tokens - int(counts.sum())  # float rounding: |short| < shards
    counts[rng.permutation(shards)[: abs(short)]] += 1 if short > 0 else -1
    docs = np.maximum(1, np.rint(counts / DOC_TOKENS * rng.uniform(0.8, 1.2, shards))).astype(np.int64)
    itemsize = token_dtype(VOCAB_SIZE).itemsize
    # Arrow IPC: magic, schema, a record batch header, then the list offsets (int32 per document
    # + 1) before the values, padded to 64 bytes; the footer after them.
    values_offsets = (512 + (docs + 1) * 4 + 63) // 64 * 64
    paths = pa.array(
        [
            f"units/u-{i // SHARDS_PER_UNIT:06d}/{split}-{i % SHARDS_PER_UNIT:03d}.arrow"
            for i in range(shards)
        ],
        pa.string(),
    )
    checksums = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), shards, [None, pa.py_buffer(rng.bytes(32 * shards))]
    )
    return ShardTable(
        paths=paths,
        checksums=checksums,
        docs=docs,
        tokens=counts,
        bytes=values_offsets + counts * itemsize + 384,
        values_offsets=values_offsets,
    )


def write_synthetic_dataset(data_dir: str, tokens: int, shards: int, seed: int = 0) -> dict:
    """A manifest (header + shard table, no shard files) of `shards` shards and `tokens` tokens
    over both splits; returns its header."""
    if shards < 2 or tokens < 2 * shards:
        raise ValueError(f"--tokens {tokens} --shards {shards}: need >= 2 shards of >= 2 tokens each")
    rng = np.random.default_rng(seed)
    val_shards = max(1, round(shards * VAL_FRACTION))
    val_tokens = max(2 * val_shards, round(tokens * VAL_FRACTION))
    tables = {
        "train": _split_table(rng, tokens - val_tokens, shards - val_shards, "train"),
        "validation": _split_table(rng, val_tokens, val_shards, "validation"),
    }
    header = {
        "format": FORMAT,
        "token_dtype": token_dtype(VOCAB_SIZE).name,
        "chunk_bytes": CHUNK_BYTES,
        "tokenizer": {
            "kind": "sentencepiece",
            "path": "tokenizer.model",
            "sha256": rng.bytes(32).hex(),
            "vocab_size": VOCAB_SIZE,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": None,
            "unk_id": 0,
            "mask_id": None,
        },
        "splits": {},
        "skipped": {"total": 0, "by_reason": {}},
        "args": {"synthetic": {"tokens": tokens, "shards": shards, "seed": seed}},
        "created_unix": time.time(),
    }
    os.makedirs(data_dir, exist_ok=True)
    return write_manifest(data_dir, header, {s: tables[s] for s in SPLITS}).header


@dataclass
class RankFigures:
    """What one rank's data start-up costs (the process's own figures)."""

    rank: int
    world: int
    start_s: float
    """Config, both manifests and splits, the loader with its order."""
    resume_step: int
    resume_s: float
    """`load_state` at `resume_step` and the `state()` a checkpoint takes."""
    next_ms: float
    """This rank's sample ids of the next step and their shard pieces and byte ranges (median of 5)."""
    global_ms: float
    """The same for every sample of the next global batch (median of 5)."""
    global_pieces: int
    """Shard pieces the next global batch reads (one per sample, two where it crosses a shard)."""
    global_bytes: int
    """Bytes of token ids the next global batch reads."""
    samples: int
    """Training samples of one epoch."""
    next_samples: list[list[int]] = field(default_factory=list)
    """(source, sample id) of this rank's next step."""
    next_ranges: list[list[int]] = field(default_factory=list)
    """(source, shard, first byte, end byte) of each piece this rank's next step reads."""


def _ranges(sources: list, ids: list[tuple[int, int]]) -> list[list[int]]:
    out = []
    for source, sample in ids:
        samples = sources[source].samples
        for piece in samples.pieces(sample):
            first, end = samples.shards.byte_range(piece)
            out.append([source, piece.shard, first, end])
    return out


def _median_ms(plan: Callable[[], T], repeats: int = 5) -> tuple[float, T]:
    """Median milliseconds of `repeats` calls (a step's planning is too short to time once on a
    shared machine) and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = plan()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), result


def measure_rank(config: str, overrides: list[str], rank: int, world: int, resume_step: int) -> RankFigures:
    """Rank `rank` of `world`'s data start-up, resume at `resume_step` and next batch, timed (the
    real loader's code; the config's data must be local or reachable)."""
    started = time.perf_counter()
    cfg = load_config(config, overrides)
    data = open_training_data(cfg.data)
    batches = train_batches(cfg, data, rank, world)
    start_s = time.perf_counter() - started

    saved = asdict(batches.state()) | {"consumed_samples": resume_step * cfg.train.global_batch_size}
    started = time.perf_counter()
    batches.load_state(saved)
    batches.state()
    resume_s = time.perf_counter() - started

    def plan_next() -> tuple[list[tuple[int, int]], list[list[int]]]:
        ids = batches.step_samples()[1]
        return ids, _ranges(batches.sources, ids)

    def plan_global() -> list[list[int]]:
        return _ranges(
            batches.sources, batches.order.sample_ids(batches.consumed_samples, batches.global_batch)
        )

    next_ms, (ids, ranges) = _median_ms(plan_next)
    global_ms, global_ranges = _median_ms(plan_global)
    data.close()
    return RankFigures(
        rank=rank,
        world=world,
        start_s=start_s,
        resume_step=resume_step,
        resume_s=resume_s,
        next_ms=next_ms,
        global_ms=global_ms,
        global_pieces=len(global_ranges),
        global_bytes=sum(end - first for _, _, first, end in global_ranges),
        samples=batches.sources[0].samples.num_samples,
        next_samples=[list(pair) for pair in ids],
        next_ranges=ranges,
    )


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _seconds_since_exec() -> float:
    """Time since this process started (the interpreter and every import so far)."""
    with open("/proc/self/stat") as f:
        started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")


def _worker(argv: list[str]) -> int:
    """In a fresh process: `baseline` (imports only) or one rank's figures, as one JSON line."""
    args = json.loads(argv[0])
    report: dict = {"imports_s": _seconds_since_exec()}
    if not args.get("baseline"):
        report |= asdict(measure_rank(**args))
    print(json.dumps(report | {"peak_rss_mb": _peak_rss_mb()}))
    return 0


def _run_worker(args: dict) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dist_llm.bench.data_scale", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"data-scale worker failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class DataScaleResult:
    tokens: int
    shards: int
    seq_len: int
    world: int
    global_batch: int
    rank: int
    samples: int
    table_mb: float
    """manifest-shards.arrow on disk (the whole synthetic dataset, with the ~2 KB header)."""
    baseline_rss_mb: float
    """Peak RSS of a process that only imported the data path's modules."""
    peak_rss_mb: float
    imports_s: float
    """From the process's start to `start_s`'s: the interpreter and its imports (torch among them)."""
    start_s: float
    resume_step: int
    resume_s: float
    next_ms: float
    global_ms: float
    global_pieces: int
    global_bytes: int

    @property
    def data_rss_mb(self) -> float:
        return self.peak_rss_mb - self.baseline_rss_mb


def bench_data_scale(
    tokens: list[int],
    shards: list[int],
    seq_len: int = 4096,
    world: int = 512,
    global_batch: int = 1024,
    ranks: list[int] | None = None,
    config: str = "configs/tiny.yaml",
    work_dir: str | None = None,
    seed: int = 0,
) -> list[DataScaleResult]:
    """Per dataset size (each of `tokens` x each of `shards`) and per measured rank (default: the
    first and the last), the rank's data start-up figures, each rank in a fresh process."""
    if global_batch % world:
        raise ValueError(f"--global-batch {global_batch} is not a multiple of --world {world}")
    ranks = ranks if ranks is not None else sorted({0, world - 1})
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="dist_llm_bench_data_scale_")
    rng = random.Random(seed)
    try:
        baseline = _run_worker({"baseline": True})["peak_rss_mb"]
        results = []
        for n_tokens in tokens:
            for n_shards in shards:
                data_dir = os.path.join(work_dir, f"t{n_tokens:.0e}-s{n_shards}")
                header = write_synthetic_dataset(data_dir, n_tokens, n_shards, seed)
                table_mb = sum(os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)) / 1e6
                overrides = [
                    f"data.path={data_dir}",
                    f"data.seq_len={seq_len}",
                    f"train.global_batch_size={global_batch}",
                    f"train.micro_batch_size={global_batch // world}",
                ]
                steps = max(1, 2 * (header["splits"]["train"]["tokens"] // seq_len) // global_batch)
                resume_step = rng.randrange(steps)
                for rank in ranks:
                    args = {"config": config, "overrides": overrides, "rank": rank, "world": world}
                    got = _run_worker(args | {"resume_step": resume_step})
                    measured = {f.name: got[f.name] for f in fields(DataScaleResult) if f.name in got}
                    results.append(
                        DataScaleResult(
                            **measured,
                            tokens=n_tokens,
                            shards=n_shards,
                            seq_len=seq_len,
                            global_batch=global_batch,
                            table_mb=table_mb,
                            baseline_rss_mb=baseline,
                        )
                    )
                shutil.rmtree(data_dir)
        return results
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


GOAL_MB, GOAL_S = 256, 5.0
"""Per rank at 10T tokens and 1M shards: data-path memory and start + resume time."""


def format_table(results: list[DataScaleResult]) -> str:
    if not results:
        return "(no results)"
    lines = [
        f"baseline (a process importing the data path only): peak RSS {results[0].baseline_rss_mb:.0f} MB",
        f"{'tokens':>7} {'shards':>9} {'samples':>14} {'table MB':>9} {'rank':>5} "
        f"{'peak RSS MB':>12} {'+ over base':>12} {'imports s':>9} {'start s':>8} {'resume ms':>10} "
        f"{'next ms':>8} {'global ms':>10} {'pieces':>7}",
    ]
    for r in results:
        lines.append(
            f"{r.tokens:>7.0e} {r.shards:>9,} {r.samples:>14,} {r.table_mb:>9.1f} {r.rank:>5} "
            f"{r.peak_rss_mb:>12.0f} {r.data_rss_mb:>12.0f} {r.imports_s:>9.2f} {r.start_s:>8.2f} "
            f"{r.resume_s * 1e3:>10.2f} "
            f"{r.next_ms:>8.2f} {r.global_ms:>10.1f} {r.global_pieces:>7}"
        )
    lines.append(
        f"(world {results[0].world}, global batch {results[0].global_batch}, seq {results[0].seq_len})"
    )
    by_rank: dict[tuple[int, int], list[DataScaleResult]] = {}
    for r in results:
        by_rank.setdefault((r.shards, r.rank), []).append(r)
    for (n_shards, rank), rows in by_rank.items():
        if len(rows) < 2:
            continue
        sizes = " -> ".join(f"{r.tokens:.0e}" for r in rows)

        def growth(values: list[float]) -> str:
            return " -> ".join(f"{v / values[0]:.2f}x" for v in values)

        lines.append(
            f"growth over tokens {sizes} ({n_shards:,} shards, rank {rank}): "
            f"memory over base {growth([r.data_rss_mb for r in rows])}, "
            f"start {growth([r.start_s for r in rows])}, resume {growth([r.resume_s for r in rows])}, "
            f"next {growth([r.next_ms for r in rows])}"
        )
    for r in results:
        if r.tokens >= 10**13 and r.shards >= 10**6:
            met = r.data_rss_mb < GOAL_MB and r.start_s + r.resume_s < GOAL_S
            lines.append(
                f"goal at {r.tokens:.0e} tokens, {r.shards:,} shards, rank {r.rank}: < {GOAL_MB} MB over "
                f"base and < {GOAL_S:.0f} s start + resume: {r.data_rss_mb:.0f} MB, "
                f"{r.start_s + r.resume_s:.2f} s: {'met' if met else 'NOT met'}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
