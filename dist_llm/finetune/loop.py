"""The fine-tuning loop's parts: the example order, the optimizer and schedule, one training epoch and
one evaluation pass. Rank-aware but small: with several ranks each optimizer step's examples are
split across them and DDP averages the gradients; evaluation shards the file and all-reduces counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dist_llm.config import OptimConfig
from dist_llm.distributed import World, all_reduce_sum
from dist_llm.finetune.config import FinetuneConfig
from dist_llm.finetune.encode import IGNORE, Encoded, collate
from dist_llm.finetune.heads import classification_loss
from dist_llm.finetune.metrics import confusion
from dist_llm.schedule import lr_at
from dist_llm.seeding import derive_seed


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The same permutation on every rank and for every world size: a function of seed and epoch only."""
    generator = torch.Generator().manual_seed(derive_seed(seed, f"finetune/order/{epoch}"))
    return torch.randperm(num_examples, generator=generator).tolist()


def rank_batches(order: list[int], batch_size: int, rank: int, world_size: int) -> Iterator[list[int]]:
    """This rank's share of each global batch of `batch_size` examples. A short last batch is topped up
    from the start of the order so every rank has an example (DDP needs each rank in every step)."""
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) < world_size:
            batch = batch + order[: world_size - len(batch)]
        yield batch[rank::world_size]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW with decay on matrices only: decaying biases and norm gains towards 0 only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def schedule(cfg: FinetuneConfig, total_steps: int) -> OptimConfig:
    """Linear warmup to cfg.lr over warmup_ratio of the steps, then linear decay to 0: the trainer's
    schedule function with the fine-tuning convention (BERT's) plugged in."""
    return OptimConfig(
        lr=cfg.lr, min_lr_ratio=0.0, schedule="linear", warmup_steps=round(cfg.warmup_ratio * total_steps)
    )


def freeze_unreached(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
    """Freeze the parameters the head's loss never reaches (an untied LM head, T5's decoder, BERT's
    pretraining heads), found by one backward pass in eval mode (no dropout, so no random numbers
    drawn). Then AdamW holds no state for them and DDP needs no find_unused_parameters."""
    was_training = model.training
    model.eval()
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    classification_loss(logits, batch["labels"]).backward()
    frozen = []
    for name, param in model.named_parameters():
        if param.grad is None:
            param.requires_grad_(False)
            frozen.append(name)
        param.grad = None
    model.train(was_training)
    return frozen


@dataclass
class Progress:
    step: int = 0
    """Optimizer steps done."""


def _sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Counts are kept on the CPU; NCCL only reduces tensors on the GPU, so they travel there and back."""
    return all_reduce_sum(values.to(world.device)).cpu()


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: list[Encoded],
    cfg: FinetuneConfig,
    epoch: int,
    progress: Progress,
    total_steps: int,
    world: World,
    pad: int,
    per_token: bool,
) -> float:
    """One pass over the training examples; returns the mean training loss over all ranks and steps."""
    model.train()
    optim_cfg = schedule(cfg, total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = torch.zeros(2, dtype=torch.float64)
    for indices in rank_batches(
        epoch_order(len(examples), cfg.seed, epoch), cfg.batch_size, world.rank, world.size
    ):
        batch = {
            k: v.to(world.device) for k, v in collate([examples[i] for i in indices], pad, per_token).items()
        }
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress.step, optim_cfg, total_steps)
        with _autocast(world.device, cfg.precision):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = classification_loss(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        progress.step += 1
        losses += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    losses = _sum_over_ranks(losses, world)
    return (losses[0] / losses[1].clamp_min(1)).item()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: list[Encoded],
    num_labels: int,
    cfg: FinetuneConfig,
    world: World,
    pad: int,
    per_token: bool,
) -> tuple[torch.Tensor, float]:
    """(confusion matrix, mean loss per scored label) over all examples, identical on every rank.
    `model` is the bare module, not the DDP wrapper: evaluation must not run DDP's collectives, since
    ranks may hold different numbers of evaluation batches."""
    was_training = model.training
    model.eval()
    matrix = torch.zeros(num_labels, num_labels, dtype=torch.int64)
    loss_sums = torch.zeros(2, dtype=torch.float64)
    mine = list(range(world.rank, len(examples), world.size))
    for start in range(0, len(mine), cfg.batch_size):
        items = [examples[i] for i in mine[start : start + cfg.batch_size]]
        batch = {k: v.to(world.device) for k, v in collate(items, pad, per_token).items()}
        with _autocast(world.device, cfg.precision):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        scored = int((batch["labels"] != IGNORE).sum())
        loss_sums += torch.tensor(
            [classification_loss(logits, batch["labels"]).item() * scored, scored], dtype=torch.float64
        )
        matrix += confusion(logits.float(), batch["labels"], num_labels).cpu()
    matrix, loss_sums = _sum_over_ranks(matrix, world), _sum_over_ranks(loss_sums, world)
    model.train(was_training)
    return matrix, (loss_sums[0] / loss_sums[1].clamp_min(1)).item()
