"""Where a rank sits in the `(pp, dp_replicate, dp_shard, tp)` layout, and the device mesh over it.

Ranks are laid out row-major with tp varying fastest, so the ranks of one tensor-parallel group are
neighbours (on one node, where the bandwidth is), then the ranks that shard one replica (FSDP), then
replicas (HSDP across nodes), then pipeline stages: torchtitan's order.
`init_device_mesh(device, dims.shape, mesh_dim_names=NAMES)` produces the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMES = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    rank: int = 0

    @classmethod
    def resolve(
        cls, pp: int, dp_replicate: int, dp_shard: int, tp: int, world_size: int, rank: int = 0
    ) -> "ParallelDims":
        """Degrees with at most one -1 ("what is left of the world size"); raises ValueError with
        the reason when they cannot multiply to `world_size`."""
        degrees = {"pp": pp, "dp_replicate": dp_replicate, "dp_shard": dp_shard, "tp": tp}
        fill = [k for k, v in degrees.items() if v == -1]
        if len(fill) > 1:
            raise ValueError(f"only one of {', '.join(fill)} may be -1 (filled from the world size)")
        bad = [f"{k}={v}" for k, v in degrees.items() if v < 1 and v != -1]
        if bad:
            raise ValueError(f"{', '.join(bad)}: each degree must be >= 1, or -1 to fill from the world size")
        known = 1
        for k, v in degrees.items():
            if v != -1:
                known *= v
        if fill:
            if world_size % known:
                raise ValueError(
                    f"world size {world_size} is not divisible by the product {known} of the "
                    f"other degrees, so {fill[0]} cannot be filled"
                )
            degrees[fill[0]] = world_size // known
        elif known != world_size:
            raise ValueError(
                f"pp x dp_replicate x dp_shard x tp = {known} but the world size is {world_size}"
            )
        return cls(rank=rank, **degrees)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.pp, self.dp_replicate, self.dp_shard, self.tp)

    @property
    def coords(self) -> dict[str, int]:
        """This rank's index along each mesh dimension."""
        out, rest = {}, self.rank
        for name, size in reversed(list(zip(NAMES, self.shape))):
            out[name] = rest % size
            rest //= size
        return out

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different micro-batches one step sees side by side."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_rank(self) -> int:
        c = self.coords
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"]

    @property
    def tp_rank(self) -> int:
        return self.coords["tp"]

    @property
    def pp_rank(self) -> int:
        return self.coords["pp"]

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.tp
