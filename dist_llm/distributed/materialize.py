"""Give a model that was built and parallelized on the meta device its memory and its values,
identical whatever the layout, without any rank ever holding the whole model.

The values come from an unsharded skeleton of the same model, materialized one *unit* at a time
(each Transformer block, then everything outside the blocks): the unit's tensors get memory, the
model's own `init_weights()` runs under a seed derived from the unit's name (tensors of the other
units are still on the meta device, where initializers do nothing and draw no random numbers), and
every rank copies its own shard of each tensor out of the unit. So a block's initial weights depend
only on the run seed and the block's name: equal on 1 rank, under FSDP2, TP or PP, and peak extra
memory is one unit (the largest block, or the embedding), not the model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from dist_llm.seeding import derive_seed

FullTensor = Callable[[str], torch.Tensor]
"""A parameter/buffer name -> its full, unsharded value (e.g. read from a pretrained model)."""

Gather = Callable[[list[torch.Tensor]], AbstractContextManager]
"""Makes tensors whole while their values are written (DeepSpeed ZeRO-3 partitions)."""


def unit_prefixes(model: nn.Module) -> list[str]:
    """The blocks of every `layers` stack ("layers.3", "encoder.layers.0", ...), then "" for the rest."""
    prefixes = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, (nn.ModuleDict, nn.ModuleList)):
            prefixes += [f"{name}.{key}" for key, _ in module.named_children()]
    return [*prefixes, ""]


def _unit_of(name: str, prefixes: list[str]) -> str:
    return next((p for p in prefixes if p and name.startswith(p + ".")), "")


def named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer under every name it has (a tied weight under each)."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
    else:
        module._buffers[leaf] = value


def _move(skeleton: nn.Module, names: list[str], device: torch.device | str) -> None:
    """Give the named tensors of the skeleton, and every other name of the same tensors (a tied
    head of a pipeline's last stage is the embedding), (empty) storage on `device`."""
    current = list(named_tensors(skeleton))
    wanted = {id(t) for name, t in current if name in names}
    moved: dict[int, torch.Tensor] = {}
    for name, old in current:
        if id(old) in wanted:
            if id(old) not in moved:
                moved[id(old)] = torch.empty_like(old, device=device)
            _set(skeleton, name, moved[id(old)])


def local_shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `full`, laid out like `like` (a DTensor, or a plain tensor: all of it).
    No communication: every rank holds the same full tensor."""
    if isinstance(like, DTensor):
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()
    return full


@torch.no_grad()
def copy_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Write this rank's shard of `full` into `target` (a parameter, buffer or DTensor)."""
    local = target.to_local() if isinstance(target, DTensor) else target
    local.copy_(local_shard(full.to(device=local.device, dtype=local.dtype), target))


def _tie_groups(model: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def materialize(
    model: nn.Module, skeleton: nn.Module, device: torch.device, seed: int, source: FullTensor | None = None
) -> None:
    """Allocate `model`'s local shards on `device` and fill them (`fill`)."""
    ties = _tie_groups(model)
    model.to_empty(device=device)
    for names in ties:  # to_empty gives each name of a tied weight its own tensor: tie them again
        for name in names[1:]:
            _set(model, name, model.get_parameter(names[0]))
    fill(model, skeleton, device, seed, source)


def fill(
    model: nn.Module,
    skeleton: nn.Module,
    device: torch.device,
    seed: int,
    source: FullTensor | None = None,
    gather: Gather = lambda tensors: nullcontext(),
) -> None:
    """Write `model`'s values, unit by unit, from `skeleton` (an unsharded meta-device build of the
    same model, consumed here): initialized from `seed`, or taken from `source` (pretrained weights)
    when given. `gather` makes a tensor writable in full where the engine partitions it itself."""
    targets = dict(named_tensors(model))
    prefixes = unit_prefixes(skeleton)
    by_unit: dict[str, list[str]] = {}
    for name, _ in named_tensors(skeleton):
        if name in targets:  # a pipeline stage holds only its own units
            by_unit.setdefault(_unit_of(name, prefixes), []).append(name)
    for unit, names in by_unit.items():
        _move(skeleton, names, device)
        torch.manual_seed(derive_seed(seed, f"init/{unit or 'root'}"))
        skeleton.init_weights()  # tensors outside this unit are on meta: untouched, no RNG drawn
        values = dict(named_tensors(skeleton))
        for name in names:  # one tensor at a time: offloaded partitions swap in through few buffers
            with gather([targets[name]]):
                copy_into(
                    targets[name],
                    source(name) if source is not None and _is_param(skeleton, name) else values[name],
                )
        _move(skeleton, names, "meta")


def _is_param(model: nn.Module, name: str) -> bool:
    module_name, _, leaf = name.rpartition(".")
    return leaf in model.get_submodule(module_name)._parameters
