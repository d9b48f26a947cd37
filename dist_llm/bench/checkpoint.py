"""Checkpoint cost, measured in one run against one destination with the same engine state:

- how long the training loop is blocked per checkpoint with the asynchronous writer (snapshot to
  bytes, then upload in the background) vs a synchronous save (snapshot + upload + commit);
- upload MB/s of our writer (part files + rank note + manifest + marker + `latest`, with fsync
  locally and retries on object stores) vs a plain fsspec `pipe_file` of the same bytes, the
  baseline of what the storage client can do.

The state is a real torch engine (model + AdamW state after one step) on this process, sized to
about `size_mb` megabytes of checkpoint.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass

import torch

from dist_llm.checkpoint.storage import _fs, join, remove_tree
from dist_llm.checkpoint.writer import CheckpointWriter, layout_shards
from dist_llm.config import CheckpointConfig, load_config
from dist_llm.distributed import World
from dist_llm.engine.torch_engine import TorchEngine
from dist_llm.errors import CheckpointError
from dist_llm.models import count_params

WORLD = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two fp32 moments


@dataclass
class CheckpointBenchResult:
    destination: str
    checkpoint_mb: float
    sync_blocked_s: float
    async_blocked_s: float
    blocked_ratio: float
    writer_mb_per_s: float
    plain_mb_per_s: float
    writer_vs_plain: float
    repeats: int


def build_engine(size_mb: float) -> TorchEngine:
    """A 2-layer decoder, widened in steps of 64 until weights + optimizer state come to about
    `size_mb` MB, after one optimizer step (AdamW's moments exist only after a step)."""
    cfg = load_config(
        None,
        [
            "model.vocab_size=1024",
            "model.n_layers=2",
            "model.n_heads=4",
            "model.max_seq_len=32",
            "optim.warmup_steps=0",
            "model.d_model=64",
        ],
    )
    while count_params(cfg.model) * BYTES_PER_PARAM < size_mb * 1e6:
        cfg.model.d_model += 64
    engine = TorchEngine(cfg, WORLD)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 32))
    engine.train_step([{"input_ids": ids, "labels": ids}], lr=1e-4)
    return engine


def _timed_save(writer: CheckpointWriter, step: int, engine: TorchEngine) -> tuple[float, float]:
    """(seconds the caller was blocked, seconds until the checkpoint was committed)."""
    start = time.perf_counter()
    blocked = writer.save(step, engine, {"step": step})
    writer.wait()
    total = time.perf_counter() - start
    if blocked is None or step not in writer.committed_steps:
        raise CheckpointError(
            f"benchmark checkpoint step {step} under {writer.root} did not commit; see the error above"
        )
    return blocked, total


def _plain_put(root: str, parts: dict[str, bytes]) -> float:
    fs, path = _fs(root)
    start = time.perf_counter()
    for name, data in parts.items():
        target = f"{path.rstrip('/')}/{name}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # local only; a no-op in a bucket
        fs.pipe_file(target, data)
    return time.perf_counter() - start


def checkpoint_bytes(engine: TorchEngine) -> dict[str, bytes]:
    """The engine's checkpoint files as the writer lays them out (one rank: one shard file)."""
    files = layout_shards(engine.state_dict(), group=None)
    return {name: data if isinstance(data, bytes) else b"".join(data) for name, data in files.items()}


def bench_checkpoint(uri: str | None, size_mb: float, repeats: int) -> CheckpointBenchResult:
    engine = build_engine(size_mb)
    parts = checkpoint_bytes(engine)
    mb = sum(map(len, parts.values())) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        root = join(uri or tmp, f"bench-checkpoint-{uuid.uuid4().hex[:8]}")
        try:
            sync = CheckpointWriter(join(root, "sync"), CheckpointConfig(async_save=False), WORLD)
            streaming = CheckpointWriter(join(root, "async"), CheckpointConfig(async_save=True), WORLD)
            sync_blocked, async_blocked, upload_s, plain_s = [], [], [], []
            for i in range(repeats):  # interleaved, so drift on a shared machine hits all alike
                sync_blocked.append(_timed_save(sync, i + 1, engine)[0])
                blocked, total = _timed_save(streaming, i + 1, engine)
                async_blocked.append(blocked)
                upload_s.append(total - blocked)
                plain_s.append(_plain_put(join(root, f"plain-{i}"), parts))
        finally:
            remove_tree(root)
    sync_b, async_b = statistics.median(sync_blocked), statistics.median(async_blocked)
    writer_rate, plain_rate = mb / statistics.median(upload_s), mb / statistics.median(plain_s)
    return CheckpointBenchResult(
        destination=uri or "local temp dir",
        checkpoint_mb=mb,
        sync_blocked_s=sync_b,
        async_blocked_s=async_b,
        blocked_ratio=async_b / sync_b,
        writer_mb_per_s=writer_rate,
        plain_mb_per_s=plain_rate,
        writer_vs_plain=writer_rate / plain_rate,
        repeats=repeats,
    )


def format_table(results: list[CheckpointBenchResult]) -> str:
    lines = [
        "destination | checkpoint MB | sync save: blocked s | async: blocked s | async/sync "
        "(goal <= 10%) | writer MB/s | plain put MB/s | writer/plain",
        "---|---|---|---|---|---|---|---",
    ]
    for r in results:
        lines.append(
            f"{r.destination} | {r.checkpoint_mb:.1f} | {r.sync_blocked_s:.3f} | "
            f"{r.async_blocked_s:.3f} | {100 * r.blocked_ratio:.1f}% | {r.writer_mb_per_s:.0f} | "
            f"{r.plain_mb_per_s:.0f} | {r.writer_vs_plain:.2f}x"
        )
    return "\n".join(lines)
