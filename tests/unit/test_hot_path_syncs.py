"""Steps that neither log nor checkpoint never wait for the device: nothing in the engine's step
or the callbacks after it turns a tensor into a Python value. The one sanctioned read is
`DeferredRead.item` (a flag from the step before, copied to host behind an event recorded then),
so the stop signal and the non-finite flag are still acted on, a step late."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.deferred import DeferredRead
from dist_llm.trainer import Trainer
from tests.conftest import make_trainer

# What waits for the device when the tensor lives on a GPU.
HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.tolist,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.deferred = 0
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not self.paused:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


class WatchSteps(Callback):
    """Counts host reads from the start of each `engine.train_step` to the end of the last callback
    (this one is added last); reads through `DeferredRead.item` are counted apart."""

    def __init__(self) -> None:
        self.mode: CountHostReads | None = None
        self.reads: dict[int, list[str]] = {}
        self.deferred: dict[int, int] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        step = trainer.engine.train_step

        def watched(*args, **kwargs):
            self.mode = CountHostReads()
            self.mode.__enter__()
            return step(*args, **kwargs)

        trainer.engine.train_step = watched

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        assert self.mode is not None
        self.mode.__exit__(None, None, None)
        self.reads[trainer.step], self.deferred[trainer.step] = self.mode.reads, self.mode.deferred
        self.mode = None


def test_steps_between_logs_and_checkpoints_read_nothing_from_the_device(tmp_path, dataset, monkeypatch):
    watch = WatchSteps()
    item = DeferredRead.item

    def counted_apart(self: DeferredRead) -> float:
        mode = watch.mode
        if mode is None:  # at train end, outside the watched window
            return item(self)
        mode.paused, mode.deferred = True, mode.deferred + 1
        try:
            return item(self)
        finally:
            mode.paused = False

    monkeypatch.setattr(DeferredRead, "item", counted_apart)
    trainer = make_trainer(
        tmp_path, dataset, ["train.max_steps=6", "train.log_interval=100", "checkpoint.interval=0"], [watch]
    )
    trainer.fit()
    quiet = range(1, 6)  # step 6 is the last: it logs (and the final checkpoint follows)
    assert {s: watch.reads[s] for s in quiet} == {s: [] for s in quiet}
    # From step 2 on, the previous step's stop flag and skip flag are read, one each.
    assert [watch.deferred[s] for s in quiet] == [0, 2, 2, 2, 2]
