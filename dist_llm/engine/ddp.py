"""torch DistributedDataParallel engine: full replica per rank, gradients all-reduced once per step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.serialize import from_bytes, snapshot
from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.engine.base import Batch, MicroBatches, ReadPart, StepResult
from dist_llm.engine.optim import build_adamw, step_if_finite
from dist_llm.metrics.phases import BACKWARD, FORWARD, OPTIMIZER, phase

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZER_FILE = "optimizer.pt"


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()


class DDPEngine:
    def __init__(self, model: nn.Module, cfg: Config, world: World) -> None:
        self.model = model.to(world.device)
        self.device = world.device
        self.world = world
        self.precision = cfg.train.precision
        self.grad_clip = cfg.optim.grad_clip
        # Gloo on CPU has no device ids; bucket views avoid an extra gradient copy per step.
        self.wrapped: nn.Module = (
            DistributedDataParallel(self.model, gradient_as_bucket_view=True,
                                    device_ids=[world.local_rank] if world.device.type == "cuda" else None)
            if world.size > 1 else self.model)
        self.optimizer = build_adamw(self.model, cfg.optim, world.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def _forward_backward(self, batch: Batch, sync_grads: bool, loss_scale: float) -> torch.Tensor:
        batch = to_device(batch, self.device)
        no_sync = (self.wrapped.no_sync() if isinstance(self.wrapped, DistributedDataParallel)
                   and not sync_grads else contextlib.nullcontext())
        with no_sync:
            with phase(FORWARD, self.device), autocast(self.device, self.precision):
                loss = self.wrapped(**batch)
            with phase(BACKWARD, self.device):  # with sync_grads, DDP's all-reduce runs inside
                self.scaler.scale(loss * loss_scale).backward()
        return loss.detach()

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            # Gradients are all-reduced only with the last micro-batch of the step.
            loss += self._forward_backward(batch, sync_grads=i == len(micro_batches) - 1,
                                           loss_scale=1.0 / len(micro_batches))
        with phase(OPTIMIZER, self.device):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.scaler.unscale_(self.optimizer)
            max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
            # No host sync: the clip factor is clamped on the device (to 1 when max_norm is inf).
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            loss = loss / len(micro_batches)
            skipped = self._step_if_finite(loss, grad_norm)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, grad_norm=grad_norm.detach(), skipped=skipped)

    def _step_if_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool | torch.Tensor:
        """Apply the optimizer unless the loss or gradients are not finite; returns whether the
        step was skipped."""
        if self.scaler.is_enabled():
            # fp16: gradient overflow is the loss scaler's business (it skips and lowers the scale
            # itself); only the loss is checked here, with a host sync.
            skipped = not bool(torch.isfinite(loss))
            if not skipped:
                self.scaler.step(self.optimizer)
            return skipped
        return step_if_finite(self.optimizer, torch.isfinite(loss) & torch.isfinite(grad_norm))

    @torch.no_grad()
    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        self.model.eval()
        with autocast(self.device, self.precision):
            loss = self.model(**to_device(batch, self.device))
        self.model.train()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def checkpoint_parts(self) -> dict[str, Any]:
        # Replicas are identical: rank 0's optimizer is the optimizer. The weights are the
        # checkpoint's consolidated model file, shared with eval and export.
        if not self.world.is_main:
            return {}
        state = self.state_dict()
        del state["model"]
        return {OPTIMIZER_FILE: snapshot(state)}

    def load_checkpoint_parts(self, read: ReadPart, names: list[str]) -> None:
        state = from_bytes(read(OPTIMIZER_FILE), self.device)
        state["model"] = from_bytes(read(layout.MODEL), self.device)
        self.load_state_dict(state)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.model.state_dict() if self.world.is_main else None

    def memory_report(self) -> dict[str, int]:
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        grads = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        optim = sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                    for t in s.values() if torch.is_tensor(t))
        return {"param_bytes": params, "grad_bytes": grads, "optimizer_bytes": optim}
