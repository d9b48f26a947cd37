"""Periodic validation loss and perplexity on the held-out split, averaged over all tokens seen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.data.loader import PackedSamples
from dist_llm.evaluate import perplexity, validation_loss

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer


class EvalCallback(Callback):
    def __init__(self, samples: PackedSamples) -> None:
        self.samples = samples
        self.last_step = -1

    def _run(self, trainer: "Trainer") -> None:
        t = trainer.cfg.train
        # Every rank adds its tokens; TP/PP peers of one replica add the same loss and count, so the
        # token-weighted mean over all ranks equals the mean over data-parallel replicas.
        loss, _ = validation_loss(trainer.engine.evaluate_loss, self.samples, t.micro_batch_size,
                                  t.eval_batches, trainer.dims.dp_rank, trainer.dims.dp)
        self.last_step = trainer.step
        trainer.emit({"step": trainer.step, "val_loss": loss, "val_ppl": perplexity(loss)})

    def on_train_start(self, trainer: "Trainer") -> None:
        # The loss at initialization is the baseline every later validation is read against.
        if trainer.step == 0 and trainer.cfg.train.eval_interval:
            self._run(trainer)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        interval = trainer.cfg.train.eval_interval
        if interval and trainer.step % interval == 0:
            self._run(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.last_step != trainer.step:
            self._run(trainer)
