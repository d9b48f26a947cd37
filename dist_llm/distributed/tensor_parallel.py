"""Megatron-style tensor parallelism with sequence parallelism for DecoderLM, with DTensor
`parallelize_module` (torchtitan's plan).

- Attention is split by heads (q/k/v column-wise, o row-wise) and the SwiGLU MLP by hidden units
  (gate/up column-wise, down row-wise).
- Between those regions the residual stream is sharded along the sequence (sequence parallelism):
  norms run on 1/tp of the tokens, each row-wise projection ends in a reduce-scatter and each region
  starts with an all-gather, the same bytes as one all-reduce, with 1/tp of the activations.
- The token embedding is vocab-parallel (each rank holds 1/tp of the rows) and so is the LM head:
  logits stay sharded over the vocabulary and the cross-entropy is computed in parallel
  (`loss_parallel`), so no rank ever materializes [B, T, vocab]. Both hold their matrix as
  Shard(0), so a tied head shares the embedding's sharded Parameter.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)


def block_plan() -> dict[str, ParallelStyle]:
    """The plan of one Block: norms sequence-parallel, attention and MLP tensor-parallel."""
    gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return {
        "attention_norm": SequenceParallel(),
        "attention": gather,
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "feed_forward": gather,
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
    }


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard `model` (a DecoderLM or one pipeline stage of it) over the 1-D `tp_mesh`, in place.

    Pipeline stages replace the modules they do not own with nn.Identity; only real embedding,
    norm and head modules are sharded. A stage's output is a sequence shard (middle stages) or
    vocabulary-sharded logits (the last stage).
    """
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, block_plan())
    head = getattr(model.output, "weight", None)
    tied = head is not None and head is getattr(model.tok_embeddings, "weight", None)
    outer: dict[str, ParallelStyle] = {}
    if isinstance(model.tok_embeddings, nn.Embedding):
        outer["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if not isinstance(model.norm, nn.Identity):
        outer["norm"] = SequenceParallel()
        outer["output"] = ColwiseParallel(
            input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False
        )
    parallelize_module(model, tp_mesh, outer)
    if tied:  # each style distributed its own copy; the head must use the embedding's Parameter
        model.output.weight = model.tok_embeddings.weight


def loss_context(tp: int) -> contextlib.AbstractContextManager:
    """Around forward and backward: cross-entropy over vocabulary-sharded logits (tp > 1)."""
    return loss_parallel() if tp > 1 else contextlib.nullcontext()


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A value computed from vocabulary-sharded logits (a DTensor: a loss, per-token log-probabilities)
    as the plain tensor it stands for, the same on every rank; a plain tensor is returned as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t
