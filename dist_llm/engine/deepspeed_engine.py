"""DeepSpeed engine: ZeRO 0-3 with optional CPU/NVMe offload, behind the same `Engine` interface.

The DeepSpeed JSON is generated from our config (or a user's file checked against it), the
optimizer is the same AdamW (same param groups, betas, eps, decay) that the DDP engine builds, and
the learning rate is set by the trainer every step: DeepSpeed gets neither optimizer nor scheduler
sections, so the two engines train the same model the same way.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch
from torch import nn

from dist_llm.config import Config, OptimConfig
from dist_llm.distributed import World, ensure_process_group
from dist_llm.engine.base import Batch, MicroBatches, ReadPart, StepResult
from dist_llm.engine.ddp import to_device
from dist_llm.engine.deepspeed_checkpoint import PREFIX, load_engine_files, read_engine_files
from dist_llm.engine.deepspeed_config import load_deepspeed_config, offload_device
from dist_llm.engine.deepspeed_memory import zero_memory_report
from dist_llm.engine.optim import build_adamw, param_groups
from dist_llm.errors import ConfigError
from dist_llm.metrics.phases import BACKWARD, FORWARD, OPTIMIZER, phase

_TAG = "state"  # DeepSpeed's checkpoint tag; our step directories already tell checkpoints apart
# DeepSpeed's ZeRO calls these renamed torch collectives every step, and torch warns each time:
# hundreds of lines per run that no user can act on.
_DEPRECATED_COLLECTIVES = (r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` "
                           "is deprecated")


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, cfg: Config, world: World) -> None:
        import deepspeed

        warnings.filterwarnings("ignore", message=_DEPRECATED_COLLECTIVES, category=FutureWarning)
        ensure_process_group()
        self.world = world
        self.ds_config = load_deepspeed_config(cfg, world.size)
        self.model = model.to(world.device)
        optimizer = _build_optimizer(self.model, cfg.optim, world.device,
                                     offload=offload_device(self.ds_config, "offload_optimizer") != "none")
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer,
                                                    config=self.ds_config, dist_init_required=False)

    @property
    def zero_optimizer(self) -> torch.optim.Optimizer:
        """DeepSpeed's optimizer wrapper (ZeRO partitions, or the bare optimizer at stage 0 fp32)."""
        return self.engine.optimizer

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        accumulation = self.engine.gradient_accumulation_steps()
        if len(micro_batches) != accumulation:
            raise ConfigError(f"{len(micro_batches)} micro-batches per step but DeepSpeed's "
                              f"gradient_accumulation_steps={accumulation}; make the JSON agree with "
                              "train.global_batch_size / (train.micro_batch_size x data-parallel ranks)")
        for group in self.zero_optimizer.param_groups:
            group["lr"] = lr
        device = self.world.device
        loss = torch.zeros((), device=device)
        unsharded_norm = None
        for i, batch in enumerate(micro_batches):
            with phase(FORWARD, device):
                micro_loss = self.engine(**to_device(batch, device))
            # backward scales by 1/accumulation; step() applies the optimizer on the last micro-batch.
            with phase(BACKWARD, device):  # ZeRO reduces (and stage 3 gathers) gradients in here
                self.engine.backward(micro_loss)
            with phase(OPTIMIZER, device):
                if i == len(micro_batches) - 1 and self.engine.zero_optimization_stage() == 0:
                    # Without ZeRO DeepSpeed clips but does not keep the norm; grads are all-reduced here.
                    grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                    unsharded_norm = torch.nn.utils.get_total_norm(grads).item()
                self.engine.step()
            loss += micro_loss.detach().float()
        norm = self.engine.get_global_grad_norm() if unsharded_norm is None else unsharded_norm
        # None when a user's JSON turns off zero_optimization.compute_grad_norm.
        return StepResult(loss=loss / len(micro_batches),
                          grad_norm=torch.as_tensor(float("nan") if norm is None else float(norm)))

    @torch.no_grad()
    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        # Through the DeepSpeed engine: under ZeRO-3 its hooks gather the sharded parameters.
        self.engine.eval()
        loss = self.engine(**to_device(batch, self.world.device))
        self.engine.train()
        return loss.detach().float()

    def checkpoint_parts(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="dist_llm_ds_save_") as tmp:
            self.engine.save_checkpoint(tmp, tag=_TAG, save_latest=False)
            return read_engine_files(os.path.join(tmp, _TAG))

    def load_checkpoint_parts(self, read: ReadPart, names: list[str]) -> None:
        load_engine_files(self.engine, read, [n for n in names if n.startswith(PREFIX)], _TAG)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """fp32 master weights gathered from every ZeRO partition, keyed like the bare model.

        Collective: every rank gathers each parameter in the same order."""
        from deepspeed.utils import safe_get_full_fp32_param

        full: dict[int, torch.Tensor] = {}
        for param in self.model.parameters():  # each shared (tied) parameter once
            master = safe_get_full_fp32_param(param)
            full[id(param)] = (master if master is not None else param.detach()).float().cpu().clone()
        if not self.world.is_main:
            return None
        out: dict[str, torch.Tensor] = {}
        for key, value in self.model.state_dict(keep_vars=True).items():
            if id(value) in full:
                out[key] = full[id(value)]
            else:  # a buffer; bf16 DeepSpeed casts float buffers to bf16 along with the weights
                out[key] = value.detach().cpu().clone()
                if out[key].is_floating_point():
                    out[key] = out[key].float()
        return out

    def memory_report(self) -> dict[str, int]:
        return zero_memory_report(self.model, self.zero_optimizer, self.engine.zero_optimization_stage())



def _build_optimizer(model: nn.Module, o: OptimConfig, device: torch.device,
                     offload: bool) -> torch.optim.Optimizer:
    """The DDP engine's AdamW; with optimizer offload DeepSpeed requires its CPU Adam kernel,
    built here in AdamW mode (decoupled decay) on the same param groups."""
    if not offload:
        return build_adamw(model, o, device)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(param_groups(model, o), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            weight_decay=o.weight_decay, adamw_mode=True)
