"""Autoregressive sampling for a causal LM.

There is no KV cache: every step re-runs the model over the (cropped) context, costing O(T) more
compute per token than a cached decoder. That is fine for what sampling is used for here (eyeballing
checkpoints, smoke tests) and keeps the model free of inference-only state.
"""

from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Append up to max_new_tokens sampled tokens to input_ids [B, T]; returns [B, T + n].

    model(ids) must return logits [B, T, V] and the model must carry `cfg.max_seq_len`: the
    context is cropped to the last max_seq_len tokens because rotary tables end there.
    temperature=0 is greedy (argmax). top_k keeps the k most likely tokens, top_p the smallest
    set whose probability reaches p (nucleus). With eos_id, a row that emitted eos keeps
    emitting eos, and generation stops early once every row has. Pass `generator` for
    reproducible samples. The model runs in eval mode (no dropout) and its mode is restored.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    max_seq_len = model.cfg.max_seq_len
    was_training = model.training
    model.eval()
    try:
        ids = input_ids
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logits = model(ids[:, -max_seq_len:])[:, -1, :].float()
            next_id = _pick(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            ids = torch.cat((ids, next_id[:, None]), dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return ids
    finally:
        model.train(was_training)


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """Choose one token id per row of logits [B, V]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
