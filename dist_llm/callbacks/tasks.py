"""Downstream task accuracy of the model being trained (`eval.tasks`, scored as `tasks.scoring`
describes) every `eval.tasks_interval` steps, at step 0 (the baseline, near chance) and at the end
(unless the run was preempted)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from data_prep.manifest import Manifest
from data_prep.tokenizer import load_tokenizer
from dist_llm.callbacks.base import Callback
from dist_llm.data.sources import tokenizer_path
from dist_llm.log import get_logger
from dist_llm.tasks.files import read_tasks
from dist_llm.tasks.scoring import TaskSuite

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("tasks")


def document_start(manifest: Manifest) -> list[int]:
    """The tokens before a document in the training stream: the previous document's EOS, and BOS
    if prep prepended one to every document. A task's context is read as the start of a document."""
    tokenizer = manifest.tokenizer
    add_bos = manifest.header.get("args", {}).get("add_bos", False)
    return [tokenizer["eos_id"], *([tokenizer["bos_id"]] if add_bos else [])]


class TaskEvalCallback(Callback):
    def __init__(self) -> None:
        self.suite: TaskSuite | None = None
        self.last_step = -1

    def _run(self, trainer: "Trainer") -> None:
        assert self.suite is not None
        dims = trainer.dims
        started = time.perf_counter()
        results = self.suite.evaluate(
            trainer.engine.score_tokens,
            trainer.world.device,
            dims.dp_rank,
            dims.dp,
            contributes=dims.tp_rank == 0 and dims.pp_rank == 0,
        )
        self.last_step = trainer.step
        trainer.emit({"step": trainer.step, **results, "task/seconds": time.perf_counter() - started})

    def on_train_start(self, trainer: "Trainer") -> None:
        cfg = trainer.cfg
        data_path = cfg.data.source_list()[0].path
        tasks = read_tasks(cfg.eval, data_path)
        self.suite = TaskSuite(
            tasks,
            load_tokenizer(tokenizer_path(data_path)),
            document_start(trainer.data.manifest),
            cfg.data.seq_len,
            cfg.train.micro_batch_size,
            trainer.dims.tp,
        )
        log.info(
            "tasks: %s",
            ", ".join(f"{t.name} ({len(t.examples)} {t.kind.replace('_', '-')} examples)" for t in tasks),
        )
        if trainer.step == 0 and cfg.eval.tasks_interval:
            self._run(trainer)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        interval = trainer.cfg.eval.tasks_interval
        # A preempted run's grace period is for its checkpoint; the resumed run scores the tasks.
        if interval and trainer.step % interval == 0 and not trainer.stop_requested:
            self._run(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.last_step != trainer.step and not trainer.stop_requested:
            self._run(trainer)
