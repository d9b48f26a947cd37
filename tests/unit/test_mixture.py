"""Weighted mixtures of datasets: config, exact deterministic proportions, per-source orders and
epochs, a resumable state computed from consumed_samples alone, metrics and per-source validation."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

import numpy as np
import pytest
import torch

from dist_llm.config import config_from_dict, load_config
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.loader import TrainBatches
from dist_llm.data.mixture import MAX_BLOCK, MixedOrder, Source, block_counts
from dist_llm.data.order import GlobalOrder
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.data.sources import check_sources
from dist_llm.errors import ConfigError, DataError
from dist_llm.evaluate import evaluate_perplexity, load_trained_model
from tests.conftest import make_trainer
from tests.unit.shard_data import counting_docs, make_dataset

CAUSAL = CausalLMCollator()


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


MIX_YAML = """\
data:
  seq_len: 8
  sources:
    - path: /data/web
      weight: 0.7
    - path: s3://bucket/code/
      weight: 0.3
      name: code-py
"""


# --- config ------------------------------------------------------------------------------------


def test_sources_parse_with_positions_names_and_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "mix.yaml", MIX_YAML))
    assert [(s.path, s.weight, s.name) for s in cfg.data.source_list()] == [
        ("/data/web", 0.7, "web"),
        ("s3://bucket/code/", 0.3, "code-py"),
    ]
    assert cfg.where("data.sources[1].weight").endswith("mix.yaml:7")
    assert cfg.where("data.sources[1]").endswith("mix.yaml:6")
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.data.sources == cfg.data.sources
    assert load_config(None).data.source_list()[0].path == "runs/data"  # no sources: data.path alone


def test_unknown_key_inside_a_source_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "mix.yaml", MIX_YAML.replace("      name: code-py", "      nmae: code-py"))
    with pytest.raises(
        ConfigError,
        match=r"mix\.yaml:8: unknown key data\.sources\[1\]\.nmae "
        r"\(did you mean data\.sources\[1\]\.name\?\)",
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: data\.sources must be a list of mappings"):
        load_config(write(tmp_path, "bad.yaml", "data:\n  seq_len: 8\n  sources: /data/web\n"))


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            ("weight: 0.3", "weight: 0"),
            r"mix\.yaml:7: data\.sources\[1\]\.weight=0\.0 must be a finite number",
        ),
        (("weight: 0.3", "weight: .nan"), r"mix\.yaml:7: data\.sources\[1\]\.weight=nan"),
        (
            ("name: code-py", "name: web"),
            r"mix\.yaml:8: data\.sources\[1\]\.name='web' is also the name of "
            r"data\.sources\[0\]",
        ),
        (("name: code-py", "name: a/b"), r"data\.sources\[1\]\.name='a/b' must be letters"),
        (("path: /data/web", "path: ''"), r"mix\.yaml:4: data\.sources\[0\]\.path is empty"),
    ],
)
def test_bad_sources_fail_validation_naming_file_and_line(tmp_path, edit, message):
    cfg = load_config(write(tmp_path, "mix.yaml", MIX_YAML.replace(*edit)))
    with pytest.raises(ConfigError, match=message):
        cfg.validate(world_size=1)


def test_sources_from_an_override_and_errors_naming_it():
    cfg = load_config(None, ["data.sources=[{path: /a/web, weight: 2}, {path: /b/code}]"])
    assert [(s.name, s.weight) for s in cfg.data.source_list()] == [("web", 2.0), ("code", 1.0)]
    bad = load_config(None, ["data.sources=[{path: /a/web, weight: -1}]"])
    with pytest.raises(ConfigError, match=r"override 'data\.sources=.*': data\.sources\[0\]\.weight=-1"):
        bad.validate(world_size=1)


# --- the mixing order --------------------------------------------------------------------------


def test_block_counts_are_exact_for_integer_ratios():
    assert block_counts([0.7, 0.3]) == [7, 3]
    assert block_counts([1, 1, 1]) == [1, 1, 1]
    assert block_counts([0.5, 0.25, 0.25]) == [2, 1, 1]
    assert block_counts([3.0]) == [1]
    approx = block_counts([1.0, math.sqrt(2)])
    assert sum(approx) == MAX_BLOCK and abs(approx[0] / MAX_BLOCK - 1 / (1 + math.sqrt(2))) < 1 / MAX_BLOCK
    with pytest.raises(DataError, match="no samples"):
        block_counts([1.0, 1e-5])


def _mixed(sizes=(50, 7), weights=(0.7, 0.3)) -> MixedOrder:
    return MixedOrder(list(sizes), list(weights), [11, 22], mix_seed=5)


def test_every_window_holds_the_weights_within_one_block():
    order = _mixed()
    sources = np.array([s for s, _ in order.sample_ids(0, 2000)])
    assert order.block == 10
    for window in (10, 37, 200, 1000):
        for start in range(0, 2000 - window, 13):
            share = np.mean(sources[start : start + window] == 0)
            assert abs(share * window - 0.7 * window) <= order.block, (window, start)
    assert np.mean(sources == 0) == 0.7  # whole blocks: exact
    assert not np.array_equal(sources[:10], sources[10:20])  # slots are shuffled per block


def test_each_source_follows_its_own_order_and_a_small_one_repeats():
    order = _mixed()
    pairs = order.sample_ids(0, 400)
    for source, (size, seed) in enumerate([(50, 11), (7, 22)]):
        mine = [sample for s, sample in pairs if s == source]
        assert mine == GlobalOrder(size, seed).sample_ids(0, len(mine))
    assert order.epochs(400) == [280 // 50, 120 // 7]


def test_positions_are_computed_not_replayed_and_match_counting():
    order = _mixed()
    pairs = order.sample_ids(0, 333)
    for consumed in (0, 1, 9, 10, 11, 123, 333):
        counted = [sum(1 for s, _ in pairs[:consumed] if s == i) for i in range(2)]
        assert order.positions(consumed) == counted
    far = 10**12 + 7  # a trillion samples in: still one block of work
    assert sum(_mixed().positions(far)) == far
    assert _mixed().sample_ids(far, 5) == _mixed().sample_ids(far, 5)


def test_slices_anywhere_match_one_long_read():
    whole = _mixed().sample_ids(0, 300)
    for start, count in ((0, 5), (7, 31), (99, 101), (290, 10)):
        assert _mixed().sample_ids(start, count) == whole[start : start + count]


# --- batches from a mixture --------------------------------------------------------------------

GLOBAL, MICRO, SEQ = 8, 2, 8


@pytest.fixture
def two_sources(tmp_path) -> list[Source]:
    # Distinct token ranges tell the sources apart in a batch: web < 100000 <= code.
    web = make_dataset(
        str(tmp_path / "web"), {"train": counting_docs(60), "validation": counting_docs(8)}, shard_tokens=80
    )
    code = make_dataset(
        str(tmp_path / "code"),
        {"train": counting_docs(8, first_token=100_000), "validation": counting_docs(8, first_token=100_000)},
        40,
    )
    return [
        Source("web", 0.75, PackedSamples(TokenShards(web, "train"), SEQ)),
        Source("code", 0.25, PackedSamples(TokenShards(code, "train"), SEQ)),
    ]


def _ranks(sources: list[Source], world: int) -> list[TrainBatches]:
    return [TrainBatches(sources, CAUSAL, 99, GLOBAL, MICRO, rank, world) for rank in range(world)]


def _global_step(ranks: list[TrainBatches]) -> torch.Tensor:
    return torch.cat([batch["input_ids"] for r in ranks for batch in r.next_step()])


def test_mixture_batches_follow_the_weights_and_resume_on_any_world_size(two_sources):
    straight = _ranks(two_sources, 1)
    expected = [_global_step(straight) for _ in range(40)]
    code_rows = sum(int((x[:, 0] >= 100_000).sum()) for x in expected)
    assert code_rows == 40 * GLOBAL // 4
    assert two_sources[1].samples.num_samples < 20  # the small source went round several epochs

    first = _ranks(two_sources, 2)
    for step in range(13):
        assert torch.equal(_global_step(first), expected[step])
    saved = json.loads(json.dumps(asdict(first[1].state())))
    assert saved["consumed_samples"] == 13 * GLOBAL and set(saved["sources"]) == {"web", "code"}
    assert len(json.dumps(saved)) < 300
    for world in (1, 4):
        resumed = _ranks(two_sources, world)
        for r in resumed:
            r.load_state(saved)
        for step in range(13, 20):
            assert torch.equal(_global_step(resumed), expected[step]), (world, step)


def test_source_counts_and_epochs_come_from_consumed_samples(two_sources):
    batches = _ranks(two_sources, 1)[0]
    for _ in range(10):
        batches.next_step()
    assert batches.source_samples() == {"web": 60, "code": 20}
    state = batches.state()
    assert state.epoch == 20 // two_sources[1].samples.num_samples


def test_resume_refuses_a_changed_source_or_weight(two_sources):
    saved = asdict(_ranks(two_sources, 1)[0].state())
    reweighted = [Source("web", 0.5, two_sources[0].samples), Source("code", 0.5, two_sources[1].samples)]
    with pytest.raises(DataError, match=r"source weights changed"):
        _ranks(reweighted, 1)[0].load_state(saved)
    other = [two_sources[0], Source("code", 0.25, two_sources[0].samples)]
    with pytest.raises(DataError, match=r"data of source\(s\) \['code'\] changed"):
        _ranks(other, 1)[0].load_state(saved)
    with pytest.raises(DataError, match=r"sources were \['code', 'web'\], now one unnamed"):
        _ranks([Source("", 1.0, two_sources[0].samples)], 1)[0].load_state(saved)


def test_check_sources_refuses_mixed_tokenizers_and_short_splits(tmp_path):
    a = make_dataset(str(tmp_path / "a"), {"train": counting_docs(9), "validation": counting_docs(3)}, 50)
    b = make_dataset(
        str(tmp_path / "b"),
        {"train": counting_docs(9), "validation": counting_docs(3)},
        50,
        tokenizer_sha="1" * 64,
    )
    cfg = load_config(None, [f"data.sources=[{{path: {a}}}, {{path: {b}}}]", "data.seq_len=8"])
    with pytest.raises(DataError, match="different tokenizers") as err:
        check_sources(cfg.data)
    assert a in str(err.value) and b in str(err.value)
    cfg = load_config(None, [f"data.sources=[{{path: {a}}}]", "data.seq_len=40"])
    with pytest.raises(DataError, match=r"data\.sources 'a' .*split 'validation' has 36 tokens.*seq_len=40"):
        check_sources(cfg.data)


# --- a training run on a mixture ---------------------------------------------------------------


def _random_dataset(path: str, seed: int, train_tokens: int) -> str:
    rng = np.random.default_rng(seed)
    docs = {
        split: [rng.integers(0, 256, size=int(rng.integers(20, 90)), dtype=np.int32) for _ in range(n // 55)]
        for split, n in (("train", train_tokens), ("validation", 1200))
    }
    return make_dataset(path, docs, shard_tokens=700)


def test_training_on_a_mixture_logs_per_source_tokens_and_losses_and_resumes_exactly(tmp_path):
    web = _random_dataset(str(tmp_path / "web"), 1, 6000)
    code = _random_dataset(str(tmp_path / "code"), 2, 1500)
    mix = [
        f"data.sources=[{{path: {web}, weight: 3}}, {{path: {code}, weight: 1}}]",
        "model.vocab_size=256",
        "train.max_steps=6",
        "train.eval_interval=3",
        "checkpoint.interval=3",
    ]

    def metrics(run_dir: str) -> list[dict]:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]

    make_trainer(tmp_path / "straight", "unused", mix, []).fit()
    records = metrics(str(tmp_path / "straight"))
    steps = {r["step"]: r for r in records if "loss" in r}
    assert [steps[s]["tokens_src/web"] + steps[s]["tokens_src/code"] for s in (1, 6)] == [8 * 64, 6 * 8 * 64]
    assert steps[6]["tokens_src/web"] == 3 * steps[6]["tokens_src/code"]
    assert all(r["data_time_s"] >= 0 for r in steps.values())
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    for r in evals:
        assert r["val_loss"] == pytest.approx(0.75 * r["val_loss/web"] + 0.25 * r["val_loss/code"], rel=1e-12)
    # `dist-llm eval` of the run: every source's whole validation split, weighted the same way.
    result = evaluate_perplexity(load_trained_model(str(tmp_path / "straight")), batch_size=4)
    assert result["val_loss"] == pytest.approx(0.75 * result["val_loss/web"] + 0.25 * result["val_loss/code"])
    windows = [(TokenShards(path, "validation").num_tokens - 1) // 64 for path in (web, code)]
    assert result["val_tokens"] == 64 * sum(windows)

    resumed = tmp_path / "resumed"
    make_trainer(resumed, "unused", [*mix, "train.exit_at_step=3"], []).fit()
    make_trainer(resumed, "unused", [*mix, "checkpoint.resume=auto"], []).fit()
    again = {r["step"]: r for r in metrics(str(resumed)) if "loss" in r}
    for step in range(1, 7):
        for key in ("loss", "tokens_src/web", "tokens_src/code"):
            assert again[step][key] == steps[step][key], (step, key)
