"""`step_if_finite`: with fused AdamW the skip is decided on the device (a tensor flag, no host
sync) and a skipped step leaves weights, moments and the step count exactly as they were; other
kernels decide on the host. A finite step equals a plain `optimizer.step()` bitwise."""

import copy

import pytest
import torch
from torch import nn

from dist_llm.engine.optim import step_if_finite


def _model_and_optimizer(fused: bool) -> tuple[nn.Module, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused, foreach=None if fused else False)
    return model, optimizer


def _backward(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    model(torch.ones(2, 8)).square().sum().backward()


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})


def _assert_equal(a: dict, b: dict) -> None:
    flat_a, spec_a = torch.utils._pytree.tree_flatten(a)
    flat_b, spec_b = torch.utils._pytree.tree_flatten(b)
    assert spec_a == spec_b
    for x, y in zip(flat_a, flat_b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize("fused", [True, False])
def test_finite_step_equals_a_plain_step_and_a_skipped_one_changes_nothing(fused):
    model, optimizer = _model_and_optimizer(fused)
    reference, reference_opt = _model_and_optimizer(fused)
    for _ in range(2):  # two real steps, so the moments and step count are not at their initial values
        _backward(model)
        skipped = step_if_finite(optimizer, torch.tensor(True))
        _backward(reference)
        reference_opt.step()
        assert not bool(skipped)
    _assert_equal(_state(model, optimizer), _state(reference, reference_opt))

    before = _state(model, optimizer)
    _backward(model)
    skipped = step_if_finite(optimizer, torch.tensor(False))
    assert bool(skipped)
    # fused: a device flag, for the caller to read later; otherwise decided (and synced) here.
    assert isinstance(skipped, torch.Tensor) if fused else skipped is True
    assert not hasattr(optimizer, "found_inf")
    _assert_equal(_state(model, optimizer), before)
