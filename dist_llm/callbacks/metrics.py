"""Turns per-step tensors into logged numbers: loss averaged over ranks, tokens/s, MFU, ETA, memory."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.callbacks.base import Callback
from dist_llm.data.collate import target_length
from dist_llm.distributed import all_reduce_sum
from dist_llm.log import get_logger
from dist_llm.metrics.peak import peak_tflops
from dist_llm.metrics.sinks import ConsoleSink, JsonlSink, Sink
from dist_llm.metrics.tensorboard_sink import TensorBoardSink
from dist_llm.metrics.wandb_sink import WandbSink
from dist_llm.models import flops_per_token

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("metrics")


def rss_bytes() -> int | None:
    """This process's resident set size now, from /proc (Linux; None elsewhere): one tiny read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def memory_now(device: torch.device) -> dict[str, int]:
    """This rank's host RSS and, on CUDA, the allocator's peak: counters only, no device sync."""
    memory: dict[str, int] = {}
    rss = rss_bytes()
    if rss is not None:
        memory["memory_rss_bytes"] = rss
    if device.type == "cuda":
        memory["memory_gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return memory


class MetricsCallback(Callback):
    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.peak = 0.0
        self.flops_per_token = 0.0
        self.memory_logged = False

    def on_train_start(self, trainer: "Trainer") -> None:
        cfg = trainer.cfg
        self.flops_per_token = flops_per_token(cfg.model, cfg.data.seq_len, target_length(cfg.data))
        self.peak, source = peak_tflops(trainer.world.device, cfg.train.precision, cfg.logging.peak_tflops)
        log.info(
            "MFU is stated against %.2f TFLOP/s per device (%s); %.3g FLOPs/token",
            self.peak,
            source,
            self.flops_per_token,
        )
        if trainer.world.is_main:
            self.sinks.append(ConsoleSink(cfg.train.max_steps))
            if cfg.logging.jsonl:
                self.sinks.append(JsonlSink(os.path.join(cfg.logging.run_dir, "metrics.jsonl")))
            if cfg.logging.wandb.enabled:
                self.sinks.append(WandbSink(cfg, resumed=trainer.step > 0))
            if cfg.logging.tensorboard.enabled:
                self.sinks.append(TensorBoardSink(cfg.logging.run_dir, resumed_step=trainer.step))

    def on_step_end(self, trainer: "Trainer", m: dict[str, Any]) -> None:
        step = m["step"]
        if step % trainer.cfg.train.log_interval and step != trainer.stop_step:
            return
        loss = all_reduce_sum(m["loss"].float().reshape(1).clone()).item() / trainer.world.size
        tokens_per_s = m["tokens"] / m["step_time_s"]
        per_device = tokens_per_s / trainer.world.size
        remaining = trainer.stop_step - step
        record = {
            "step": step,
            "loss": loss,
            "lr": m["lr"],
            "grad_norm": float(m["grad_norm"]),
            "tokens_per_s": tokens_per_s,
            "mfu": per_device * self.flops_per_token / (self.peak * 1e12),
            "step_time_s": m["step_time_s"],
            "data_time_s": m["data_time_s"],
            "consumed_tokens": m["consumed_tokens"],
            "eta_s": remaining * m["step_time_s"],
            "peak_tflops": self.peak,
            "threads_per_rank": torch.get_num_threads(),
            **memory_now(trainer.world.device),
            # Mixtures: cumulative tokens per source, computed from the data state (so exact after a resume).
            **{
                f"tokens_src/{name}": n * trainer.cfg.data.seq_len
                for name, n in trainer.batches.source_samples().items()
            },
        }
        if not self.memory_logged:
            # After the first step, when lazily created optimizer state exists: rank 0's bytes.
            memory = trainer.engine.memory_report()
            log.info("memory per rank (bytes): %s", memory)
            record.update(memory)
            self.memory_logged = True
        trainer.emit(record)
        if not math.isfinite(loss):
            log.warning("non-finite loss %s at step %d", loss, step)

    def on_metrics(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def on_train_end(self, trainer: "Trainer") -> None:
        consumed = trainer.batches.source_samples()
        if consumed:
            total = sum(consumed.values())
            seq_len = trainer.cfg.data.seq_len
            log.info(
                "tokens per source: %s",
                ", ".join(f"{name} {n * seq_len:,} ({100 * n / total:.1f}%)" for name, n in consumed.items()),
            )
        for sink in self.sinks:
            sink.close()
        self.sinks.clear()

    def close(self, trainer: "Trainer") -> None:
        for sink in self.sinks:  # still open: training raised before on_train_end
            sink.close(failed=True)
        self.sinks.clear()
