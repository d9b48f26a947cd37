"""A small device value read one step late, so no step waits for the device or for other ranks.

`.item()` on a CUDA tensor waits for every kernel queued before it, the step just launched
included, and the host can no longer run ahead of the device. `DeferredRead` queues a copy into
pinned host memory behind the work that produces the value and records an event; read at the next
step's end, it waits for that event only, long passed by then. On CPU the value is ready at once,
except an asynchronous collective's, which is waited for at read time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class DeferredRead:
    def __init__(self, value: torch.Tensor, work: dist.Work | None = None) -> None:
        """`value`: one element. `work`: the asynchronous collective still writing `value`, if any."""
        self._value, self._work = value, work
        self._ready: torch.cuda.Event | None = None
        if value.device.type == "cuda":
            if work is not None:
                work.wait()  # NCCL: the current stream waits for the collective; the host does not
                self._work = None
            self._value = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            self._value.copy_(value, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def item(self) -> float:
        """The value, once the work queued before it (not after) has finished."""
        if self._work is not None:  # gloo: returns when every rank has contributed
            self._work.wait()
            self._work = None
        if self._ready is not None:
            self._ready.synchronize()
        return self._value.item()
