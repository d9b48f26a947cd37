"""`prep.json`: what an output directory is being built from, so a re-run can resume it safely.

Why: resuming reuses finished units, which is only correct if they were produced from the same
inputs (paths, sizes, modification times or ETags), reading options, filters, split, shard
settings and tokenizer. Everything that changes the output is in the identity; things that do
not (worker count, which part a machine runs, progress bars) are left out, so any of them may
change between a run and its resume. A mismatch is refused unless `--force` starts over.
"""

from __future__ import annotations

import hashlib
import json

from data_prep import store
from dist_llm.errors import DataError
from dist_llm.uri import join

PREP_NAME = "prep.json"
FORMAT = "dist_llm.prep/1"
TOKENIZER_KEY = "tokenizer_sha256"


def identity_sha(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def read_prep(out: str) -> dict | None:
    prep = store.read_json(join(out, PREP_NAME))
    if prep is not None and prep.get("format") != FORMAT:
        raise DataError(
            f"{join(out, PREP_NAME)}: format {prep.get('format')!r} is not {FORMAT!r}; "
            "this directory was written by another version: pass --force to rebuild it"
        )
    return prep


def differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for each identity key that differs (nested dicts compared whole)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys if old.get(k) != new.get(k)]


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _refuse(out: str, old: dict, new: dict) -> DataError:
    return DataError(
        f"{out} holds a prep run with different settings ({'; '.join(differences(old, new))}); "
        "resuming would mix outputs. Re-run with the original arguments to resume, pass --force to "
        "discard it and start over, or choose another --out"
    )


def check_settings(out: str, settings: dict) -> dict | None:
    """Refuse early (before a tokenizer is trained over the old one) if `out` holds a run with
    other settings; `settings` is the identity without the tokenizer hash. Returns prep.json."""
    prep = read_prep(out)
    if prep is not None:
        recorded = {k: v for k, v in prep["identity"].items() if k != TOKENIZER_KEY}
        if recorded != settings:
            raise _refuse(out, recorded, settings)
    return prep


def check_or_write(out: str, identity: dict, extra: dict) -> str:
    """Record `identity` for `out`, or check it against the recorded one; returns its sha.

    `extra` (unit count, tokenizer path, ...) is stored alongside but not compared: it follows
    from the identity.
    """
    sha = identity_sha(identity)
    prep = read_prep(out)
    if prep is not None and prep["identity_sha"] != sha:
        raise _refuse(out, prep["identity"], identity)
    if prep is None:
        store.write_json(
            join(out, PREP_NAME), {"format": FORMAT, "identity_sha": sha, "identity": identity, **extra}
        )
    return sha
