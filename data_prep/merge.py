"""Merge: combine the unit records of a prep run (one or many parts) into the manifest.

The dataset's token stream is the units' shards in unit order, whichever machine wrote them, so
merging N parts gives the same stream as one machine doing everything. Merge also does what
needs the whole corpus: exact dedup across units (the first copy in corpus order wins; later
copies are removed by rewriting the shards that hold them as `*.merged.arrow`, with their
checks), and the small-corpus rule (if validation would be empty, the last train document moves
there). The manifest (shard table, then `manifest.json`) is written last: its presence means
every shard it lists is complete.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import store
from data_prep.filters import HASH_BYTES
from data_prep.identity import read_prep
from data_prep.manifest import Manifest, ShardTable, manifest_header, remove_manifest, write_manifest
from data_prep.tokenizer import load_tokenizer
from data_prep.workers import RECORD_FORMAT, record_uri
from data_prep.writer import SPLITS, UNITS_DIR, write_shard
from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import join

log = get_logger("data_prep.merge")
IO_THREADS = 16  # records and hash files are small; on object storage latency dominates
MOVED_VALIDATION = f"{UNITS_DIR}/validation-moved.arrow"


def read_records(out: str, units: int, identity: str) -> tuple[list[dict], list[int]]:
    """The current records of units 0..units-1 and the indices of unfinished units."""
    with ThreadPoolExecutor(IO_THREADS) as pool:
        records = list(pool.map(lambda i: store.read_json(record_uri(out, i)), range(units)))
    missing = [
        i
        for i, r in enumerate(records)
        if r is None or r.get("format") != RECORD_FORMAT or r.get("identity") != identity
    ]
    return records, missing


def first_occurrences(hashes: list[bytes]) -> list[np.ndarray]:
    """Per hashes blob (one per shard, in corpus order), a mask of rows that are first copies."""
    counts = [len(h) // HASH_BYTES for h in hashes]
    if not counts or sum(counts) == 0:
        return [np.ones(c, dtype=bool) for c in counts]
    keys = np.frombuffer(b"".join(hashes), dtype=">u8").reshape(-1, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: equal keys stay in corpus order
    ordered = keys[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]).all(axis=1)
    keep = np.ones(len(order), dtype=bool)
    keep[order[repeat]] = False
    return np.split(keep, np.cumsum(counts)[:-1])


def _write_table(out: str, rel: str, table: pa.Table) -> dict:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as ipc:
        ipc.write_table(table.combine_chunks())
    tokens = int(pc.list_value_length(table.column("tokens")).to_numpy().sum()) if len(table) else 0
    return _manifest_entry({"docs": len(table), "tokens": tokens, **write_shard(out, rel, sink.getvalue())})


def _read_table(out: str, rel: str) -> pa.Table:
    data = store.read_bytes(join(out, rel))
    if data is None:
        raise DataError(
            f"{join(out, rel)}: shard listed in its unit record is missing; re-run the "
            "prep command (it redoes units whose files fail their checksum), then merge"
        )
    return pa.ipc.open_file(pa.py_buffer(data)).read_all()


def _manifest_entry(shard: dict) -> dict:
    return {k: shard[k] for k in ("path", "docs", "tokens", "bytes", "sha256", "values_offset")}


def _apply(out: str, shard: dict, keep: np.ndarray) -> dict | None:
    """The shard's manifest entry after removing rows not in `keep` (None if nothing remains)."""
    if keep.all():
        return _manifest_entry(shard)
    if not keep.any():
        return None
    table = _read_table(out, shard["path"]).filter(pa.array(keep))
    return _write_table(out, shard["path"].removesuffix(".arrow") + ".merged.arrow", table)


def _load_hashes(out: str, shards: list[dict]) -> list[bytes]:
    def load(shard: dict) -> bytes:
        data = store.read_bytes(join(out, shard["hashes"]))
        if data is None or hashlib.sha256(data).hexdigest() != shard["hashes_sha256"]:
            raise DataError(
                f"{join(out, shard['hashes'])}: missing or does not match its unit record; "
                "re-run the prep command (it redoes such units), then merge"
            )
        return data

    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(load, shards))


def merge(out: str, tokenizer_path: str | None = None) -> Manifest:
    """Write the manifest of `out` from all unit records; returns it.

    `tokenizer_path` is a local copy of the run's tokenizer when `out` is remote (its special ids
    go into the manifest); by default it is read from `out`.
    """
    started = time.perf_counter()
    store.check_reachable(out)
    prep = read_prep(out)
    if prep is None:
        raise DataError(f"{out}: no prep.json; run `dist-llm prep ... --out {out}` first")
    remove_manifest(out)
    records, missing = read_records(out, prep["units"], prep["identity_sha"])
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"{out}: {len(missing)} of {prep['units']} units are not finished (units {shown}); run "
            "the prep parts that own them (unit i belongs to --part i % NUM_PARTS) again, then merge"
        )
    identity = prep["identity"]
    val_fraction = identity["val_fraction"]
    tables: dict[str, ShardTable] = {}
    removed_duplicates = 0
    kept_rows: dict[str, tuple[list[dict], list[np.ndarray]]] = {}
    for split in SPLITS:
        shards = [s for r in records for s in r["splits"][split]["shards"]]
        if identity["filters"]["dedup"] == "exact":
            keeps = first_occurrences(_load_hashes(out, shards))
        else:
            keeps = [np.ones(s["docs"], dtype=bool) for s in shards]
        removed_duplicates += sum(int((~k).sum()) for k in keeps)
        kept_rows[split] = (shards, keeps)

    train_shards, train_keeps = kept_rows["train"]
    n_val = sum(int(k.sum()) for k in kept_rows["validation"][1])
    n_train = sum(int(k.sum()) for k in train_keeps)
    moved_entry = None
    if val_fraction > 0 and n_val == 0 and n_train >= 2:
        # Small corpus: no document hashed into validation, so the last train document moves there.
        last = max(i for i, k in enumerate(train_keeps) if k.any())
        row = int(np.flatnonzero(train_keeps[last])[-1])
        table = _read_table(out, train_shards[last]["path"]).slice(row, 1)
        moved_entry = _write_table(out, MOVED_VALIDATION, table)
        train_keeps[last] = train_keeps[last].copy()
        train_keeps[last][row] = False

    for split in SPLITS:
        shards, keeps = kept_rows[split]
        with ThreadPoolExecutor(IO_THREADS) as pool:
            entries = [e for e in pool.map(lambda a: _apply(out, *a), zip(shards, keeps)) if e]
        if split == "validation" and moved_entry:
            entries.append(moved_entry)
        tables[split] = ShardTable.from_entries(entries)

    # update(), not `+`: Counter addition drops zero counts, and the manifest reports them.
    removed, skipped = Counter(duplicate=removed_duplicates), Counter(prep["skipped_inputs"])
    for record in records:
        removed.update(record["removed"])
        skipped.update(record["skipped"])
    docs_read = sum(r["docs_read"] for r in records)
    if sum(int(table.docs.sum()) for table in tables.values()) == 0:
        raise DataError(
            f"no documents left in {identity['inputs']}: read {docs_read}, removed "
            f"{dict(sorted(removed.items()))}, skipped {skipped}; check the inputs and filters"
        )
    tokenizer = load_tokenizer(tokenizer_path or store.local_copy(join(out, prep["tokenizer"])))
    header = manifest_header(
        tokenizer,
        prep["tokenizer"],
        skipped={"total": sum(skipped.values()), "by_reason": dict(sorted(skipped.items()))},
        args=prep["args"],
    )
    header["filters"] = {
        "docs_read": docs_read,
        "removed": dict(sorted(removed.items())),
        **identity["filters"],
    }
    header["units"] = prep["units"]
    store.sync_local(out)  # every shard the manifest lists is on disk before the manifest is
    manifest = write_manifest(out, header, tables)
    splits = manifest.header["splits"]
    log.info(
        "merged %d units: %d train / %d validation docs, %d tokens, %d duplicates removed, %.1fs -> %s",
        prep["units"],
        splits["train"]["docs"],
        splits["validation"]["docs"],
        splits["train"]["tokens"] + splits["validation"]["tokens"],
        removed["duplicate"],
        time.perf_counter() - started,
        out,
    )
    return manifest
