"""Multiple-choice tasks made from a prepared dataset's own documents: given a passage of a
document, pick the words that really follow it, among passages taken from other documents or among
the same words in other orders.

Made from the validation split by default, which training never reads, so accuracy above chance
means the model learned the language and topics of the corpus rather than the passages. Windows
are cut at whitespace (runs of it collapsed to one space); the same dataset, split, seed and
settings always give the same file. `dist-llm prep` writes this task for the default corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_prep.tokenizer import load_tokenizer
from dist_llm.data.shards import TokenShards
from dist_llm.data.sources import tokenizer_path
from dist_llm.errors import DataError
from dist_llm.tasks.files import write_task_file

DISTRACTORS = ("documents", "shuffled")
DEFAULT_CORPUS_TASKS = {"docstring_continuation": "documents", "docstring_word_order": "shuffled"}
"""The tasks `dist-llm prep` writes to <out>/tasks/<name>.jsonl for the default corpus, by distractor
kind; configs/tiny.yaml scores them."""
CONTEXT_WORDS = 32
"""Words of context at most (the words right before the continuation)."""
FIRST_WORDS = 8
"""Words of context at least: where a document's first window ends."""
CONTINUATION_WORDS = 8
"""Words in every choice, so choices differ in content rather than in length."""
STRIDE = 16
"""Words between the starts of two continuations of one document."""
PER_DOCUMENT = 12
"""Windows per document at most, so that a few long documents do not make up the task."""
_READ_TOKENS = 1 << 20
_MAX_DRAWS = 10_000


def documents(data_path: str, split: str) -> Iterator[str]:
    """The split's documents decoded back to text, in order, read a chunk of tokens at a time."""
    shards = TokenShards(data_path, split)
    tokenizer = load_tokenizer(tokenizer_path(data_path))
    skip = {tokenizer.bos_id, tokenizer.eos_id}
    pending: list[np.ndarray] = []
    start = 0
    while start < shards.num_tokens:
        chunk = shards.read(start, min(_READ_TOKENS, shards.num_tokens - start))
        start += len(chunk)
        cut = 0
        for end in np.flatnonzero(chunk == tokenizer.eos_id):
            ids = np.concatenate([*pending, chunk[cut:end]])
            pending, cut = [], int(end) + 1
            yield tokenizer.decode([int(t) for t in ids if int(t) not in skip])
        pending.append(chunk[cut:])


def windows(docs: Iterator[str], max_examples: int) -> list[tuple[int, int, str, str]]:
    """(document, word, context, true continuation) of up to `max_examples` windows (0 = all)."""
    out = []
    for d, text in enumerate(docs):
        words = text.split()
        starts = range(FIRST_WORDS, len(words) - CONTINUATION_WORDS + 1, STRIDE)
        for p in list(starts)[:PER_DOCUMENT]:
            context = " ".join(words[max(0, p - CONTEXT_WORDS) : p])
            out.append((d, p, context, " " + " ".join(words[p : p + CONTINUATION_WORDS])))
            if len(out) == max_examples:
                return out
    return out


def _other_documents(
    found: list[tuple[int, int, str, str]], d: int, truth: str, choices: int, rng: np.random.Generator
) -> list[str] | None:
    options = [truth]
    for _ in range(_MAX_DRAWS):
        other_doc, _, _, other = found[int(rng.integers(len(found)))]
        if other_doc != d and other not in options:
            options.append(other)
            if len(options) == choices:
                return options
    return None


def _shuffled(truth: str, choices: int, rng: np.random.Generator) -> list[str] | None:
    words, options = truth.split(), [truth]
    for _ in range(_MAX_DRAWS):
        other = " " + " ".join(rng.permutation(words))
        if other not in options:
            options.append(other)
            if len(options) == choices:
                return options
    return None  # too few distinct words to reorder


def make_examples(
    found: list[tuple[int, int, str, str]], choices: int, seed: int, source: str, distractors: str
) -> list[dict[str, object]]:
    """Task records: each window's true continuation among `choices` - 1 distractors, drawn with
    `seed`, at a position drawn with it too. Distractors are continuations of windows from other
    documents ("documents": which passage fits the context) or the true continuation's own words
    reordered ("shuffled": which order is English; no unigram statistics tell them apart)."""
    if distractors == "documents" and len({d for d, *_ in found}) < choices:
        raise DataError(
            f"{source}: {len(found)} passages from {len({d for d, *_ in found})} documents; a task with "
            f"{choices} choices needs passages of at least {choices} documents (each at least "
            f"{FIRST_WORDS + CONTINUATION_WORDS} words): use another split or fewer --choices"
        )
    rng = np.random.default_rng(seed)
    records = []
    for d, p, context, truth in found:
        if distractors == "documents":
            options = _other_documents(found, d, truth, choices, rng)
            if options is None:
                raise DataError(f"{source}: too few distinct passages to draw {choices - 1} distractors from")
        else:
            options = _shuffled(truth, choices, rng)
            if options is None:
                continue
        answer = int(rng.integers(choices))
        options[0], options[answer] = options[answer], options[0]
        records.append(
            {"context": context, "choices": options, "answer": answer, "source": f"document {d}, word {p}"}
        )
    if not records:
        raise DataError(f"{source}: no passage of {FIRST_WORDS + CONTINUATION_WORDS} words or more")
    return records


def write_continuation_task(
    data_path: str,
    out: str,
    split: str = "validation",
    choices: int = 4,
    max_examples: int = 1000,
    seed: int = 0,
    distractors: str = "documents",
) -> int:
    """Write the task as a JSONL file at `out` (a local path); returns its number of examples."""
    if choices < 2:
        raise DataError(f"--choices {choices}: a multiple-choice task needs at least 2")
    if distractors not in DISTRACTORS:
        raise DataError(f"--distractors {distractors!r}: one of {', '.join(DISTRACTORS)}")
    source = f"{data_path} ({split} split)"
    found = windows(documents(data_path, split), max_examples)
    records = make_examples(found, choices, seed, source, distractors)
    write_task_file(out, records)
    return len(records)
