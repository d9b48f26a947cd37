"""Pipeline partitioning and stage splitting, and activation checkpointing, in one process."""

from __future__ import annotations

import pytest
import torch

from dist_llm.distributed.activation_checkpointing import apply_activation_checkpointing
from dist_llm.distributed.compile import apply_compile
from dist_llm.distributed.pipeline import partition_layers, split_pipeline_stage
from dist_llm.models import ModelConfig, build_model

TINY = dict(vocab_size=97, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)


@pytest.mark.parametrize(
    "costs, stages, expected",
    [
        ([1, 1, 1, 1], 2, [(0, 2), (2, 4)]),
        ([1, 1, 1, 1, 1], 2, [(0, 3), (3, 5)]),  # ties: earlier stages take more (the last has the head)
        ([4, 1, 1, 1, 1], 2, [(0, 1), (1, 5)]),
        ([1, 1, 1, 1, 4], 2, [(0, 4), (4, 5)]),
        ([3, 1, 1, 1, 2, 2, 2], 3, [(0, 2), (2, 5), (5, 7)]),
        ([5, 5, 5], 3, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_partition_layers_balances_parameter_counts(costs, stages, expected):
    parts = partition_layers(costs, stages)
    assert [(r.start, r.stop) for r in parts] == expected


def test_partition_layers_needs_a_layer_per_stage():
    with pytest.raises(ValueError, match="non-empty"):
        partition_layers([1, 1], 3)


@pytest.mark.parametrize("tie", [True, False])
def test_pipeline_stages_keep_whole_model_names(tie):
    full = build_model(ModelConfig(**TINY, tie_embeddings=tie))
    keys: dict[str, torch.Tensor] = {}
    for stage in range(3):
        model = build_model(ModelConfig(**TINY, tie_embeddings=tie))
        model.load_state_dict(full.state_dict())
        part = split_pipeline_stage(model, stage, 3).state_dict()
        assert not set(part) & set(keys) - {"tok_embeddings.weight", "output.weight"}
        keys.update(part)
    assert keys.keys() == full.state_dict().keys()
    for name, value in full.state_dict().items():
        assert torch.equal(keys[name], value), name


def _loss_grads_and_saved_bytes(checkpointed: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    if checkpointed:
        apply_activation_checkpointing(model)
    ids = torch.randint(0, TINY["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(1))
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids.roll(-1, dims=1))
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], saved


def test_activation_checkpointing_same_loss_less_saved_memory():
    loss, grads, saved = _loss_grads_and_saved_bytes(checkpointed=False)
    ac_loss, ac_grads, ac_saved = _loss_grads_and_saved_bytes(checkpointed=True)
    assert torch.equal(loss, ac_loss)
    for g, ac_g in zip(grads, ac_grads):
        assert torch.equal(g, ac_g)
    # Only each block's input (and the head's activations) stay alive between forward and backward.
    assert ac_saved < saved / 2, (ac_saved, saved)


def test_compiled_blocks_keep_names_and_numerics():
    def loss_and_grads(compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**TINY))
        names = list(model.state_dict())
        if compiled:
            apply_compile(model)
            assert list(model.state_dict()) == names  # checkpoints stay interchangeable
        ids = torch.randint(0, TINY["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(1))
        loss = model(ids, labels=ids.roll(-1, dims=1))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    loss, grads = loss_and_grads(compiled=False)
    compiled_loss, compiled_grads = loss_and_grads(compiled=True)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
