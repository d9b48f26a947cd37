"""Trainer callbacks: metrics, evaluation (validation loss, downstream tasks), checkpointing. Each owns
one concern."""

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.checkpointing import CheckpointCallback
from dist_llm.callbacks.evaluation import EvalCallback
from dist_llm.callbacks.metrics import MetricsCallback
from dist_llm.callbacks.tasks import TaskEvalCallback

__all__ = ["Callback", "CheckpointCallback", "EvalCallback", "MetricsCallback", "TaskEvalCallback"]
