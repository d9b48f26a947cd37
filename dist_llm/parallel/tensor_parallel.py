"""Megatron-style tensor parallelism for DecoderLM with torch DTensor `parallelize_module`.

Attention is split by heads (q/k/v column-wise, o row-wise) and the SwiGLU MLP by hidden units
(gate/up column-wise, down row-wise): one all-reduce per sublayer in forward and one in backward.
Attention needs no head-count change: it infers the local head count from the projected width.

The token embedding, final norm and LM head stay replicated (plain tensors). With tied embeddings
the head *is* the embedding matrix, and a vocab-parallel head would have to share one sharded
Parameter between an Embedding and a Linear; replicating keeps the loss exactly the single-device
cross-entropy at the price of computing the head on every TP rank.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def block_plan(sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """The TP plan of one Block. With sequence parallelism the residual stream between sublayers is
    sharded along the sequence: norms run on 1/tp of the tokens, the all-reduce of each row-wise
    projection becomes a reduce-scatter, and the input of attention/MLP is all-gathered."""
    residual = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, ParallelStyle] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=residual),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=residual),
    }
    if sequence_parallel:
        gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                     "attention": gather, "feed_forward": gather})
    return plan


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a DecoderLM or one pipeline stage of it) over the 1-D `tp_mesh`, in place.

    Pipeline stages replace the modules they do not own with nn.Identity; only real embedding,
    norm and head modules get sequence-parallel boundaries.
    """
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, block_plan(sequence_parallel))
    if not sequence_parallel:
        return
    outer: dict[str, ParallelStyle] = {}
    if isinstance(model.tok_embeddings, nn.Embedding):
        # Replicated lookup, then keep this rank's slice of the sequence (no communication).
        outer["tok_embeddings"] = PrepareModuleOutput(output_layouts=Replicate(),
                                                      desired_output_layouts=Shard(1))
    if not isinstance(model.norm, nn.Identity):
        outer["norm"] = SequenceParallel()
        # The replicated head needs every position: all-gather the sequence before it.
        outer["output"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                             use_local_output=True)
    parallelize_module(model, tp_mesh, outer)
