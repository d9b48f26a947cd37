"""Evaluation metrics, all computed from one confusion matrix (gold rows, predicted columns). Counts
add across batches and ranks, so distributed evaluation all-reduces the matrix and every rank gets
exactly the single-process numbers.

Definitions:
- Sequence task: `accuracy` = correct / examples; `macro_f1` = unweighted mean of per-class F1 over
  the classes that occur in the gold labels or the predictions (a class with neither has no F1).
- Token task (scored positions are each word's first subword): `token_accuracy` = correct / words,
  the outside tag included. `precision`, `recall`, `micro_f1` count only tags other than the outside
  tag (e.g. "O"): a true positive is a word whose predicted tag equals its non-outside gold tag. This
  is per-word tag F1, not seqeval's entity-span F1 (which also needs B-/I- span boundaries right).
  `macro_f1` = mean per-class F1 over the non-outside tags that occur. Without an outside tag in the
  label set every tag counts, and micro F1 equals token accuracy.
"""

from __future__ import annotations

from typing import Optional

import torch

from dist_llm.finetune.encode import IGNORE


def confusion(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[num_labels, num_labels] int64 counts of (gold, predicted) over labels != IGNORE."""
    predicted = logits.argmax(dim=-1).reshape(-1)
    gold = labels.reshape(-1)
    scored = gold != IGNORE
    pairs = gold[scored] * num_labels + predicted[scored]
    return torch.bincount(pairs, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(tp: float, predicted: float, gold: float) -> float:
    precision, recall = _ratio(tp, predicted), _ratio(tp, gold)
    return _ratio(2 * precision * recall, precision + recall)


def _macro_f1(matrix: torch.Tensor, classes: list[int]) -> float:
    gold, predicted = matrix.sum(dim=1), matrix.sum(dim=0)
    occurring = [c for c in classes if gold[c] or predicted[c]]
    scores = [_f1(float(matrix[c, c]), float(predicted[c]), float(gold[c])) for c in occurring]
    return _ratio(sum(scores), len(scores))


def sequence_metrics(matrix: torch.Tensor) -> dict[str, float]:
    """accuracy and macro_f1 of a sequence task's confusion matrix."""
    total = float(matrix.sum())
    return {
        "accuracy": _ratio(float(matrix.trace()), total),
        "macro_f1": _macro_f1(matrix, list(range(matrix.shape[0]))),
    }


def token_metrics(matrix: torch.Tensor, labels: list[str], outside: Optional[str]) -> dict[str, float]:
    """token_accuracy, precision, recall, micro_f1 and macro_f1 of a token task (see module doc)."""
    classes = [i for i, name in enumerate(labels) if name != outside]
    tp = float(sum(matrix[c, c] for c in classes))
    predicted = float(matrix[:, classes].sum())
    gold = float(matrix[classes, :].sum())
    return {
        "token_accuracy": _ratio(float(matrix.trace()), float(matrix.sum())),
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, gold),
        "micro_f1": _f1(tp, predicted, gold),
        "macro_f1": _macro_f1(matrix, classes),
    }
