"""Steps that neither log nor checkpoint never wait for the device: nothing in the engine's step
or the callbacks after it turns a tensor into a Python value. The one sanctioned read is
`DeferredRead.item` (a flag from the step before, copied to host behind an event recorded then),
so the stop signal and the non-finite flag are still acted on, a step late.

On every engine. DeepSpeed's ZeRO 1-3 decide on the host inside their own step whether the
gradients overflowed (their design, not ours to change), so there only reads made outside
DeepSpeed's code count."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
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
            self.reads.append(f"{func.__name__} from {_caller()}")
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    """The file of the first frame outside torch that led to the read."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "?"


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


ENGINES = {
    "torch": [],
    "deepspeed_zero0": ["engine.type=deepspeed", "engine.zero_stage=0"],
    "deepspeed_zero2": ["engine.type=deepspeed", "engine.zero_stage=2"],
}


@pytest.fixture(scope="module")
def own_process_group():
    """The DeepSpeed engine starts a 1-rank process group in this process (and sets torchrun's
    variables); the cases share it, and it goes with the module, so later tests start from none."""
    with pytest.MonkeyPatch.context() as env:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            env.setenv(key, "1" if key == "WORLD_SIZE" else "0")
        yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_steps_between_logs_and_checkpoints_read_nothing_from_the_device(
    tmp_path, dataset, monkeypatch, own_process_group, engine
):
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
        tmp_path,
        dataset,
        ["train.max_steps=6", "train.log_interval=100", "checkpoint.interval=0", *ENGINES[engine]],
        [watch],
    )
    trainer.fit()
    quiet = range(1, 6)  # step 6 is the last: it logs (and the final checkpoint follows)
    ours = {s: [r for r in watch.reads[s] if f"{os.sep}deepspeed{os.sep}" not in r] for s in quiet}
    assert ours == {s: [] for s in quiet}
    # From step 2 on, the previous step's stop flag and skip flag are read, one each.
    assert [watch.deferred[s] for s in quiet] == [0, 2, 2, 2, 2]
