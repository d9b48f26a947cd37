"""Collators turn raw windows into model inputs; random objectives get per-sample seeds that depend
only on the train seed and the global sample index (same on any world size, after any resume)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from dist_llm.config import DataConfig
from dist_llm.data import collate
from dist_llm.data.batch import Window
from dist_llm.data.collate import CausalLMCollator, build_collator
from dist_llm.data.loader import TrainBatches, eval_batches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import ConfigError
from tests.unit.shard_data import counting_docs, make_dataset

MASK_ID, IGNORE = -1, -100


class ToyMaskedLM:
    """The shape of a masked-LM collator (issue 6): no shift, a seeded 25% of positions masked."""

    def window(self, seq_len: int) -> Window:
        return Window(stride=seq_len, length=seq_len)

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> dict[str, torch.Tensor]:
        masked = np.stack([np.random.default_rng(seed).random(windows.shape[1]) < 0.25 for seed in seeds])
        inputs = np.where(masked, MASK_ID, windows)
        labels = np.where(masked, windows, IGNORE)
        return {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


def test_causal_collator_shifts_by_one():
    windows = np.arange(12, dtype=np.int64).reshape(2, 6)
    batch = CausalLMCollator()(windows, [0, 0])
    inputs, labels = batch["input_ids"], batch["labels"]
    assert CausalLMCollator().window(5) == Window(stride=5, length=6)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10]]
    assert labels.tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]]


def test_objectives_come_from_the_registry(monkeypatch):
    assert isinstance(build_collator(DataConfig(objective="causal"), {}), CausalLMCollator)
    monkeypatch.setitem(collate.COLLATORS, "toy_mlm", lambda data, tokens: ToyMaskedLM())
    assert isinstance(build_collator(DataConfig(objective="toy_mlm"), {}), ToyMaskedLM)
    with pytest.raises(ConfigError, match=r"data\.objective='t5' has no collator; choose from \['causal', "):
        build_collator(DataConfig(objective="t5"), {})


GLOBAL, MICRO, SEQ = 8, 2, 8


@pytest.fixture
def mlm_samples(tmp_path) -> PackedSamples:
    docs = {"train": counting_docs(40), "validation": counting_docs(9)}
    data_dir = make_dataset(str(tmp_path / "ds"), docs, shard_tokens=64)
    return PackedSamples(TokenShards(data_dir, "train"), SEQ, ToyMaskedLM().window(SEQ))


def _run(samples: PackedSamples, world: int, steps: int, state: dict | None = None):
    ranks = [
        TrainBatches([Source("", 1.0, samples)], ToyMaskedLM(), 5, GLOBAL, MICRO, r, world)
        for r in range(world)
    ]
    for r in ranks:
        if state:
            r.load_state(state)
    out = []
    for _ in range(steps):
        micro = [mb for r in ranks for mb in r.next_step()]
        out.append((torch.cat([b["input_ids"] for b in micro]), torch.cat([b["labels"] for b in micro])))
    return out, json.loads(json.dumps(asdict(ranks[0].state())))


def test_toy_masked_lm_gets_the_same_masks_on_any_world_size_and_after_resume(mlm_samples):
    assert mlm_samples.num_samples == mlm_samples.shards.num_tokens // SEQ  # no extra label token
    reference, _ = _run(mlm_samples, 1, 10)
    masks = torch.stack([x == MASK_ID for x, _ in reference])
    assert 0.15 < masks.float().mean() < 0.35
    assert len({tuple(row.tolist()) for row in masks.reshape(-1, SEQ)}) > 50  # per-sample, not per-batch
    assert torch.equal(reference[0][1][~masks[0]], torch.full_like(reference[0][1][~masks[0]], IGNORE))

    first, state = _run(mlm_samples, 4, 4)
    rest, _ = _run(mlm_samples, 2, 6, state)
    for step, (x, y) in enumerate(first + rest):
        assert torch.equal(x, reference[step][0]) and torch.equal(y, reference[step][1]), step


def test_eval_masks_are_fixed_per_sample(mlm_samples):
    one_rank = eval_batches(mlm_samples, ToyMaskedLM(), 17, MICRO, 3, 0, 1)
    again = eval_batches(mlm_samples, ToyMaskedLM(), 17, MICRO, 3, 0, 1)
    assert torch.equal(one_rank[0]["input_ids"], again[0]["input_ids"])
    for rank in range(3):  # rank r of 3 evaluates samples r and r + 3
        batch = eval_batches(mlm_samples, ToyMaskedLM(), 17, MICRO, 1, rank, 3)[0]
        x, y = batch["input_ids"], batch["labels"]
        for row, sample in enumerate((rank, rank + 3)):
            ref = one_rank[sample // MICRO]
            ref_x, ref_y = ref["input_ids"][sample % MICRO], ref["labels"][sample % MICRO]
            assert torch.equal(x[row], ref_x) and torch.equal(y[row], ref_y), sample
