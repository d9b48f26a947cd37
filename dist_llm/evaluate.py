"""Load a trained model from a checkpoint (or run directory) for evaluation and sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.discovery import resolve_checkpoint
from dist_llm.checkpoint.offline import open_model_tensors
from dist_llm.checkpoint.state import load_trainer_state
from dist_llm.config import OBJECTIVES, Config, DataConfig, TrainConfig, config_from_dict
from dist_llm.data.batch import Batch, Collator
from dist_llm.data.loader import eval_batches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.sources import check_sources, open_sources
from dist_llm.distributed import all_reduce_sum
from dist_llm.errors import ConfigError
from dist_llm.pretrained import instantiate, is_hf_dir, load_pretrained
from dist_llm.seeding import derive_seed


@dataclass
class LoadedModel:
    model: nn.Module
    cfg: Config
    step: int
    checkpoint: str


def load_trained_model(path: str, device: str = "cpu") -> LoadedModel:
    """A checkpoint (step, root or run directory) or a local HF model directory, e.g. an export.
    An HF model has no training config: its data (for evaluation) must be given separately, and its
    objective is its family's."""
    if is_hf_dir(path):
        model_cfg, state = load_pretrained(path)
        data = DataConfig(
            path="",
            objective=OBJECTIVES[model_cfg.arch],
            seq_len=min(DataConfig.seq_len, model_cfg.max_seq_len),
        )
        # fp32: the export's weights as they are, the number transformers would compute.
        cfg = Config(model=model_cfg, data=data, train=TrainConfig(precision="fp32"))
        return LoadedModel(model=instantiate(model_cfg, state, device), cfg=cfg, step=0, checkpoint=path)
    uri = resolve_checkpoint(path)
    trainer_state = load_trainer_state(uri)
    cfg = config_from_dict(trainer_state["config"], origin=f"{uri}/{layout.TRAINER}")
    state = open_model_tensors(uri, cfg.model.tie_embeddings)
    return LoadedModel(
        model=instantiate(cfg.model, state, device), cfg=cfg, step=trainer_state["step"], checkpoint=uri
    )


LossFn = Callable[[Batch], torch.Tensor]


def validation_loss(
    loss_fn: LossFn,
    samples: PackedSamples,
    collator: Collator,
    seed: int,
    micro_batch: int,
    num_batches: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int]:
    """Mean loss per scored token (label != -100) over the first validation windows, identical on
    every rank. Returns (loss, tokens scored). Only the token-prediction loss counts: BERT's
    next-sentence term is dropped, so val_loss and perplexity mean the same for every family and
    match what transformers computes on an export."""
    totals = torch.zeros(2, dtype=torch.float64)
    batches = eval_batches(samples, collator, seed, micro_batch, num_batches, rank, world_size)
    for batch in batches:
        batch.pop("next_sentence_label", None)
        scored = int((batch["labels"] != -100).sum())
        totals[0] += loss_fn(batch).double().cpu() * scored
        totals[1] += scored
    all_reduce_sum(totals)
    return (totals[0] / totals[1]).item(), int(totals[1].item())


def validation_losses(
    loss_fn: LossFn,
    sources: list[Source],
    collator: Collator,
    train_seed: int,
    micro_batch: int,
    num_batches: int,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """`val_loss` and `val_tokens`; for a mixture also `val_loss/<name>` per source, each over its own
    validation split, and `val_loss` is their weighted mean (the expected loss on the training mix,
    whatever the validation splits' sizes)."""
    total_weight = sum(s.weight for s in sources)
    out: dict[str, float] = {"val_loss": 0.0, "val_tokens": 0}
    for source in sources:
        seed = derive_seed(train_seed, f"eval/{source.name}")
        loss, tokens = validation_loss(
            loss_fn, source.samples, collator, seed, micro_batch, num_batches, rank, world_size
        )
        if len(sources) > 1:
            out[f"val_loss/{source.name}"] = loss
        out["val_loss"] += loss * (source.weight / total_weight)  # one source: exactly its loss
        out["val_tokens"] += tokens
    return out


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped: an untrained model's exp(loss) is not informative


@torch.no_grad()
def evaluate_perplexity(
    loaded: LoadedModel, data_path: str | None = None, batch_size: int = 8, max_batches: int | None = None
) -> dict[str, object]:
    """Validation loss and perplexity of a trained model over the validation split (all of it by
    default); for a model trained on a mixture, per source and weighted (see `validation_losses`)."""
    cfg = loaded.cfg
    if not (data_path or cfg.data.path or cfg.data.sources):
        raise ConfigError(
            f"{loaded.checkpoint} is a Hugging Face model without training data: pass "
            "--data with a dataset prepared with its tokenizer (dist-llm prep --tokenizer DIR)"
        )
    # Another dataset keeps the run's sample length and objective settings (mask rate, spans).
    data = replace(cfg.data, path=data_path, sources=[]) if data_path else cfg.data
    manifests, collator = check_sources(data)
    sources = open_sources(data, collator, "validation", manifests=manifests)
    device = next(loaded.model.parameters()).device

    def loss_fn(batch: Batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            return loaded.model(**{key: value.to(device) for key, value in batch.items()})

    num_batches = max_batches or math.ceil(max(s.samples.num_samples for s in sources) / batch_size)
    losses = validation_losses(loss_fn, sources, collator, cfg.train.seed, batch_size, num_batches)
    return {
        "step": loaded.step,
        **losses,
        "val_ppl": perplexity(losses["val_loss"]),
        "checkpoint": loaded.checkpoint,
    }
