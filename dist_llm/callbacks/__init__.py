"""Trainer callbacks: metrics, evaluation, checkpointing. Each owns one concern."""

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.checkpointing import CheckpointCallback
from dist_llm.callbacks.evaluation import EvalCallback
from dist_llm.callbacks.metrics import MetricsCallback

__all__ = ["Callback", "CheckpointCallback", "EvalCallback", "MetricsCallback"]
