"""Torch-native DP x TP x PP engine over a (pp, dp, tp) device mesh.

Order of construction (torchtitan's): build the full model, cut this rank's pipeline stage,
`parallelize` it (tensor parallel, activation checkpointing), then average gradients over the
data-parallel group once per step. Checkpoints hold full tensors keyed like the unsharded model,
in the DDP engine's optimizer format, so runs move freely between TP/PP/DP degrees and engines.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.serialize import from_bytes, to_bytes
from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.engine.base import Batch, MicroBatches, ReadPart, StepResult
from dist_llm.engine.ddp import OPTIMIZER_FILE, autocast, to_device
from dist_llm.engine.optim import build_adamw, step_if_finite
from dist_llm.errors import CheckpointError, ConfigError
from dist_llm.metrics.phases import BACKWARD, FORWARD, FORWARD_BACKWARD, OPTIMIZER, phase
from dist_llm.parallel import parallelize, split_pipeline_stage
from dist_llm.parallel.consolidate import full_cpu, gather_to_rank0, shard_like
from dist_llm.parallel.grads import all_reduce_grads, clip_grad_norm_, local, reduce_partial_grads
from dist_llm.parallel.pipeline import Pipeline
from dist_llm.parallel_dims import ParallelDims

TIED = ("output.weight", "tok_embeddings.weight")


def optimizer_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """Parameter names of `build_adamw`'s two groups (decayed matrices, then the rest); numbered in
    this order they are the indices of the DDP engine's optimizer file."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]


class MeshEngine:
    def __init__(self, model: nn.Module, cfg: Config, world: World) -> None:
        e = cfg.engine
        if cfg.train.precision == "fp16":
            raise ConfigError("train.precision=fp16 with engine.tp/pp > 1 is not supported (no sharded "
                              "loss scaler); use train.precision=bf16")
        if cfg.model.dropout > 0 and e.tp > 1:
            raise ConfigError(f"model.dropout={cfg.model.dropout} with engine.tp={e.tp}: replicated "
                              "activations would get different dropout masks per TP rank; "
                              "set model.dropout=0")
        self.world, self.device = world, world.device
        self.precision, self.grad_clip = cfg.train.precision, cfg.optim.grad_clip
        self.dims = ParallelDims.from_config(e, world.rank, world.size)
        self.mesh = init_device_mesh(world.device.type, self.dims.mesh_shape,
                                     mesh_dim_names=("pp", "dp", "tp"))
        self.state_keys = list(model.state_dict())
        decayed, rest = optimizer_groups(model)
        self.param_order, self.group_sizes = decayed + rest, [len(decayed), len(rest)]
        tied = model.output.weight is model.tok_embeddings.weight
        self.model = model.to(world.device)
        if e.pp > 1:
            split_pipeline_stage(self.model, self.dims.pp_rank, e.pp)
        parallelize(self.model, self.mesh, e)
        self.pipeline = (Pipeline(self.model, self.dims.pp_rank, e.pp, self.mesh["pp"].get_group(),
                                  self.device) if e.pp > 1 else None)
        self.names = {id(p): n for n, p in self.model.named_parameters()}
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # The last stage's copy of a tied embedding: its gradient is summed with the first stage's,
        # and its norm and optimizer state are the first stage's, so it is counted once.
        self.tied_copy = (self.model.output.weight if tied and e.pp > 1 and self.pipeline.is_last else None)
        self.tie_group = self._tie_group() if tied and e.pp > 1 else None
        self.optimizer = build_adamw(self.model, cfg.optim, world.device)
        self._replica_flags = {k: self.optimizer.defaults[k] for k in ("fused", "foreach")}
        self._use_supported_kernels()

    def _tie_group(self) -> dist.ProcessGroup | None:
        """The (first stage, last stage) pair holding this rank's tied embedding copies. Every rank
        creates every pair's group (new_group is collective), keeps its own."""
        ranks = self.mesh.mesh
        mine = None
        for d in range(self.dims.dp):
            for t in range(self.dims.tp):
                pair = [int(ranks[0, d, t]), int(ranks[-1, d, t])]
                group = dist.new_group(pair)
                if self.world.rank in pair:
                    mine = group
        return mine

    def _use_supported_kernels(self) -> None:
        """Fused and foreach AdamW kernels refuse lists mixing DTensors (sharded matrices) with plain
        tensors (replicated embedding/norms); with TP use the per-tensor kernel. AdamW is elementwise,
        so results match the fused kernel up to fp32 rounding."""
        if any(isinstance(p, DTensor) for p in self.params):
            for group in self.optimizer.param_groups:
                group["fused"], group["foreach"] = False, False

    def _full_name(self, name: str) -> str:
        return TIED[1] if self.tied_copy is not None and name == TIED[0] else name

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        with autocast(self.device, self.precision):
            if self.pipeline is not None:
                # The pipeline runs decoder-only models (the config check), whose batches are
                # exactly input_ids and labels.
                with phase(FORWARD_BACKWARD, self.device):
                    input_ids = torch.cat([b["input_ids"] for b in micro_batches]).to(self.device)
                    labels = torch.cat([b["labels"] for b in micro_batches]).to(self.device)
                    loss = self.pipeline.train_step(input_ids, labels, n)
            else:
                loss = torch.zeros((), device=self.device)
                for batch in micro_batches:
                    with phase(FORWARD, self.device):
                        mb_loss = self.model(**to_device(batch, self.device))
                    with phase(BACKWARD, self.device):
                        (mb_loss / n).backward()
                    loss += mb_loss.detach()
                loss = loss / n
        self._sync_grads()  # unmarked: its collectives are the step's exposed communication
        with phase(OPTIMIZER, self.device):
            grad_norm = self._clip()
            # Skip a step whose gradients are not finite (a non-finite loss makes them so). Decided
            # on the global norm, which is identical on every rank, so all replicas and shards agree.
            # On the device with PP alone; with TP the kernel is not fused and this syncs the host.
            skipped = step_if_finite(self.optimizer, torch.isfinite(grad_norm))
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, grad_norm=grad_norm.detach(), skipped=skipped)

    @torch.no_grad()
    def _sync_grads(self) -> None:
        reduce_partial_grads(self.params)
        if self.tie_group is not None:
            tied = self.tied_copy if self.tied_copy is not None else self.model.tok_embeddings.weight
            all_reduce_grads([tied], self.tie_group, average=False)
        all_reduce_grads(self.params, self.mesh["dp"].get_group(), average=True)

    @torch.no_grad()
    def _clip(self) -> torch.Tensor:
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        return clip_grad_norm_(
            self.params, max_norm,
            tp_group=self.mesh["tp"].get_group() if self.dims.tp > 1 else None,
            pp_group=self.mesh["pp"].get_group() if self.dims.pp > 1 else None,
            skip={id(self.tied_copy)} if self.tied_copy is not None else set())

    @torch.no_grad()
    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        self.model.eval()
        with autocast(self.device, self.precision):
            batch = to_device(batch, self.device)
            if self.pipeline is not None:
                loss = self.pipeline.forward_loss(batch["input_ids"], batch["labels"])
            else:
                loss = self.model(**batch)
        self.model.train()
        return loss.detach()

    # ---- checkpoints: full tensors keyed like the unsharded model --------------------------------

    @property
    def _is_stage_leader(self) -> bool:
        """One rank per pipeline stage contributes that stage's (identical across dp/tp) tensors."""
        return self.dims.dp_rank == 0 and self.dims.tp_rank == 0

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        mine = {name: full_cpu(t) for name, t in self.model.state_dict().items()}
        merged = gather_to_rank0(mine if self._is_stage_leader else None)
        if merged is None:
            return None
        if set(merged) != set(self.state_keys):
            differ = sorted(set(merged) ^ set(self.state_keys))
            raise CheckpointError(f"consolidated weights: keys {differ} differ from the unsharded model's")
        return {k: merged[k] for k in self.state_keys}

    def checkpoint_parts(self) -> dict[str, bytes]:
        """Rank 0 writes the optimizer exactly as the DDP engine would for the whole model."""
        states: dict[str, dict[str, Any]] = {}
        for p in self.params:
            if p is self.tied_copy or p not in self.optimizer.state:
                continue
            states[self.names[id(p)]] = {k: full_cpu(v) for k, v in self.optimizer.state[p].items()}
        merged = gather_to_rank0(states if self._is_stage_leader else None)
        if merged is None:
            return {}
        index = {name: i for i, name in enumerate(self.param_order)}
        groups, offset = [], 0
        for group, size in zip(self.optimizer.param_groups, self.group_sizes):
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyper, **self._replica_flags, "params": list(range(offset, offset + size))})
            offset += size
        state = {index[name]: s for name, s in merged.items()}
        saved = {"optimizer": {"state": state, "param_groups": groups}, "scaler": {}}
        return {OPTIMIZER_FILE: to_bytes(saved)}

    def load_checkpoint_parts(self, read: ReadPart, names: list[str]) -> None:
        weights = from_bytes(read(layout.MODEL), "cpu")
        saved = from_bytes(read(OPTIMIZER_FILE), "cpu")["optimizer"]
        n_saved = sum(len(g["params"]) for g in saved["param_groups"])
        if n_saved != len(self.param_order):
            raise CheckpointError(f"{OPTIMIZER_FILE} holds {n_saved} parameters but this model has "
                                  f"{len(self.param_order)}; resume with the same model config")
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                local(p).copy_(local(shard_like(weights[name], p)))
        by_name = {self.param_order[i]: s for i, s in saved["state"].items()}
        local_state: dict[int, dict[str, Any]] = {}
        local_groups, idx = [], 0
        for group, saved_group in zip(self.optimizer.param_groups, saved["param_groups"]):
            ids = []
            for p in group["params"]:
                full = by_name.get(self._full_name(self.names[id(p)]))
                if full is not None:
                    local_state[idx] = {k: v if k == "step" else shard_like(v, p) for k, v in full.items()}
                ids.append(idx)
                idx += 1
            local_groups.append({**{k: v for k, v in saved_group.items() if k != "params"}, "params": ids})
        self.optimizer.load_state_dict({"state": local_state, "param_groups": local_groups})
        self._use_supported_kernels()

    def memory_report(self) -> dict[str, int]:
        def nbytes(t: torch.Tensor) -> int:
            return local(t).numel() * local(t).element_size()

        return {"param_bytes": sum(nbytes(p) for p in self.params),
                "grad_bytes": sum(nbytes(p) for p in self.params),
                "optimizer_bytes": sum(nbytes(t) for s in self.optimizer.state.values()
                                       for t in s.values() if torch.is_tensor(t))}
