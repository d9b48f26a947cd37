"""Classification heads on a backbone: dropout + one Linear layer, on the pooled vector (one label per
sequence) or on every position (one tag per token). The loss is cross-entropy ignoring label -100."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.finetune.backbone import Backbone
from dist_llm.finetune.encode import IGNORE

HEAD_INIT_STD = 0.02
"""A new classifier starts as BERT's did: small normal weights, zero bias, so the first logits are
near uniform and the first gradients go mostly to the head, not into the pretrained weights."""


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=HEAD_INIT_STD)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class SequenceClassifier(Classifier):
    """Logits [B, num_labels] from the backbone's pooled vector."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.backbone.pool(hidden, attention_mask)))


class TokenClassifier(Classifier):
    """Logits [B, T, num_labels], one row per position."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(input_ids, attention_mask, token_type_ids)))


HEADS: dict[str, type[Classifier]] = {"seq": SequenceClassifier, "token": TokenClassifier}
"""--task -> its head."""


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labels != IGNORE, in fp32 (logits may be bf16 under autocast). A batch
    with nothing to score (every word truncated away) gives 0, not NaN."""
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum")
    return total / (flat_labels != IGNORE).sum().clamp_min(1)
