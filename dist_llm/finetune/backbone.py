"""One place that knows how each model family is called and pooled for fine-tuning, so the heads
read `hidden [B, T, D]` and `pooled [B, D]` and never branch on the family.

- decoder (Llama-style, causal): no attention mask; inputs are right-padded, so padding comes after
  every real token and cannot be attended to. The sequence vector is the last real token's state,
  the only one that has read the whole text (as HF LlamaForSequenceClassification pools).
- encoder (BERT): token types and attention mask go in; the sequence vector is BERT's pooler
  (dense + tanh) on the first, [CLS], token, the one its sentence-level pretraining trained.
- encoder_decoder (T5): the encoder's states; the decoder is unused. T5 has no [CLS] token, so the
  sequence vector is the mean over real tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dist_llm.errors import ConfigError


class Backbone(nn.Module):
    """A pretrained model (kept whole, as `model`, so its weights save and reload under their own
    names) seen as hidden states plus a pooled vector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.hidden_size: int = model.cfg.d_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states [B, T, D]; attention_mask [B, T] is 1 on real tokens."""
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per sequence [B, D]."""
        raise NotImplementedError


class DecoderBackbone(Backbone):
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.model.hidden_states(input_ids)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last = attention_mask.sum(dim=1).clamp_min(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class EncoderBackbone(Backbone):
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.model.hidden_states(
            input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        )

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.pooled(hidden)


class EncoderDecoderBackbone(Backbone):
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.model.hidden_states(input_ids, attention_mask=attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


BACKBONES: dict[str, type[Backbone]] = {
    "decoder": DecoderBackbone,
    "encoder": EncoderBackbone,
    "encoder_decoder": EncoderDecoderBackbone,
}
"""model.arch -> its adapter."""


def make_backbone(model: nn.Module) -> Backbone:
    """The adapter for a model of ours, by its config's arch."""
    arch = model.cfg.arch
    if arch not in BACKBONES:
        raise ConfigError(f"model.arch={arch!r} has no fine-tuning adapter; one of {sorted(BACKBONES)}")
    if not hasattr(model, "hidden_states"):
        raise ConfigError(
            f"{type(model).__name__} (model.arch={arch!r}) has no hidden_states(); it cannot be fine-tuned"
        )
    return BACKBONES[arch](model)
