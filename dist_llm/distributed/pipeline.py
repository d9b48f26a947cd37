"""Pipeline stages for DecoderLM with `torch.distributed.pipelining`, built by hand (no tracing).

Each stage is the same DecoderLM with the modules it does not own removed: `layers` keeps the
stage's contiguous range (the ModuleDict keeps the original "i" keys, so parameter names and
checkpoint keys are those of the whole model), the first stage keeps the embedding and the last the
final norm and head; missing ones become nn.Identity so `DecoderLM.forward` runs unchanged:
first stage ids -> hidden, middle hidden -> hidden, last hidden -> logits.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.distributed.pipelining.schedules import PipelineScheduleSingle

from dist_llm.distributed.tensor_parallel import full_value
from dist_llm.models.decoder import label_logprobs, lm_loss


def partition_layers(costs: list[int], n_stages: int) -> list[range]:
    """Split layers with the given costs (parameter counts) into `n_stages` contiguous, non-empty
    ranges minimizing the largest stage cost (the pipeline runs at the speed of its slowest stage).

    Exact dynamic program, O(n_layers^2 * n_stages): trivial for any real depth. Among equally good
    splits, earlier stages take more layers, since the last stage also runs the norm and LM head;
    with identical blocks the split is uniform.
    """
    n = len(costs)
    if not 1 <= n_stages <= n:
        raise ValueError(f"cannot split {n} layers into {n_stages} non-empty pipeline stages")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: smallest max-stage cost for the first i layers in k stages; cut[k][i]: last cut.
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0
    for k in range(1, n_stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value <= best[k][i]:
                    best[k][i], cut[k][i] = value, j
    bounds = [n]
    for k in range(n_stages, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    bounds.reverse()
    return [range(bounds[s], bounds[s + 1]) for s in range(n_stages)]


def split_pipeline_stage(model: nn.Module, stage: int, n_stages: int) -> nn.Module:
    """Reduce a DecoderLM to pipeline stage `stage` of `n_stages`, in place; returns it.

    With tied embeddings the first stage owns the embedding and the last stage gets its own copy of
    the same matrix as the head; the engine sums the two gradients so both copies stay equal.
    """
    costs = [sum(p.numel() for p in block.parameters()) for block in model.layers.values()]
    keys = list(model.layers.keys())
    mine = {keys[i] for i in partition_layers(costs, n_stages)[stage]}
    for key in keys:
        if key not in mine:
            del model.layers[key]
    first, last = stage == 0, stage == n_stages - 1
    if last and not first and model.output.weight is model.tok_embeddings.weight:
        model.output.weight = nn.Parameter(model.tok_embeddings.weight.detach().clone())
    if not first:
        model.tok_embeddings = nn.Identity()
    if not last:
        model.norm = nn.Identity()
        model.output = nn.Identity()
    return model


class Pipeline:
    """Runs one rank's stage: a training schedule over micro-batches and a forward-only eval pass.
    The loss lives on the last stage and is broadcast to the whole pipeline group, so every rank
    reports the replica's loss."""

    def __init__(
        self,
        stage_module: nn.Module,
        stage: int,
        n_stages: int,
        group: dist.ProcessGroup,
        device: torch.device,
    ) -> None:
        self.module = stage_module
        self.stage = stage
        self.n_stages = n_stages
        self.group = group
        self.device = device
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        self._last_rank = dist.get_global_rank(group, n_stages - 1)
        self._schedule: PipelineScheduleSingle | None = None

    def _schedule_for(self, n_microbatches: int) -> PipelineScheduleSingle:
        if self._schedule is None or self._schedule._n_microbatches != n_microbatches:
            stage = PipelineStage(self.module, self.stage, self.n_stages, self.device, group=self.group)
            # 1F1B bounds live activations to n_stages micro-batches; it needs at least that many.
            kind = Schedule1F1B if n_microbatches >= self.n_stages else ScheduleGPipe
            self._schedule = kind(stage, n_microbatches, loss_fn=lm_loss, scale_grads=True)
        return self._schedule

    def train_step(self, input_ids: torch.Tensor, labels: torch.Tensor, n_microbatches: int) -> torch.Tensor:
        """Forward/backward the batch as `n_microbatches` micro-batches; gradients are the mean over
        them. Returns the mean loss on every stage."""
        schedule = self._schedule_for(n_microbatches)
        losses: list[torch.Tensor] = []
        if self.is_first:
            schedule.step(input_ids, target=labels if self.is_last else None, losses=losses)
        elif self.is_last:
            schedule.step(target=labels, losses=losses)
        else:
            schedule.step()
        loss = torch.stack(losses).mean().detach() if self.is_last else torch.zeros((), device=self.device)
        return self._from_last(loss)

    @torch.no_grad()
    def forward_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of one batch, forward only, on every stage."""
        return self._forward(input_ids, lambda logits: lm_loss(logits, labels), ())

    @torch.no_grad()
    def forward_scores(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[2, B, T] on every stage: the labels' log-probabilities and the largest log-probability
        at each position (`label_logprobs`)."""

        def scores(logits: torch.Tensor) -> torch.Tensor:
            return torch.stack([full_value(t) for t in label_logprobs(logits, labels)])

        return self._forward(input_ids, scores, (2, *labels.shape))

    def _forward(
        self,
        input_ids: torch.Tensor,
        head: Callable[[torch.Tensor], torch.Tensor],
        out_shape: tuple[int, ...],
    ) -> torch.Tensor:
        """`head` of the logits of one batch, computed on the last stage and broadcast to the others
        (its result has `out_shape`); forward only, with plain point-to-point sends between stages."""
        if self.is_first:
            x = input_ids
        else:
            shape = torch.empty(3, dtype=torch.int64, device=self.device)
            dist.recv(shape, group=self.group, group_src=self.stage - 1)
            x = torch.empty(*shape.tolist(), dtype=torch.float32, device=self.device)
            dist.recv(x, group=self.group, group_src=self.stage - 1)
        out = self.module(x)
        if self.is_last:
            return self._from_last(head(out).detach())
        out = out.float().contiguous()
        shape = torch.tensor(out.shape, dtype=torch.int64, device=self.device)
        dist.send(shape, group=self.group, group_dst=self.stage + 1)
        dist.send(out, group=self.group, group_dst=self.stage + 1)
        return self._from_last(torch.zeros(out_shape, device=self.device))

    def _from_last(self, value: torch.Tensor) -> torch.Tensor:
        value = full_value(value).float().contiguous()
        dist.broadcast(value, src=self._last_rank, group=self.group)
        return value
