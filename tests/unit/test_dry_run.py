"""A 70B model laid out on 512 ranks by the engine's own sharding code (meta tensors, fake process
group): no rank holds more than 1.1x its even share of parameters, gradients and optimizer state."""

from __future__ import annotations

import pytest

from dist_llm.bench.dry_run import dry_run
from dist_llm.models import count_params
from dist_llm.models.presets import load_preset

SCALE = ["train.global_batch_size=1024", "train.micro_batch_size=1", "data.seq_len=8192"]


@pytest.mark.parametrize(
    "layout, ranks",
    [
        (["engine.tp=8"], [0, 7, 504, 511]),  # FSDP 64 x TP 8
        (
            ["engine.tp=8", "engine.pp=4"],
            [0, 127, 128, 511],
        ),  # FSDP 16 x TP 8 x PP 4: first/last of stages 0, 1, 3
    ],
    ids=["fsdp64_tp8", "fsdp16_tp8_pp4"],
)
def test_70b_on_512_ranks_no_rank_exceeds_its_share(layout, ranks):
    result = dry_run("70b", [*SCALE, *layout], world=512, ranks=ranks)
    assert result.params == count_params(load_preset("70b")) > 70e9
    assert result.max_over_even <= 1.1, [(s.rank, s.total / result.even_split_bytes) for s in result.shares]
    for share in result.shares:
        # ~2.2 GB of fp32 state per rank against 1.13 TB for the whole model: a shard, not a replica.
        assert share.total < 2.5e9, share
        assert share.checkpoint_bytes == share.param_bytes + share.optimizer_bytes
