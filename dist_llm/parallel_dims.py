"""Where a rank sits in the DP x TP x PP layout.

Ranks are laid out as a (pp, dp, tp) grid with tp varying fastest, so the ranks of one
tensor-parallel group are neighbours (on one node, where the bandwidth is), then data-parallel
replicas, then pipeline stages. `torch.distributed.device_mesh.init_device_mesh(..., (pp, dp, tp))`
produces the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from dist_llm.config import EngineConfig


@dataclass(frozen=True)
class ParallelDims:
    dp: int
    tp: int
    pp: int
    rank: int

    @classmethod
    def from_config(cls, engine: EngineConfig, rank: int, world_size: int) -> "ParallelDims":
        return cls(dp=engine.data_parallel_size(world_size), tp=engine.tp, pp=engine.pp, rank=rank)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    @property
    def mesh_shape(self) -> tuple[int, int, int]:
        """(pp, dp, tp), for `init_device_mesh(device, mesh_shape, mesh_dim_names=("pp", "dp", "tp"))`."""
        return (self.pp, self.dp, self.tp)
