"""Shared fixtures: a small generated corpus and tokenizers built from it (session-wide).

Helpers are offered as fixtures, not imported across test modules, so the tests work under
any pytest import mode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data_prep.tokenizer import train_sentencepiece

WORDS = (
    "the a of to and in is that for it with as was on be by this are from or an which at not "
    "data model token shard train loss batch layer memory worker process file line document "
    "value error gradient step learning rate attention head vocabulary sequence window seed "
    "python function class module return object string number list table arrow checkpoint"
).split()
TEST_VOCAB = 512


def make_docs(count: int, seed: int = 0) -> list[str]:
    """Deterministic English-ish documents with punctuation, digits, newlines and non-ASCII."""
    rng = random.Random(seed)
    docs = []
    for index in range(count):
        lines = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
            lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ", 42.", " (é)."]))
        docs.append(f"Doc {index}: " + "\n".join(lines))
    return docs


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    """One {field: text} object per line."""
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    return make_docs(300)


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory: pytest.TempPathFactory, corpus_docs: list[str]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_docs)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory: pytest.TempPathFactory, corpus_docs: list[str]) -> str:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_sentencepiece(corpus_docs, str(out), TEST_VOCAB)


@pytest.fixture
def jsonl_file(tmp_path: Path):
    """`jsonl_file(name, texts)` writes tmp_path/name and returns its path."""
    return lambda name, texts: write_jsonl(tmp_path / name, texts)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, corpus_docs: list[str]) -> Path:
    """A small byte-level BPE trained in-test and saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<mask>"]
    core.train_from_iterator(corpus_docs, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>"
    )
    out = tmp_path_factory.mktemp("hf") / "tokenizer"
    fast.save_pretrained(str(out))
    return out
