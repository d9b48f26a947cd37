"""Decoder-only causal LM (Llama-style GPT): embeddings -> N pre-norm blocks -> norm -> LM head.

Read top to bottom: `__init__` builds the modules, `init_weights` says how they start, `forward`
runs them. No parallelism lives here; tensor/pipeline parallelism and activation checkpointing are
applied from outside to `layers`, `tok_embeddings`, `norm` and `output`.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.models.config import ModelConfig
from dist_llm.models.layers import Block, RMSNorm


class DecoderLM(nn.Module):
    """GPT with Llama blocks: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate(require_vocab=True)
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # A ModuleDict keyed "0".."N-1" has the same parameter names as a ModuleList, but a
        # pipeline stage can delete the layers it does not own without renumbering the rest, so
        # checkpoint keys stay the same at every pipeline degree.
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize every parameter and buffer. Public because a large model is built on the
        meta device, moved with `to_empty(device=...)` (which leaves memory uninitialized and
        breaks weight tying) and then initialized in place by calling this."""
        # GPT-2 scheme: each block adds two branch outputs (attention, MLP) to the residual stream,
        # so with plain init_std its variance grows linearly in depth (2*n_layers additions).
        # Scaling the two projections that write into the stream by 1/sqrt(2*n_layers) keeps the
        # final stream's scale independent of depth, so deep and shallow presets train alike.
        resid_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        if self.cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=self.cfg.init_std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, mean=0.0, std=self.cfg.init_std)
        for layer in self.layers.values():
            layer.init_weights(self.cfg.init_std, resid_std)
        self.norm.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids: [B, T] token ids. Returns logits [B, T, V] if labels is None, else the mean
        cross-entropy over positions whose label is not -100. Labels arrive already shifted by the
        data loader: position t is scored against labels[:, t]."""
        logits = self.output(self.hidden_states(input_ids))
        if labels is None:
            return logits
        return lm_loss(logits, labels)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, D]: what the LM head (or a fine-tuning head) reads."""
        h = self.tok_embeddings(input_ids)
        for layer in self.layers.values():
            h = layer(h)
        return self.norm(h)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against labels [B, T], ignoring -100. A function of
    its own so a pipeline's last stage computes exactly the loss `forward` does."""
    # The loss is computed in fp32 even under bf16 autocast: log-softmax over a 32k-50k vocab
    # in bf16 is visibly biased, and this is the number every run is judged by.
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of logits [B, T, V]: the log-probability of the label (0 where it is -100) and
    the largest log-probability of any token, both [B, T] in fp32 like `lm_loss`. The label is the
    greedy choice where the two are equal; they are computed with log_softmax, nll_loss and amax
    only, never indexing or gathering the vocabulary dimension, so the same code runs on logits
    split over the vocabulary."""
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = -F.nll_loss(logp.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    return picked.view(labels.shape), logp.amax(dim=-1)
