"""Merge: turn the unit records of a prep run (one or many parts) into the manifest.

The dataset's token stream is the units' shards in unit order, whichever machine wrote them, so
merging N parts gives the same stream as one machine doing everything. Merge also does what needs
the whole corpus, spread over parts (machines) and, within a part, `workers` threads, so that no
process holds more than `workers` pieces of hashes at once nor rewrites more than its part's units:
1. find: exact dedup across units, each part the pieces of hash space it owns (see dedup.py);
2. rewrite: each part takes the later copies out of the shards of its units (unit i belongs to
   part i % num_parts, as in prep) by writing them as `*.merged.arrow` with their checks, and
   records the unit's final shards. The small-corpus rule (if validation would be empty, the last
   train document moves there) is applied by the part that owns that document;
3. part 0 writes the manifest (shard table, then `manifest.json`) once every unit's shards are
   recorded: its presence means every shard it lists is complete.
The parts of one merge run at the same time and wait for each other between the steps by polling
the output; one process (`num_parts=1`) does every step itself. Each step's result is a file plus
a record carrying a digest of all unit records, so a re-run reuses what still matches, and a unit
that changed invalidates everything computed from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import store
from data_prep.dedup import IO_THREADS, MERGE_DIR, PIECE_KEYS, drops_uri, find_piece, piece_count, unit_drops
from data_prep.identity import read_prep
from data_prep.manifest import Manifest, ShardTable, manifest_header, remove_manifest, write_manifest
from data_prep.tokenizer import load_tokenizer
from data_prep.workers import RECORD_FORMAT, record_uri
from data_prep.writer import SPLITS, UNITS_DIR, write_shard
from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import join

log = get_logger("data_prep.merge")
MOVED_VALIDATION = f"{UNITS_DIR}/validation-moved.arrow"
MERGE_FORMAT = "dist_llm.prep_merge/1"
POLL_S = 1.0  # how often a part waiting for the others looks for their records
WAIT_LOG_S = 60.0  # how often it says what it is waiting for


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


@dataclass(frozen=True)
class _Plan:
    """What the find and rewrite steps need; small per unit, handed to the workers once."""

    out: str
    digest: str  # of every unit record: merge results computed from other records are stale
    pieces: int  # pieces of hash space; 0 without dedup
    keys: list[dict]  # per unit: its keys file (path, sha256, index bits)
    shards: list[dict[str, list[dict]]]  # per unit: split -> its shard records
    moved: tuple[int, int] | None = None  # (unit, row) of the train document moving to validation

    def train_docs(self) -> list[int]:
        return [sum(s["docs"] for s in unit["train"]) for unit in self.shards]


def _digest(records: list[dict]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(repr((record["splits"], record["keys"])).encode())
    return digest.hexdigest()


def _current(record: dict | None, plan: _Plan) -> bool:
    return bool(record) and record.get("format") == MERGE_FORMAT and record.get("digest") == plan.digest


def _piece_record_uri(plan: _Plan, piece: int) -> str:
    return drops_uri(plan.out, piece, plan.pieces).removesuffix(".bin") + ".json"


def _unit_record_uri(out: str, unit: int) -> str:
    return join(out, MERGE_DIR, f"u-{unit:06d}.json")


def _find(plan: _Plan, piece: int) -> dict:
    """Step 1 for one piece: its record, reused while its drops file still matches."""
    uri = _piece_record_uri(plan, piece)
    record = store.read_json(uri)
    if _current(record, plan) and store.sha256(drops_uri(plan.out, piece, plan.pieces)) == record["sha256"]:
        return record
    record = {"format": MERGE_FORMAT, "digest": plan.digest}
    record |= find_piece(plan.out, plan.keys, plan.train_docs(), piece, plan.pieces)
    store.write_json(uri, record, durable=False)  # after the drops file, which it vouches for
    return record


def _write_table(out: str, rel: str, table: pa.Table) -> dict:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as ipc:
        ipc.write_table(table.combine_chunks())
    tokens = int(pc.list_value_length(table.column("tokens")).to_numpy().sum()) if len(table) else 0
    return {"docs": len(table), "tokens": tokens, **write_shard(out, rel, sink.getvalue())}


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
    """The shard's record after removing rows not in `keep` (None if nothing remains)."""
    if keep.all():
        return shard
    if not keep.any():
        return None
    table = _read_table(out, shard["path"]).filter(pa.array(keep))
    return _write_table(out, shard["path"].removesuffix(".arrow") + ".merged.arrow", table)


def _written(record: dict) -> list[tuple[str, str]]:
    """(path, sha256) of the files the rewrite step wrote (the others are the unit's own)."""
    shards = [e for split in SPLITS for e in record["splits"][split] if e["path"].endswith(".merged.arrow")]
    shards += [record["moved"]] if record["moved"] else []
    return [
        (e[path], e[sha256])
        for e in shards
        for path, sha256 in (("path", "sha256"), ("checks", "checks_sha256"))
    ]


def _rewrite(plan: _Plan, unit: int) -> dict:
    """Step 2 for one unit: its final shard records, reused while the files written still match."""
    uri = _unit_record_uri(plan.out, unit)
    record = store.read_json(uri)
    if _current(record, plan) and all(
        store.sha256(join(plan.out, path)) == sha256 for path, sha256 in _written(record)
    ):
        return record
    dropped = unit_drops(plan.out, unit, len(plan.shards), plan.pieces) if plan.pieces else np.empty(0)
    moved = None
    if plan.moved and plan.moved[0] == unit:
        dropped = np.append(dropped, plan.moved[1])
        moved = _move(plan.out, plan.shards[unit]["train"], plan.moved[1])
    splits: dict[str, list[dict]] = {}
    first_row = 0
    for split in SPLITS:
        splits[split] = []
        for shard in plan.shards[unit][split]:
            rows = np.arange(first_row, first_row + shard["docs"])
            entry = _apply(plan.out, shard, ~np.isin(rows, dropped))
            splits[split] += [entry] if entry else []
            first_row += shard["docs"]
    record = {"format": MERGE_FORMAT, "digest": plan.digest, "splits": splits, "moved": moved}
    store.write_json(uri, record, durable=False)
    return record


def _move(out: str, train_shards: list[dict], row: int) -> dict:
    """Write train row `row` of a unit as the validation split's extra shard; its record."""
    for shard in train_shards:
        if row < shard["docs"]:
            return _write_table(out, MOVED_VALIDATION, _read_table(out, shard["path"]).slice(row, 1))
        row -= shard["docs"]
    raise AssertionError("the moved row is past the unit's train rows")


def _moved(
    plan: _Plan, records: list[dict], pieces: list[dict], val_fraction: float
) -> tuple[int, int] | None:
    """Small corpus: when no document is left in validation, the last train document in corpus
    order moves there. Searched from the last unit back, so only the tail's drops are read."""
    dropped = Counter()
    for piece in pieces:
        dropped.update(piece["drops"])
    n_val = sum(r["splits"]["validation"]["docs"] for r in records) - dropped["validation"]
    n_train = sum(r["splits"]["train"]["docs"] for r in records) - dropped["train"]
    if not (val_fraction > 0 and n_val == 0 and n_train >= 2):
        return None
    for unit in reversed(range(len(records))):
        train = records[unit]["splits"]["train"]["docs"]
        if not train:
            continue
        drops = unit_drops(plan.out, unit, len(records), plan.pieces) if plan.pieces else np.empty(0)
        kept = np.setdiff1d(np.arange(train), drops)
        if len(kept):
            return unit, int(kept[-1])
    raise AssertionError("train documents counted but none found")


def _run(step: Callable[[_Plan, int], dict], plan: _Plan, tasks: list[int], workers: int) -> dict[int, dict]:
    """`step` over `tasks` on `workers` threads. Threads, not processes: the work is storage I/O
    and numpy/pyarrow code that releases the GIL, and a forked child would inherit this process's
    open object-store connections (and could unregister them from its event loop)."""
    with ThreadPoolExecutor(max(1, min(workers, len(tasks)))) as pool:
        return dict(zip(tasks, pool.map(lambda index: step(plan, index), tasks)))


def _collect(
    uris: list[str], mine: dict[int, dict], plan: _Plan, owner: Callable[[int], int], what: str
) -> list[dict]:
    """Every record of a step: this part's own, then the other parts' as they appear."""
    found: dict[int, dict] = dict(mine)
    missing = [i for i in range(len(uris)) if i not in found]
    last_log = time.monotonic()
    while missing:
        with ThreadPoolExecutor(IO_THREADS) as pool:
            records = list(pool.map(lambda i: store.read_json(uris[i]), missing))
        found |= {i: r for i, r in zip(missing, records) if _current(r, plan)}
        missing = [i for i in missing if i not in found]
        if missing and time.monotonic() - last_log >= WAIT_LOG_S:
            last_log = time.monotonic()
            parts = sorted({owner(i) for i in missing})
            log.info("waiting for %d %s of parts %s", len(missing), what, parts[:20])
        if missing:
            time.sleep(POLL_S)
    return [found[i] for i in range(len(uris))]


def _verify_keys(out: str, records: list[dict], units: list[int]) -> None:
    """The keys files of this part's units match their records (each part checks its own)."""

    def check(unit: int) -> None:
        keys = records[unit]["keys"]
        if store.sha256(join(out, keys["path"])) != keys["sha256"]:
            raise DataError(
                f"{join(out, keys['path'])}: missing or does not match its unit record; "
                "re-run the prep command (it redoes such units), then merge"
            )

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(check, units))


def merge(
    out: str,
    tokenizer_path: str | None = None,
    num_parts: int = 1,
    part: int = 0,
    workers: int = 1,
    piece_keys: int = PIECE_KEYS,
) -> Manifest | None:
    """Do this part's share of merging `out` on `workers` threads; part 0 returns the manifest,
    the others None.

    `tokenizer_path` is a local copy of the run's tokenizer when `out` is remote (its special ids
    go into the manifest); by default it is read from `out`. `piece_keys` bounds the document
    hashes one process sorts at once (the memory of the find step); it does not change the result.
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
    label = "merge" if num_parts == 1 else f"merge part {part}/{num_parts}"
    my_units = [u for u in range(len(records)) if u % num_parts == part]
    dedup = identity["filters"]["dedup"] == "exact"
    keys = sum(r["splits"][s]["docs"] for r in records for s in SPLITS)
    plan = _Plan(
        out,
        _digest(records),
        piece_count(keys, piece_keys) if dedup else 0,
        [r["keys"] for r in records],
        [{split: r["splits"][split]["shards"] for split in SPLITS} for r in records],
    )
    pieces: list[dict] = []
    mine: list[int] = []
    if dedup:
        _verify_keys(out, records, my_units)
        mine = [c for c in range(plan.pieces) if c * num_parts // plan.pieces == part]
        found = _run(_find, plan, mine, workers)
        uris = [_piece_record_uri(plan, c) for c in range(plan.pieces)]
        pieces = _collect(uris, found, plan, lambda c: c * num_parts // plan.pieces, "dedup pieces")
    plan = dataclasses.replace(plan, moved=_moved(plan, records, pieces, identity["val_fraction"]))
    rewritten = _run(_rewrite, plan, my_units, workers)
    duplicates = sum(sum(p["drops"].values()) for p in pieces)
    log.info(
        "%s: %d of %d dedup pieces, %d of %d units (%d duplicates in all), %.1fs",
        label,
        len(mine),
        plan.pieces,
        len(my_units),
        len(records),
        duplicates,
        time.perf_counter() - started,
    )
    if part != 0:
        return None
    uris = [_unit_record_uri(out, u) for u in range(len(records))]
    units = _collect(uris, rewritten, plan, lambda u: u % num_parts, "rewritten units")
    return _write(out, prep, records, units, duplicates, tokenizer_path, started)


def _write(
    out: str,
    prep: dict,
    records: list[dict],
    units: list[dict],
    duplicates: int,
    tokenizer_path: str | None,
    started: float,
) -> Manifest:
    """The manifest from every unit's final entries, in unit order."""
    identity = prep["identity"]
    entries: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for unit in units:
        for split in SPLITS:
            entries[split] += map(_manifest_entry, unit["splits"][split])
        if unit["moved"]:
            entries["validation"].append(_manifest_entry(unit["moved"]))
    tables = {split: ShardTable.from_entries(entries[split]) for split in SPLITS}
    # update(), not `+`: Counter addition drops zero counts, and the manifest reports them.
    removed, skipped = Counter(duplicate=duplicates), Counter(prep["skipped_inputs"])
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
