"""torch DistributedDataParallel engine: full replica per rank, gradients all-reduced once per step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.engine.optim import build_adamw

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DDPEngine:
    def __init__(self, model: nn.Module, cfg: Config, world: World) -> None:
        self.model = model.to(world.device)
        self.device = world.device
        self.precision = cfg.train.precision
        self.grad_clip = cfg.optim.grad_clip
        # Gloo on CPU has no device ids; bucket views avoid an extra gradient copy per step.
        self.wrapped: nn.Module = (
            DistributedDataParallel(self.model, gradient_as_bucket_view=True,
                                    device_ids=[world.local_rank] if world.device.type == "cuda" else None)
            if world.size > 1 else self.model)
        self.optimizer = build_adamw(self.model, cfg.optim, world.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward_backward(self, input_ids: torch.Tensor, labels: torch.Tensor, sync_grads: bool,
                         loss_scale: float) -> torch.Tensor:
        input_ids = input_ids.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        no_sync = (self.wrapped.no_sync() if isinstance(self.wrapped, DistributedDataParallel)
                   and not sync_grads else contextlib.nullcontext())
        with no_sync:
            with self._autocast():
                loss = self.wrapped(input_ids, labels=labels)
            self.scaler.scale(loss * loss_scale).backward()
        return loss.detach()

    def step(self, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach()

    @torch.no_grad()
    def evaluate_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self._autocast():
            loss = self.model(input_ids.to(self.device), labels=labels.to(self.device))
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

    def memory_report(self) -> dict[str, int]:
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        grads = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        optim = sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                    for t in s.values() if torch.is_tensor(t))
        return {"param_bytes": params, "grad_bytes": grads, "optimizer_bytes": optim}
