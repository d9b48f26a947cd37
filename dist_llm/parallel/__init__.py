"""Parallelism applied to a model from outside (the torchtitan rule: models stay parallelism-free).

Public API:
    parallelize(model, mesh, cfg)              TP (+ sequence parallel), activation checkpointing, compile
    apply_activation_checkpointing(model)      recompute each block in backward; usable by any engine
    apply_compile(model)                       torch.compile each block in place; usable by any engine
    split_pipeline_stage(model, stage, n)      keep one pipeline stage's contiguous layers
    partition_layers(costs, n)                 balanced contiguous layer ranges by parameter count
"""

from dist_llm.parallel.activation_checkpointing import apply_activation_checkpointing
from dist_llm.parallel.compile import apply_compile
from dist_llm.parallel.parallelize import parallelize
from dist_llm.parallel.pipeline import partition_layers, split_pipeline_stage

__all__ = ["apply_activation_checkpointing", "apply_compile", "parallelize", "partition_layers",
           "split_pipeline_stage"]
