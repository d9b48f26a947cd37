"""DeepSpeed engine: ZeRO 0-3 with optional CPU/NVMe offload, behind the same `Engine` interface.

The DeepSpeed JSON is generated from our config (or a user's file checked against it), the
optimizer is the same AdamW (same param groups, betas, eps, decay) that the torch engine builds, and
the learning rate is set by the trainer every step: DeepSpeed gets neither optimizer nor scheduler
sections, so the two engines train the same model the same way.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import Callable

import torch
from torch import nn

from dist_llm.config import Config, OptimConfig
from dist_llm.distributed import World, ensure_process_group
from dist_llm.distributed.activation_checkpointing import apply_activation_checkpointing
from dist_llm.distributed.compile import apply_compile
from dist_llm.distributed.materialize import FullTensor, fill, materialize
from dist_llm.engine.base import Batch, MicroBatches, StepResult, TokenScores
from dist_llm.engine.deepspeed_config import load_deepspeed_config, offload_device
from dist_llm.engine.deepspeed_memory import zero_memory_report
from dist_llm.engine.device import to_device
from dist_llm.engine.optim import build_adamw, param_groups
from dist_llm.errors import ConfigError
from dist_llm.metrics.phases import BACKWARD, EVAL, FORWARD, OPTIMIZER, phase
from dist_llm.models import build_model
from dist_llm.models.decoder import label_logprobs
from dist_llm.seeding import derive_seed

# DeepSpeed's ZeRO calls these renamed torch collectives every step, and torch warns each time:
# hundreds of lines per run that no user can act on.
_DEPRECATED_COLLECTIVES = (
    r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` "
    "is deprecated"
)


class DeepSpeedEngine:
    checkpoint_format = "deepspeed"

    def __init__(
        self,
        cfg: Config,
        world: World,
        pretrained: FullTensor | None = None,
        prepare: Callable[[nn.Module], None] | None = None,
    ) -> None:
        import deepspeed

        warnings.filterwarnings("ignore", message=_DEPRECATED_COLLECTIVES, category=FutureWarning)
        ensure_process_group()
        self.world = world
        self.ds_config = load_deepspeed_config(cfg, world.size)
        self.dims = cfg.engine.dims(world.size, world.rank)
        # The same initial weights as the torch engine (written unit by unit from the seed).
        seed = derive_seed(cfg.train.seed, "init")
        with torch.device("meta"):
            skeleton = build_model(cfg.model)
        if self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
            model = _build_partitioned(cfg, self.ds_config)
            fill(model, skeleton, world.device, seed, pretrained, _gather_for_write)
        else:  # ZeRO 0-2 keep the weights whole on every rank anyway
            with torch.device("meta"):
                model = build_model(cfg.model)
            materialize(model, skeleton, world.device, seed, pretrained)
        if prepare is not None:
            prepare(model)
        if cfg.engine.activation_checkpointing:
            apply_activation_checkpointing(model)
        if cfg.engine.compile:
            apply_compile(model)
        self.model = model
        optimizer = _build_optimizer(
            self.model,
            cfg.optim,
            world.device,
            offload=offload_device(self.ds_config, "offload_optimizer") != "none",
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        if self.engine.zero_optimization_stage() == 0 and not all(
            g.get("fused") for g in optimizer.param_groups
        ):
            # Stage 0 skips a non-finite step through the fused kernel's found_inf input.
            raise ConfigError(
                f"DeepSpeed ZeRO stage 0 on {world.device.type} has no fused AdamW to skip "
                "non-finite steps with; use engine.zero_stage >= 1"
            )

    @property
    def zero_optimizer(self) -> torch.optim.Optimizer:
        """DeepSpeed's optimizer wrapper (ZeRO partitions, or the bare optimizer at stage 0 fp32)."""
        return self.engine.optimizer

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        accumulation = self.engine.gradient_accumulation_steps()
        if len(micro_batches) != accumulation:
            raise ConfigError(
                f"{len(micro_batches)} micro-batches per step but DeepSpeed's "
                f"gradient_accumulation_steps={accumulation}; make the JSON agree with "
                "train.global_batch_size / (train.micro_batch_size x data-parallel ranks)"
            )
        for group in self.zero_optimizer.param_groups:
            group["lr"] = lr
        device = self.world.device
        loss = torch.zeros((), device=device)
        unsharded_norm = None
        skipped_before = self.engine.skipped_steps
        for i, batch in enumerate(micro_batches):
            with phase(FORWARD, device):
                micro_loss = self.engine(**to_device(batch, device))
            # backward scales by 1/accumulation; step() applies the optimizer on the last micro-batch.
            with phase(BACKWARD, device):  # ZeRO reduces (and stage 3 gathers) gradients in here
                self.engine.backward(micro_loss)
            with phase(OPTIMIZER, device):
                if i == len(micro_batches) - 1 and self.engine.zero_optimization_stage() == 0:
                    unsharded_norm = self._stage0_norm()
                self.engine.step()
                vars(self.zero_optimizer).pop("found_inf", None)
            loss += micro_loss.detach().float()
        if unsharded_norm is not None:
            skipped = ~torch.isfinite(unsharded_norm)  # stage 0: the fused AdamW skipped it (found_inf)
            norm = unsharded_norm
        else:
            # ZeRO 1-3 skip a step whose gradient norm is not finite themselves and count it
            # (they decide on the host; those reads are DeepSpeed's own).
            skipped = self.engine.skipped_steps > skipped_before
            # None when a user's JSON turns off zero_optimization.compute_grad_norm.
            norm = torch.as_tensor(float("nan") if (n := self.engine.get_global_grad_norm()) is None else n)
        return StepResult(loss=loss / len(micro_batches), skipped=skipped, grad_norm=norm)

    def _stage0_norm(self) -> torch.Tensor:
        """Without ZeRO DeepSpeed clips but neither keeps the norm nor skips non-finite steps; the
        gradients are all-reduced here, so the norm is global and every rank decides alike. Our
        fused AdamW skips on the device when told (`found_inf`), as in the torch engine: no host read."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        self.zero_optimizer.found_inf = (~torch.isfinite(norm)).float()
        return norm

    @torch.no_grad()
    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        # Through the DeepSpeed engine: under ZeRO-3 its hooks gather the sharded parameters.
        self.engine.eval()
        with phase(EVAL, self.world.device):
            loss = self.engine(**to_device(batch, self.world.device))
        self.engine.train()
        return loss.detach().float()

    @torch.no_grad()
    def score_tokens(self, batch: Batch) -> TokenScores:
        self.engine.eval()
        batch = to_device(batch, self.world.device)
        with phase(EVAL, self.world.device):
            picked, best = label_logprobs(self.engine(input_ids=batch["input_ids"]), batch["labels"])
        self.engine.train()
        return TokenScores.from_logprobs(picked, best, batch["labels"])

    def memory_report(self) -> dict[str, int]:
        return zero_memory_report(self.model, self.zero_optimizer, self.engine.zero_optimization_stage())


def _build_partitioned(cfg: Config, ds_config: dict) -> nn.Module:
    """ZeRO-3: each module's parameters are partitioned across the ranks as soon as the module is
    built, so no rank ever holds more than one module whole (their values are written by `fill`)."""
    import deepspeed

    deepspeed.init_distributed(dist_init_required=False, verbose=False)  # wraps our process group
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        return build_model(cfg.model)


def _gather_for_write(tensors: list[torch.Tensor]) -> AbstractContextManager:
    """ZeRO-3 parameters, whole while `fill` writes them; every rank writes the same values, and
    rank 0's are what DeepSpeed partitions again on exit. Buffers are never partitioned."""
    import deepspeed

    return deepspeed.zero.GatheredParameters([t for t in tensors if hasattr(t, "ds_id")], modifier_rank=0)


def _build_optimizer(
    model: nn.Module, o: OptimConfig, device: torch.device, offload: bool
) -> torch.optim.Optimizer:
    """The torch engine's AdamW; with optimizer offload DeepSpeed requires its CPU Adam kernel,
    built here in AdamW mode (decoupled decay) on the same param groups."""
    if not offload:
        return build_adamw(model, o, device)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(
        param_groups(model, o),
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        weight_decay=o.weight_decay,
        adamw_mode=True,
    )
