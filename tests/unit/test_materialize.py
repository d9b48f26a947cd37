"""The initial weights do not depend on the layout: built on the meta device and materialized
shard by shard, every rank holds exactly its piece of what one process initializes. The sharded
layouts are laid out in this one process with torch's fake process group (no communication, each
rank's shards computed as on a real run)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.placement_types import _StridedShard
from torch.testing._internal.distributed.fake_pg import FakeStore

from dist_llm.config import load_config
from dist_llm.distributed import World
from dist_llm.engine.torch_engine import TorchEngine

TINY = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.max_seq_len=16",
    "data.seq_len=16",
]


def expected_local(full: torch.Tensor, p: DTensor) -> torch.Tensor:
    """This rank's piece by DTensor's rule, written out: along each mesh dimension that shards tensor
    dimension d, torch.chunk into that many pieces and keep the rank's coordinate. FSDP sharding a
    dimension TP already split is a strided shard: it cuts the TP piece, so it comes last."""
    piece = full
    coords = p.device_mesh.get_coordinate()
    order = sorted(range(len(p.placements)), key=lambda d: isinstance(p.placements[d], _StridedShard))
    for mesh_dim in order:
        placement = p.placements[mesh_dim]
        if isinstance(placement, (Shard, _StridedShard)):
            piece = torch.chunk(piece, p.device_mesh.size(mesh_dim), dim=placement.dim)[coords[mesh_dim]]
    return piece


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    engine = TorchEngine(
        load_config(None, TINY), World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    )
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


@pytest.mark.parametrize(
    "world, layout",
    [
        (2, []),  # FSDP2
        (4, ["engine.dp_replicate=2"]),  # HSDP
        (4, ["engine.tp=2"]),  # FSDP2 x TP (vocabulary-parallel embedding)
        (4, ["engine.pp=2"]),  # FSDP2 x PP (tied head copied to the last stage)
        (8, ["engine.tp=2", "engine.pp=2"]),  # all three
    ],
    ids=["fsdp2", "hsdp", "fsdp_tp", "fsdp_pp", "fsdp_tp_pp"],
)
def test_every_rank_holds_its_piece_of_the_one_process_init(reference, world, layout):
    cfg = load_config(None, [*TINY, *layout])
    for rank in range(world):
        dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
        try:
            engine = TorchEngine(
                cfg, World(rank=rank, local_rank=rank, size=world, device=torch.device("cpu"))
            )
            names = dict(engine.model.named_parameters(remove_duplicate=False))
            assert names, "every rank holds some parameters"
            for name, p in names.items():
                full = reference[name]
                if isinstance(p, DTensor):
                    assert p.shape == full.shape, name
                    assert torch.equal(p.to_local(), expected_local(full, p)), (rank, name)
                else:
                    assert torch.equal(p.detach(), full), (rank, name)
        finally:
            dist.destroy_process_group()
