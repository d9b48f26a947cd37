"""The training loop: fetch, forward/backward over micro-batches, step, and hand off to callbacks.

Everything else (metrics, evaluation, checkpoints) is a callback, so the loop stays readable.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from data_prep.manifest import Manifest
from dist_llm.callbacks import Callback, CheckpointCallback, EvalCallback, MetricsCallback, TaskEvalCallback
from dist_llm.callbacks.nonfinite import NonFiniteCallback
from dist_llm.callbacks.profiling import ProfilingCallback
from dist_llm.callbacks.signals import PreemptionCallback
from dist_llm.callbacks.stragglers import StragglerCallback
from dist_llm.callbacks.watchdog import HangWatchdog
from dist_llm.checkpoint.restore import restore_newest
from dist_llm.config import Config
from dist_llm.data.sources import open_training_data, train_batches
from dist_llm.distill import attach_teacher
from dist_llm.distributed import World
from dist_llm.engine import build_engine
from dist_llm.log import get_logger
from dist_llm.metrics.phases import DATA, STEP, phase
from dist_llm.models import count_params
from dist_llm.precision import resolve_precision
from dist_llm.pretrained import adopt_pretrained
from dist_llm.schedule import lr_at
from dist_llm.seeding import derive_seed

log = get_logger("trainer")


def fill_vocab_size(cfg: Config, manifest: Manifest) -> None:
    """A model config with vocab_size 0 takes the dataset tokenizer's vocabulary."""
    vocab = manifest.tokenizer["vocab_size"]
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab


class Trainer:
    def __init__(self, cfg: Config, world: World, callbacks: list[Callback] | None = None) -> None:
        self.cfg = cfg
        cfg.train.precision = resolve_precision(cfg, world.device)  # concrete from here on
        self.world = world
        self.data = open_training_data(cfg.data)
        fill_vocab_size(cfg, self.data.manifest)
        pretrained = None
        if cfg.model.init_from:
            cfg.model, pretrained = adopt_pretrained(
                cfg.model, self.data.manifest.tokenizer["vocab_size"], cfg.data.seq_len
            )
        cfg.model.validate()
        teacher = (lambda model: attach_teacher(model, cfg, world)) if cfg.distill.teacher else None
        self.engine = build_engine(
            cfg, world, pretrained.__getitem__ if pretrained is not None else None, prepare=teacher
        )
        log.info(
            "model: %s parameters (%s non-embedding), %d rank(s), engine %s %s",
            f"{count_params(cfg.model):,}",
            f"{count_params(cfg.model, non_embedding=True):,}",
            world.size,
            cfg.engine.type,
            self.engine.dims,
        )
        # Per-rank stream for dropout and sampling; distinct per rank, reproducible per run.
        torch.manual_seed(derive_seed(cfg.train.seed, f"rank{world.rank}"))
        # Ranks of one tensor/pipeline-parallel group read the same data: slice by data-parallel rank.
        self.dims = self.engine.dims
        self.batches = train_batches(cfg, self.data, self.dims.dp_rank, self.dims.dp)
        # The watchdog first: it watches from the evaluation at step 0 to the final checkpoint
        # (teardown runs in reverse) and is closed first. Then preemption: its handlers are
        # restored after the final checkpoint is written.
        self.callbacks = [
            HangWatchdog(),
            PreemptionCallback(),
            NonFiniteCallback(),
            MetricsCallback(),
            EvalCallback(self.data.validation, self.data.collator),
            *([TaskEvalCallback()] if cfg.eval.tasks else []),
            CheckpointCallback(),
            ProfilingCallback(),
            StragglerCallback(),
            *(callbacks or []),
        ]
        self.stop_requested = False
        self.step = 0
        self.history: list[dict[str, Any]] = []

    @property
    def stop_step(self) -> int:
        exit_at = self.cfg.train.exit_at_step
        return min(exit_at, self.cfg.train.max_steps) if exit_at else self.cfg.train.max_steps

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.global_batch_size * self.cfg.data.seq_len

    def state(self) -> dict[str, Any]:
        """Trainer part of a checkpoint: small, JSON, independent of the world size."""
        return {
            "step": self.step,
            "data": asdict(self.batches.state()),
            "config": self.cfg.to_dict(),
            "world_size": self.world.size,
            "consumed_tokens": self.step * self.tokens_per_step,
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }

    def resume(self) -> None:
        restored = restore_newest(
            self.cfg.checkpoint.resume, self.cfg.checkpoint_dir, self.engine, self.world
        )
        if restored is None:
            return
        uri, saved = restored
        self.batches.load_state(saved["data"])
        self.step = saved["step"]
        for cb in self.callbacks:
            cb.load_state_dict(saved.get("callbacks", {}).get(type(cb).__name__, {}))
        log.info(
            "resumed from %s at step %d (saved on %d ranks, now %d)",
            uri,
            self.step,
            saved["world_size"],
            self.world.size,
        )

    def rollback(self) -> bool:
        """Reload weights and optimizer from the newest committed checkpoint, keeping the step count
        and the data position: the batches that diverged are not fed again. False if none exists."""
        restored = restore_newest("auto", self.cfg.checkpoint_dir, self.engine, self.world)
        if restored is None:
            return False
        log.warning(
            "rolled back weights and optimizer to %s; continuing at step %d with fresh data",
            restored[0],
            self.step,
        )
        return True

    def emit(self, record: dict[str, Any]) -> None:
        """Log a finished record (train step or validation) through every callback's sinks."""
        self.history.append(record)
        for cb in self.callbacks:
            cb.on_metrics(self, record)

    def fit(self) -> list[dict[str, Any]]:
        self.resume()
        self.history.clear()
        try:
            return self._run()
        finally:  # also on errors: e.g. the SIGTERM handler must not outlive the run
            for cb in self.callbacks:
                cb.close(self)
            self.data.close()

    def _run(self) -> list[dict[str, Any]]:
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.step < self.stop_step and not self.stop_requested:
            start = time.perf_counter()
            with phase(STEP, self.world.device):
                with phase(DATA, self.world.device):
                    micro_batches = self.batches.next_step()
                data_time = time.perf_counter() - start
                lr = lr_at(self.step, self.cfg.optim, self.cfg.train.max_steps)
                result = self.engine.train_step(micro_batches, lr)
            self.step += 1
            metrics = {
                "step": self.step,
                "loss": result.loss,
                "lr": lr,
                "skipped": result.skipped,
                "grad_norm": result.grad_norm,
                "tokens": self.tokens_per_step,
                "consumed_tokens": self.step * self.tokens_per_step,
                "step_time_s": time.perf_counter() - start,
                "data_time_s": data_time,
            }
            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
        for cb in reversed(self.callbacks):  # teardown in reverse: sinks close after the final eval
            cb.on_train_end(self)
        return self.history
