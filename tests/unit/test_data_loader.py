"""The training data path: shards -> one flat token stream -> packed windows -> per-rank batches.

Datasets are written directly in the manifest format (milliseconds, no tokenizer training), with
token values that encode their own position, so any stitching or slicing mistake shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import torch

from data_prep.manifest import SHARD_TABLE_NAME, Manifest, read_manifest, shard_schema, write_manifest
from dist_llm.config import load_config
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.loader import DataState, TrainBatches, eval_batches
from dist_llm.data.mixture import Source
from dist_llm.data.order import GlobalOrder
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import ConfigError, DataError
from tests.unit.shard_data import counting_docs, make_dataset

CAUSAL = CausalLMCollator()


def _batch(samples: PackedSamples, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = CAUSAL(samples.windows(ids), [])
    return batch["input_ids"], batch["labels"]


@pytest.fixture
def counting_dataset(tmp_path) -> tuple[str, np.ndarray]:
    """Several train shards (with shard boundaries inside the stream) and a validation split."""
    docs = counting_docs(40)
    data_dir = make_dataset(
        str(tmp_path / "ds"), {"train": docs, "validation": counting_docs(12)}, shard_tokens=50
    )
    return data_dir, np.concatenate(docs).astype(np.int64)


# --- TokenShards -------------------------------------------------------------------------------


def test_read_stitches_across_shards_exactly(counting_dataset):
    data_dir, stream = counting_dataset
    shards = TokenShards(data_dir, "train")
    assert len(read_manifest(data_dir).shards["train"]) >= 5
    assert shards.num_tokens == len(stream)
    assert np.array_equal(shards.read(0, len(stream)), stream)
    # Every window of a few lengths, so every shard boundary is crossed at every offset.
    for length in (1, 13, 64, 130):
        for start in range(0, len(stream) - length + 1, 3):
            assert np.array_equal(shards.read(start, length), stream[start : start + length]), (start, length)


def test_read_with_non_counting_values_matches_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 2**32 - 1, size=int(rng.integers(1, 30)), dtype=np.uint32) for _ in range(30)]
    data_dir = make_dataset(str(tmp_path / "ds"), {"train": docs}, shard_tokens=40)
    shards = TokenShards(data_dir, "train")
    stream = np.concatenate(docs).astype(np.int64)
    assert np.array_equal(shards.read(0, shards.num_tokens), stream)
    assert np.array_equal(shards.read(37, 100), stream[37:137])


def test_read_outside_stream_raises(counting_dataset):
    data_dir, stream = counting_dataset
    shards = TokenShards(data_dir, "train")
    with pytest.raises(IndexError):
        shards.read(len(stream) - 3, 4)
    with pytest.raises(IndexError):
        shards.read(-1, 2)


def _first_shard(data_dir: str) -> tuple[str, Manifest]:
    manifest = read_manifest(data_dir)
    return os.path.join(data_dir, manifest.shards["train"].path(0)), manifest


def test_token_count_disagreeing_with_manifest_raises_naming_file(counting_dataset):
    data_dir, _ = counting_dataset
    path, manifest = _first_shard(data_dir)
    train = manifest.shards["train"]
    tokens = train.tokens.copy()
    tokens[0] += 1
    write_manifest(data_dir, manifest.header, manifest.shards | {"train": replace(train, tokens=tokens)})
    with pytest.raises(DataError, match="manifest says") as err:
        TokenShards(data_dir, "train").read(0, 1)
    assert path in str(err.value)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.3, 0.9])
def test_truncated_shard_raises_naming_file(counting_dataset, keep_fraction):
    data_dir, _ = counting_dataset
    path, _ = _first_shard(data_dir)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep_fraction)])
    with pytest.raises(DataError) as err:
        TokenShards(data_dir, "train").read(0, 1)
    assert path in str(err.value)


def test_missing_shard_raises_naming_file(counting_dataset):
    data_dir, _ = counting_dataset
    path, _ = _first_shard(data_dir)
    os.remove(path)
    with pytest.raises(DataError) as err:
        TokenShards(data_dir, "train").read(0, 1)
    assert path in str(err.value)


def _mapped_shards(data_dir: str) -> set[str]:
    """Shards under `data_dir` that this process has memory-mapped right now (the manifest's shard
    table stays mapped while the split is open)."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        paths = {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}
    return {p for p in paths if p.startswith(data_dir) and os.path.basename(p) != SHARD_TABLE_NAME}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts mappings through /proc")
def test_shards_open_lazily_and_at_most_max_open_stay_mapped(counting_dataset):
    data_dir, stream = counting_dataset
    shards = TokenShards(data_dir, "train", max_open=2)
    assert len(shards.table) >= 5 and not _mapped_shards(data_dir)
    most = 0
    for start in [*range(0, len(stream) - 7, 7), *range(len(stream) - 8, 0, -11)]:
        assert np.array_equal(shards.read(start, 8), stream[start : start + 8])
        most = max(most, len(_mapped_shards(data_dir)))
    assert most == 2


def test_a_broken_shard_fails_when_read_naming_it_not_at_open(counting_dataset):
    data_dir, stream = counting_dataset
    train = read_manifest(data_dir).shards["train"]
    last = train.path(len(train) - 1)
    os.remove(os.path.join(data_dir, last))
    shards = TokenShards(data_dir, "train")
    assert np.array_equal(shards.read(0, 20), stream[:20])
    with pytest.raises(DataError, match=last):
        shards.read(len(stream) - 1, 1)


def test_max_open_shards_below_one_is_refused():
    with pytest.raises(ConfigError, match="data.max_open_shards=0"):
        load_config(None, ["data.max_open_shards=0"]).validate()


def test_any_corrupted_header_or_footer_byte_raises_data_error_or_reads_right_count(counting_dataset):
    """Whatever a flipped byte breaks (schema, footer, offsets), the loader either reports a
    DataError naming the file or maps the right number of uint32 tokens; no raw Arrow error escapes."""
    data_dir, _ = counting_dataset
    path, manifest = _first_shard(data_dir)
    expected = int(manifest.shards["train"].tokens[0])
    original = open(path, "rb").read()
    # Header and footer hold the schema and record-batch metadata; the middle is token data.
    positions = [*range(0, 200), *range(len(original) - 300, len(original))]
    errors = 0
    for pos in positions:
        corrupt = bytearray(original)
        corrupt[pos] ^= 0xFF
        with open(path, "wb") as f:
            f.write(corrupt)
        try:
            values = TokenShards._map(path, path, expected, shard_schema(manifest.token_type))
        except DataError as e:
            assert path in str(e)
            errors += 1
            continue
        assert values.dtype == np.uint32 and len(values) == expected
    assert errors > 0


def test_missing_split_raises(tmp_path):
    data_dir = make_dataset(str(tmp_path / "ds"), {"train": counting_docs(5)}, shard_tokens=50)
    with pytest.raises(DataError, match="validation"):
        TokenShards(data_dir, "validation")


def test_fingerprint_depends_on_shard_contents(tmp_path):
    a = make_dataset(str(tmp_path / "a"), {"train": counting_docs(10)}, shard_tokens=30)
    b = make_dataset(str(tmp_path / "b"), {"train": counting_docs(10)}, shard_tokens=30)
    c = make_dataset(str(tmp_path / "c"), {"train": counting_docs(11)}, shard_tokens=30)
    assert TokenShards(a, "train").fingerprint == TokenShards(b, "train").fingerprint
    assert TokenShards(a, "train").fingerprint != TokenShards(c, "train").fingerprint


# --- PackedSamples -----------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 8, 31, 64])
def test_packed_samples_are_shifted_windows(counting_dataset, seq_len):
    data_dir, stream = counting_dataset
    samples = PackedSamples(TokenShards(data_dir, "train"), seq_len)
    assert samples.num_samples == (len(stream) - 1) // seq_len
    ids = [0, 1, samples.num_samples // 2, samples.num_samples - 1]
    inputs, labels = _batch(samples, ids)
    assert inputs.shape == labels.shape == (len(ids), seq_len)
    assert inputs.dtype == labels.dtype == torch.int64
    for row, s in enumerate(ids):
        assert torch.equal(inputs[row], torch.from_numpy(stream[s * seq_len : s * seq_len + seq_len]))
        assert torch.equal(labels[row], torch.from_numpy(stream[s * seq_len + 1 : s * seq_len + seq_len + 1]))


def test_sample_count_uses_every_possible_window(tmp_path):
    # 21 tokens, seq_len 4: windows need 5 tokens at 0, 4, 8, 12, 16 -> 5 samples (the last ends at 20).
    data_dir = make_dataset(str(tmp_path / "ds"), {"train": [np.arange(21)]}, shard_tokens=8)
    samples = PackedSamples(TokenShards(data_dir, "train"), 4)
    assert samples.num_samples == 5
    inputs, labels = _batch(samples, [4])
    assert inputs.tolist() == [[16, 17, 18, 19]] and labels.tolist() == [[17, 18, 19, 20]]


def test_split_smaller_than_one_sample_names_seq_len_key(tmp_path):
    data_dir = make_dataset(str(tmp_path / "ds"), {"train": [np.arange(8)]}, shard_tokens=8)
    shards = TokenShards(data_dir, "train")
    assert PackedSamples(shards, 7).num_samples == 1  # exactly seq_len + 1 tokens is enough
    with pytest.raises(DataError, match=r"data\.seq_len"):
        PackedSamples(shards, 8)


# --- TrainBatches ------------------------------------------------------------------------------

GLOBAL, MICRO, SEED, SEQ = 8, 2, 1234, 8


def _global_batch(batches: list[TrainBatches]) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every rank, concatenated in rank order."""
    inputs, labels = [], []
    for b in batches:
        for batch in b.next_step():
            x, y = batch["input_ids"], batch["labels"]
            assert x.shape == (MICRO, SEQ)
            inputs.append(x)
            labels.append(y)
    return torch.cat(inputs), torch.cat(labels)


def _ranks(samples: PackedSamples, world_size: int, seed: int = SEED) -> list[TrainBatches]:
    return [
        TrainBatches([Source("", 1.0, samples)], CAUSAL, seed, GLOBAL, MICRO, rank, world_size)
        for rank in range(world_size)
    ]


@pytest.fixture
def samples(counting_dataset) -> PackedSamples:
    data_dir, _ = counting_dataset
    return PackedSamples(TokenShards(data_dir, "train"), SEQ)


def test_global_batch_is_independent_of_world_size_across_epochs(samples):
    steps = 3 * samples.num_samples // GLOBAL + 2  # about three epochs, so boundaries fall mid-batch
    assert samples.num_samples % GLOBAL != 0
    single = _ranks(samples, 1)
    reference = [_global_batch(single) for _ in range(steps)]
    for world_size in (2, 4):
        ranks = _ranks(samples, world_size)
        assert all(len(r.next_step()) == GLOBAL // world_size // MICRO for r in _ranks(samples, world_size))
        for step in range(steps):
            x, y = _global_batch(ranks)
            assert torch.equal(x, reference[step][0]), f"world {world_size} step {step}"
            assert torch.equal(y, reference[step][1]), f"world {world_size} step {step}"


def test_causal_batches_are_the_plain_windows_of_the_seeded_order(samples):
    """What the loader produced before mixtures and collators existed, written out directly:
    the causal collator over a single source reproduces it bitwise."""
    order = GlobalOrder(samples.num_samples, SEED)
    ranks = _ranks(samples, 2)
    for step in range(2 * samples.num_samples // GLOBAL):
        for rank, batches in enumerate(ranks):
            ids = order.sample_ids(step * GLOBAL + rank * (GLOBAL // 2), GLOBAL // 2)
            for i, batch in enumerate(batches.next_step()):
                x, y = batch["input_ids"], batch["labels"]
                rows = torch.from_numpy(
                    np.stack(
                        [samples.shards.read(s * SEQ, SEQ + 1) for s in ids[i * MICRO : (i + 1) * MICRO]]
                    )
                )
                assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
                assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()


def test_each_epoch_visits_every_sample_once(samples):
    single = _ranks(samples, 1)[0]
    starts = []
    steps = samples.num_samples // GLOBAL
    for _ in range(steps):
        for x in (batch["input_ids"] for batch in single.next_step()):
            starts.extend((x[:, 0] // SEQ).tolist())  # counting tokens: first input is s * SEQ
    assert len(set(starts)) == len(starts) == steps * GLOBAL
    assert starts != sorted(starts)  # shuffled


def test_seed_changes_the_order(samples):
    a = _global_batch(_ranks(samples, 1, seed=1))[0]
    b = _global_batch(_ranks(samples, 1, seed=2))[0]
    assert not torch.equal(a, b)


def test_state_is_small_and_tracks_consumption(samples):
    batches = _ranks(samples, 2)[1]
    assert [f.name for f in fields(DataState)] == [
        "seed",
        "consumed_samples",
        "epoch",
        "fingerprint",
        "seq_len",
        "sources",
    ]
    for _ in range(samples.num_samples // GLOBAL + 1):
        batches.next_step()
    state = batches.state()
    assert state.consumed_samples == (samples.num_samples // GLOBAL + 1) * GLOBAL
    assert state.epoch == 1
    assert state.seed == SEED and state.seq_len == SEQ
    assert state.fingerprint == samples.shards.fingerprint and state.sources == {}
    assert len(json.dumps(asdict(state))) < 200


@pytest.mark.parametrize("resume_world", [1, 2, 4])
def test_load_state_continues_with_the_same_global_batch(samples, resume_world):
    ranks = _ranks(samples, 2)
    for _ in range(samples.num_samples // GLOBAL):  # end just before an epoch boundary
        _global_batch(ranks)
    saved = json.loads(json.dumps(asdict(ranks[0].state())))  # what a checkpoint stores
    expected = [_global_batch(ranks) for _ in range(3)]

    resumed = _ranks(samples, resume_world)
    for r in resumed:
        r.load_state(saved)
    for step in range(3):
        x, y = _global_batch(resumed)
        assert torch.equal(x, expected[step][0]) and torch.equal(y, expected[step][1]), step


@pytest.mark.parametrize(
    "key,value", [("fingerprint", "0123456789abcdef"), ("seed", SEED + 1), ("seq_len", SEQ * 2)]
)
def test_load_state_rejects_other_data_seed_or_seq_len(samples, key, value):
    batches = _ranks(samples, 1)[0]
    state = asdict(batches.state())
    state[key] = value
    with pytest.raises(DataError, match=key):
        batches.load_state(state)
    assert batches.consumed_samples == 0


def test_indivisible_batch_raises(samples):
    with pytest.raises(DataError, match="not divisible"):
        TrainBatches([Source("", 1.0, samples)], CAUSAL, SEED, 8, 3, 0, 1)
    with pytest.raises(DataError, match="not divisible"):
        TrainBatches([Source("", 1.0, samples)], CAUSAL, SEED, 8, 2, 0, 3)


# --- eval_batches ------------------------------------------------------------------------------


def _first_inputs(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    """Sample ids of eval batches over a counting stream."""
    return [int(v) // SEQ for batch in batches for v in batch["input_ids"][:, 0]]


def test_eval_batches_deterministic_and_partitioned(samples):
    micro, num_batches = 2, 3
    one = eval_batches(samples, CAUSAL, SEED, micro, num_batches, 0, 1)
    again = eval_batches(samples, CAUSAL, SEED, micro, num_batches, 0, 1)
    assert len(one) == num_batches
    assert all(torch.equal(a[k], b[k]) for a, b in zip(one, again) for k in ("input_ids", "labels"))
    for world_size in (2, 4):
        per_rank = [
            _first_inputs(eval_batches(samples, CAUSAL, SEED, micro, num_batches, r, world_size))
            for r in range(world_size)
        ]
        seen = [s for ids in per_rank for s in ids]
        assert len(seen) == len(set(seen)) == micro * num_batches * world_size  # no overlap
        assert sorted(seen) == list(range(len(seen)))  # the first windows, no shuffling
        assert all(len(ids) == micro * num_batches for ids in per_rank)


def test_eval_batches_capped_by_split_size(tmp_path):
    data_dir = make_dataset(
        str(tmp_path / "ds"),
        {"train": [np.arange(100)], "validation": [np.arange(5 * SEQ + 1)]},
        shard_tokens=64,
    )
    val = PackedSamples(TokenShards(data_dir, "validation"), SEQ)
    assert val.num_samples == 5
    per_rank = [_first_inputs(eval_batches(val, CAUSAL, SEED, 2, 10, r, 2)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == [0, 1, 2, 3, 4]
    assert not set(per_rank[0]) & set(per_rank[1])


# --- dist-llm bench dataloader -----------------------------------------------------------------


def test_bench_dataloader_reports_the_loader_share_of_a_training_step(dataset):
    from dist_llm.bench.dataloader import bench_dataloader, format_table
    from tests.conftest import REPO, SMALL_MODEL

    overrides = [f"data.path={dataset}", "launch.nproc_per_node=1", *SMALL_MODEL, "train.precision=fp32"]
    (result,) = bench_dataloader(str(REPO / "configs" / "tiny.yaml"), overrides, [], steps=4, warmup=1)
    assert result.location == dataset and result.ranks == 1
    assert 0 < result.loader_ms and 0 < result.train_data_ms <= result.train_data_max_ms
    assert result.ratio == pytest.approx(result.train_data_ms / result.train_step_ms)
    assert 0 < result.ratio < 0.5
    assert format_table([result]).splitlines()[2].startswith(f"{dataset} | 1 | ")
