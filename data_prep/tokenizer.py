"""Tokenizers: train a sentencepiece model, or load a sentencepiece / local HF tokenizer.

One small `Tokenizer` interface hides the backend so the worker pool, the manifest and later
`generate` never branch on it. Trained models are lossless (identity normalisation, byte
fallback, whitespace kept) because the shards must decode back to exactly the input text.

A document longer than `LONG_CHARS` is tokenized in pieces of at most `PIECE_CHARS` characters
(`encode_long`): a tokenizer needs tens of bytes per character while it encodes, so one 100 MB
document would otherwise take GBs, and sentencepiece is slower per character the longer its
input (16 KiB pieces encode about twice as fast as 64 KiB ones, 1 MiB ones slower still). Pieces
end just before a space that follows a non-space character. Both kinds of tokenizer prep uses
pre-split text there (sentencepiece before each whitespace mark, GPT-2 style byte-level BPE
before a space-led word), so no token spans that point and the pieces' ids equal the whole
document's. Only where the last half of a piece's window has no such space (8 KiB without a
space, say a run of base64) is the cut made mid-word, and there that word is tokenized as two:
the ids differ from the whole document's at that point, the text decodes the same. A tokenizer
that does not split at spaces (it fails a probe sentence encoded in two pieces) refuses
documents over `LONG_CHARS` instead. Shorter documents are always encoded whole.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from data_prep.atomic import atomic_write_bytes
from dist_llm.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NUM_SENTINELS = 32
# Fixed ids 4, 5, 6, then 7.. for the T5 span-corruption sentinels.
SPECIAL_TOKENS = ("<mask>", "<sep>", "<cls>") + tuple(f"<extra_id_{i}>" for i in range(NUM_SENTINELS))
MODEL_TYPES = ("bpe", "unigram")
TOKEN_DTYPE_MAX = 2**32  # shards store uint32 token ids at most
LONG_CHARS = 1 << 20  # longer documents are tokenized in pieces ...
PIECE_CHARS = 1 << 14  # ... of at most this many characters
_PROBE = ("Split text into pieces at spaces", " and check that the ids stay the same.")


def piece_bounds(text: str, limit: int = PIECE_CHARS) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive pieces of at most `limit` (>= 2) characters covering `text`,
    each ending before a space that follows a non-space character in the second half of its
    window, or at the limit when the window has none."""
    start = 0
    while len(text) - start > limit:
        low = start + limit // 2
        stop = text.rfind(" ", low, start + limit)
        while stop >= 0 and text[stop - 1].isspace():
            stop = text.rfind(" ", low, stop)
        stop = stop if stop >= 0 else start + limit
        yield start, stop
        start = stop
    yield start, len(text)


def file_sha256(path: str) -> str:
    """sha256 of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dir_sha256(path: str) -> str:
    """sha256 over every file of a directory (relative name + content), in sorted order."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            digest.update(file_sha256(full).encode())
    return digest.hexdigest()


class Tokenizer:
    """Backend-neutral tokenizer. Ids may be None where a foreign tokenizer lacks that token."""

    kind: str
    path: str
    sha256: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    mask_id: int | None
    sep_id: int | None
    cls_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS (the caller decides those)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _encode_rest(self, text: str) -> list[int]:
        """Ids of `text` as the continuation of a document (no marks for a text's start)."""
        return self.encode(text)

    def splits_at_spaces(self) -> bool:
        """Whether encoding in `piece_bounds` pieces gives the whole text's ids (a probe)."""
        return self.encode("".join(_PROBE)) == self.encode(_PROBE[0]) + self._encode_rest(_PROBE[1])

    def encode_long(self, text: str, dtype: np.dtype) -> np.ndarray:
        """Ids of a document of any length, in `dtype`, encoded `piece_bounds` piece by piece."""
        pieces = []
        for start, stop in piece_bounds(text):
            encode = self.encode if start == 0 else self._encode_rest
            pieces.append(np.asarray(encode(text[start:stop]), dtype=dtype))
        return np.concatenate(pieces)

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary entry (e.g. "<extra_id_0>"), or None if it is not in the vocab."""
        raise NotImplementedError

    def sentinel_ids(self) -> list[int]:
        """Ids of "<extra_id_0>", "<extra_id_1>", ... up to the first one the vocabulary lacks: the
        span-corruption sentinels, in the order T5 uses them."""
        ids = []
        while (token_id := self.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
            ids.append(token_id)
        return ids

    def special_ids(self) -> dict[str, int | None | list[int]]:
        """The ids the manifest records: what each objective's collator needs from the tokenizer."""
        names = ("bos_id", "eos_id", "pad_id", "unk_id", "mask_id", "sep_id", "cls_id")
        return {**{name: getattr(self, name) for name in names}, "sentinel_ids": self.sentinel_ids()}


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece `.model` file."""

    kind = "sentencepiece"

    def __init__(self, path: str) -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"{path}: not a loadable sentencepiece model ({exc})") from exc
        self.path = path
        self.sha256 = file_sha256(path)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id = self._optional(self._sp.bos_id()), self._optional(self._sp.eos_id())
        self.pad_id, self.unk_id = self._optional(self._sp.pad_id()), self._optional(self._sp.unk_id())
        self.mask_id = self.token_to_id("<mask>")
        self.sep_id, self.cls_id = self.token_to_id("<sep>"), self.token_to_id("<cls>")
        self._sp_rest = self._without_dummy_prefix(path)

    def _without_dummy_prefix(self, path: str) -> spm.SentencePieceProcessor:
        """The model with `add_dummy_prefix` off: it marks a text's start as if a space preceded
        it, which a piece in the middle of a document must not get."""
        model = sentencepiece_model_pb2.ModelProto()
        with open(path, "rb") as fh:
            model.ParseFromString(fh.read())
        if not model.normalizer_spec.add_dummy_prefix:
            return self._sp
        model.normalizer_spec.add_dummy_prefix = False
        return spm.SentencePieceProcessor(model_proto=model.SerializeToString())

    @staticmethod
    def _optional(token_id: int) -> int | None:
        return None if token_id < 0 else token_id  # sentencepiece uses -1 for "disabled"

    def token_to_id(self, token: str) -> int | None:
        token_id = self._sp.piece_to_id(token)  # returns unk_id for unknown pieces
        return token_id if self._sp.id_to_piece(token_id) == token else None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread: parallelism comes from the process pool; threads here would oversubscribe.
        return self._sp.encode(texts, num_threads=1)

    def _encode_rest(self, text: str) -> list[int]:
        return self._sp_rest.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))


class HFTokenizer(Tokenizer):
    """A local Hugging Face tokenizer directory (never downloads)."""

    kind = "hf"

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer  # slow import; only pay for it when used

        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(
                f"{path}: not a loadable Hugging Face tokenizer directory ({exc}); it needs "
                "tokenizer.json or tokenizer_config.json as written by save_pretrained()"
            ) from exc
        self.path = path
        self.sha256 = dir_sha256(path)
        self.vocab_size = len(self._tok)
        tok = self._tok
        self.bos_id, self.eos_id, self.pad_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        self.unk_id, self.mask_id = tok.unk_token_id, tok.mask_token_id
        self.sep_id, self.cls_id = tok.sep_token_id, tok.cls_token_id

    def token_to_id(self, token: str) -> int | None:
        return self._tok.get_vocab().get(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: documents are longer than model_max_length by design (we pack later).
        return self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def load_tokenizer(path: str) -> Tokenizer:
    """Load a sentencepiece `.model` file or a local HF tokenizer directory."""
    if os.path.isdir(path):
        tokenizer: Tokenizer = HFTokenizer(path)
    elif os.path.isfile(path):
        tokenizer = SentencePieceTokenizer(path)
    else:
        raise DataError(
            f"--tokenizer {path}: no such file or directory; pass a sentencepiece .model file "
            "or a local Hugging Face tokenizer directory, or omit --tokenizer to train one"
        )
    if tokenizer.vocab_size > TOKEN_DTYPE_MAX:
        raise DataError(f"{path}: vocab size {tokenizer.vocab_size} does not fit uint32 token ids")
    return tokenizer


def _sentences(source: Iterable[str | Path]) -> Iterator[str]:
    """Non-blank lines: sentencepiece trains on lines and skips overlong ones, so split here."""
    for item in source:
        text = item.read_text(encoding="utf-8") if isinstance(item, Path) else item
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_sentencepiece(
    source: Iterable[str | Path],
    out_path: str,
    vocab_size: int,
    model_type: str = "bpe",
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9995,
) -> str:
    """Train a lossless sentencepiece model on `source` and write it to `out_path`.

    `source` items are texts (str) or UTF-8 files (pathlib.Path). Deterministic: no input
    shuffling (the first `input_sentence_size` lines are used) and one training thread, because
    sentencepiece's result depends on the thread count. Ids: pad 0, unk 1, bos 2, eos 3, then
    `SPECIAL_TOKENS`. Note user-defined symbols also match when they appear literally in text.
    """
    if model_type not in MODEL_TYPES:
        raise DataError(f"--tokenizer-type {model_type!r} is not one of {MODEL_TYPES}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    sentences = _sentences(source)
    first = next(sentences, None)
    if first is None:
        raise DataError("cannot train a tokenizer: the input has no non-blank text")
    model = io.BytesIO()  # no model_prefix: the prefix path would be baked into the model bytes
    with open(os.devnull, "w") as devnull:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=itertools.chain([first], sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                user_defined_symbols=list(SPECIAL_TOKENS),
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=False,
                max_sentence_length=8192,
                num_threads=1,
                minloglevel=2,
                logstream=devnull,
            )
        except RuntimeError as exc:
            raise DataError(
                f"sentencepiece training failed for --vocab-size {vocab_size} ({exc}); "
                "lower --vocab-size or give it more text"
            ) from exc
    atomic_write_bytes(out_path, model.getvalue())
    return out_path
