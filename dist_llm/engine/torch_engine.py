"""One torch-native engine for every layout: FSDP2 / HSDP / replication x TP x PP.

Built in torchtitan's order, so no rank ever holds more than its share of the model: the model is
created on the meta device, this rank's pipeline stage is cut out, `parallelize` applies tensor
parallelism, activation checkpointing, compile and data parallelism, and only then are the local
shards allocated and initialized (`materialize`: the same initial weights whatever the layout).
The optimizer holds state only for the local shards. Its state is exposed as a `state_dict` of
sharded tensors keyed like the unsharded model, which the checkpoint package saves and loads with
`torch.distributed.checkpoint`, resharding onto any layout.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule

from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.distributed.dims import NAMES, ParallelDims
from dist_llm.distributed.grads import clip_grad_norm_, local, reduce_partial_grads, sum_tied_grads
from dist_llm.distributed.materialize import FullTensor, materialize
from dist_llm.distributed.parallelize import parallelize
from dist_llm.distributed.pipeline import Pipeline, split_pipeline_stage
from dist_llm.distributed.tensor_parallel import full_value, loss_context
from dist_llm.engine.base import Batch, MicroBatches, StepResult, TokenScores
from dist_llm.engine.device import autocast, to_device
from dist_llm.engine.optim import build_adamw, step_if_finite
from dist_llm.errors import ConfigError
from dist_llm.metrics.phases import BACKWARD, EVAL, FORWARD, FORWARD_BACKWARD, OPTIMIZER, phase
from dist_llm.models import build_model
from dist_llm.models.decoder import label_logprobs
from dist_llm.seeding import derive_seed

EMBEDDING, HEAD = "tok_embeddings.weight", "output.weight"
# Optimizer state flattened to one key per parameter and field ("state.<fqn>.exp_avg",
# "param_groups.<fqn>.lr"): pipeline stages then hold disjoint keys, and DCP reshards each tensor.
STATE_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def build_on_meta(
    cfg: Config,
    dims: ParallelDims,
    mesh: DeviceMesh | None,
    prepare: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, nn.Module, bool]:
    """This rank's pipeline stage of the model, parallelized, still on the meta device (no memory);
    an unsharded meta skeleton to materialize it from; and whether the head is tied to the embedding."""
    with torch.device("meta"):
        model, skeleton = build_model(cfg.model), build_model(cfg.model)
    head = getattr(getattr(model, "output", None), "weight", None)
    tied = head is not None and head is model.tok_embeddings.weight
    if prepare is not None:
        prepare(model)
    if dims.pp > 1:
        split_pipeline_stage(model, dims.pp_rank, dims.pp)
    parallelize(model, mesh, dims, cfg.engine)
    return model, skeleton, tied


class TorchEngine:
    checkpoint_format = "dcp"

    def __init__(
        self,
        cfg: Config,
        world: World,
        pretrained: FullTensor | None = None,
        prepare: Callable[[nn.Module], None] | None = None,
    ) -> None:
        e = cfg.engine
        self.world, self.device = world, world.device
        self.precision, self.grad_clip = cfg.train.precision, cfg.optim.grad_clip
        self.dims = e.dims(world.size, world.rank)
        if cfg.model.vocab_size % self.dims.tp:
            raise ConfigError(
                f"engine.tp={self.dims.tp} must divide the vocabulary size {cfg.model.vocab_size} "
                "(the embedding and head are split by vocabulary rows); set model.vocab_size"
            )
        self.mesh = (
            init_device_mesh(world.device.type, self.dims.shape, mesh_dim_names=NAMES)
            if world.size > 1
            else None
        )
        model, skeleton, tied = build_on_meta(cfg, self.dims, self.mesh, prepare)
        materialize(model, skeleton, world.device, derive_seed(cfg.train.seed, "init"), pretrained)
        self.model = model
        self.pipeline = (
            Pipeline(model, self.dims.pp_rank, self.dims.pp, self.mesh["pp"].get_group(), self.device)
            if self.dims.pp > 1
            else None
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Tied embedding with pipeline stages: the last stage's head is a copy of the first stage's
        # embedding; their gradients are summed so both copies take the same step, its norm counts
        # once, and checkpoints name it after the embedding.
        self.tied = tied
        self.tied_copy = (
            model.output.weight if tied and self.pipeline is not None and self.pipeline.is_last else None
        )
        self.tie_group = self._tie_group() if tied and self.pipeline is not None else None
        # This rank's copy in the (first stage, last stage) pair; None off the pair.
        self.tied_param = (
            (self.tied_copy if self.tied_copy is not None else model.tok_embeddings.weight)
            if self.tie_group is not None
            else None
        )
        self.pp_group = self.mesh["pp"].get_group() if self.pipeline is not None else None
        # The head copy's norm is counted on the first stage.
        self.norm_skip = frozenset({id(self.tied_copy)}) if self.tied_copy is not None else frozenset()
        self.optimizer = build_adamw(model, cfg.optim, world.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def _tie_group(self) -> dist.ProcessGroup | None:
        """The (first stage, last stage) pair holding this rank's tied embedding copies. Every rank
        creates every pair's group (new_group is collective) and keeps its own."""
        ranks = self.mesh.mesh
        mine = None
        for r, s, t in itertools.product(*(range(n) for n in self.dims.shape[1:])):
            pair = [int(ranks[0, r, s, t]), int(ranks[-1, r, s, t])]
            group = dist.new_group(pair)
            if self.world.rank in pair:
                mine = group
        return mine

    # ---- training ------------------------------------------------------------------------------

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        with loss_context(self.dims.tp):
            if self.pipeline is not None:
                # The pipeline runs decoder-only models (the config check), whose batches are
                # exactly input_ids and labels; its schedule runs forward and backward together.
                with phase(FORWARD_BACKWARD, self.device), autocast(self.device, self.precision):
                    input_ids = torch.cat([b["input_ids"] for b in micro_batches]).to(self.device)
                    labels = torch.cat([b["labels"] for b in micro_batches]).to(self.device)
                    loss = self.pipeline.train_step(input_ids, labels, n)
            else:
                loss = torch.zeros((), device=self.device)
                for i, batch in enumerate(micro_batches):
                    self._sync_gradients(last=i == n - 1)
                    # Autocast around the forward only, one region per micro-batch: a region spanning
                    # several FSDP2 forwards keeps casts of gathered weights alive across them, and
                    # the step after one then computes (slightly) different gradients.
                    with phase(FORWARD, self.device), autocast(self.device, self.precision):
                        micro_loss = self.model(**to_device(batch, self.device))
                    with phase(BACKWARD, self.device):  # FSDP's reduce-scatters run in here
                        self.scaler.scale(micro_loss / n).backward()
                    loss += full_value(micro_loss.detach())
                loss = loss / n
        with phase(OPTIMIZER, self.device):
            reduce_partial_grads(self.params)
            sum_tied_grads(self.tied_param, self.tie_group)
            self.scaler.unscale_(self.optimizer)
            max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
            grad_norm = clip_grad_norm_(self.params, max_norm, self.pp_group, skip=self.norm_skip)
            skipped = self._step_if_finite(loss, grad_norm)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, grad_norm=grad_norm.detach(), skipped=skipped)

    def _sync_gradients(self, last: bool) -> None:
        """Gradient accumulation without a rank holding the whole model's gradient: sharded layouts
        reduce-scatter every micro-batch into the sharded gradient (keeping unsharded gradients for
        a later single reduction would cost every rank a full model's worth of memory) and, with
        replicas (HSDP), all-reduce across them once, with the last; plain replication, which holds
        full gradients anyway, reduces once."""
        if not isinstance(self.model, FSDPModule):
            return
        if self.dims.dp_shard > 1:
            if self.dims.dp_replicate > 1:
                self.model.set_requires_all_reduce(last)
        else:
            self.model.set_requires_gradient_sync(last)

    def _step_if_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool | torch.Tensor:
        """Apply the optimizer unless the loss or gradients are not finite (decided on the device);
        returns whether the step was skipped. The norm is global, so all shards agree."""
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
        with phase(EVAL, self.device), loss_context(self.dims.tp), autocast(self.device, self.precision):
            batch = to_device(batch, self.device)
            if self.pipeline is not None:
                loss = self.pipeline.forward_loss(batch["input_ids"], batch["labels"])
            else:
                loss = self.model(**batch)
        self.model.train()
        return full_value(loss.detach())

    @torch.no_grad()
    def score_tokens(self, batch: Batch) -> TokenScores:
        self.model.eval()
        with phase(EVAL, self.device), loss_context(self.dims.tp), autocast(self.device, self.precision):
            batch = to_device(batch, self.device)
            if self.pipeline is not None:
                picked, best = self.pipeline.forward_scores(batch["input_ids"], batch["labels"])
            else:
                scores = label_logprobs(self.model(batch["input_ids"]), batch["labels"])
                picked, best = (full_value(t) for t in scores)
        self.model.train()
        return TokenScores.from_logprobs(picked, best, batch["labels"])

    # ---- state: sharded tensors keyed like the unsharded model -----------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Model and optimizer state of this rank's shards (DTensors where sharded), under the
        unsharded model's names: what DCP saves, and the template it loads into."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=STATE_OPTIONS)
        if self.tied and self.pipeline is None:
            model_sd.pop(HEAD, None)  # the same tensor as the embedding: saved once, under its name
        state = {
            "model": self._rename(model_sd, HEAD, EMBEDDING),
            "optimizer": self._rename(optim_sd, HEAD, EMBEDDING),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model_sd = self._rename(state["model"], EMBEDDING, HEAD)
        if self.tied and self.pipeline is None and EMBEDDING in model_sd:
            model_sd[HEAD] = model_sd[EMBEDDING]
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model_sd,
            optim_state_dict=self._rename(state["optimizer"], EMBEDDING, HEAD),
            options=STATE_OPTIONS,
        )
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _rename(self, flat: dict[str, Any], old: str, new: str) -> dict[str, Any]:
        """On the last pipeline stage of a tied model, its head copy is saved as the embedding."""
        if self.tied_copy is None:
            return flat
        return {_replace_name(key, old, new): value for key, value in flat.items()}

    def memory_report(self) -> dict[str, int]:
        def nbytes(t: torch.Tensor) -> int:
            return local(t).numel() * local(t).element_size()

        return {
            "param_bytes": sum(nbytes(p) for p in self.params),
            "grad_bytes": sum(nbytes(p) for p in self.params),
            "optimizer_bytes": sum(
                nbytes(t) for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
            ),
        }


def _replace_name(key: str, old: str, new: str) -> str:
    """`key` with the parameter name `old` swapped for `new`, as a whole key or inside a flattened
    optimizer key ("state.<name>.exp_avg", "param_groups.<name>.lr")."""
    if key == old:
        return new
    for prefix in ("state.", "param_groups."):
        if key.startswith(prefix + old + "."):
            return prefix + new + key[len(prefix + old) :]
    return key
