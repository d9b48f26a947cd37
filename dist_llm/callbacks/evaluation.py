"""Periodic validation loss and perplexity on the held-out split(s), averaged over all tokens seen.

A mixture is evaluated on each source's validation split (`val_loss/<name>`); `val_loss` is then
the weight-averaged loss, i.e. the loss on the training mix (see `evaluate.validation_losses`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.data.batch import Collator
from dist_llm.data.mixture import Source
from dist_llm.evaluate import perplexity, validation_losses
from dist_llm.log import get_logger

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("eval")


class EvalCallback(Callback):
    def __init__(self, sources: list[Source], collator: Collator) -> None:
        self.sources = sources
        self.collator = collator
        self.last_step = -1

    def _run(self, trainer: "Trainer") -> None:
        t = trainer.cfg.train
        # Every rank adds its tokens; TP/PP peers of one replica add the same loss and count, so the
        # token-weighted mean over all ranks equals the mean over data-parallel replicas.
        losses = validation_losses(
            trainer.engine.evaluate_loss,
            self.sources,
            self.collator,
            t.seed,
            t.micro_batch_size,
            t.eval_batches,
            trainer.dims.dp_rank,
            trainer.dims.dp,
        )
        per_source = {k: v for k, v in losses.items() if k.startswith("val_loss/")}
        self.last_step = trainer.step
        trainer.emit(
            {
                "step": trainer.step,
                "val_loss": losses["val_loss"],
                "val_ppl": perplexity(losses["val_loss"]),
                **per_source,
            }
        )
        if per_source:  # the console line shows val_loss; the per-source values go here
            log.info("step %d | %s", trainer.step, " | ".join(f"{k} {v:.4f}" for k, v in per_source.items()))

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
