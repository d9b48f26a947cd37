"""`plan_units`: cut the resolved inputs into `WorkUnit`s of about `unit_bytes` of input each.

The plan is a pure function of the `InputFile`s (their sizes, rows and row-group sizes, all
learned from metadata), `unit_bytes` and the read options: no I/O happens here, so every
machine of a multi-part run and every resume computes the same plan, and planning a huge
corpus costs nothing beyond listing it.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_prep.units import InputFile, ReadOptions, Segment, WorkUnit
from dist_llm.errors import DataError
from dist_llm.uri import is_local

WHOLE = -1  # Segment.stop of a segment that spans its whole file


def _even_cuts(total: int, unit_bytes: int, size: int) -> list[int]:
    """Cut points splitting [0, total) into pieces of about unit_bytes (of a `size`-byte file)."""
    pieces = min(max(1, -(-size // unit_bytes)), max(total, 1))
    return [total * i // pieces for i in range(pieces + 1)]


def _segments(f: InputFile, unit_bytes: int, opts: ReadOptions) -> Iterator[tuple[Segment, int]]:
    """(segment, its approximate input bytes) for one file, in file order."""
    if f.kind == "parquet":
        start, held = 0, 0
        for group, size in enumerate(f.row_group_bytes):
            if held and held + size > unit_bytes:
                yield Segment(f.uri, f.kind, None, start, group), held
                start, held = group, 0
            held += size
        yield Segment(f.uri, f.kind, None, start, len(f.row_group_bytes)), held
    elif f.kind == "hf" and is_local(f.uri):
        cuts = _even_cuts(f.rows, unit_bytes, f.size)
        for low, high in zip(cuts, cuts[1:]):
            yield Segment(f.uri, f.kind, None, low, high), f.size * (high - low) // max(f.rows, 1)
    elif f.kind == "hf" or f.compression:
        # Remote arrow streams cannot be entered mid-way without downloading their start, nor can
        # gzip/zstd streams be entered at all: such files are read whole by one worker.
        yield Segment(f.uri, f.kind, f.compression, 0, WHOLE), f.size
    elif f.kind == "jsonl" or opts.text_split != "file":
        cuts = _even_cuts(f.size, unit_bytes, f.size)
        for low, high in zip(cuts, cuts[1:]):
            yield Segment(f.uri, f.kind, None, low, high), high - low
    else:  # text_split=file: the file is one document, never split
        yield Segment(f.uri, f.kind, None, 0, f.size), f.size


def plan_units(files: list[InputFile], unit_bytes: int, opts: ReadOptions) -> list[WorkUnit]:
    """Units in input order: large files split, small files (and the tails of split files)
    grouped until a unit holds about `unit_bytes`."""
    if unit_bytes < 1:
        raise DataError(f"unit size {unit_bytes} bytes must be >= 1; pass a positive --unit-mb")
    units: list[WorkUnit] = []
    held: list[Segment] = []
    held_bytes = 0

    def close() -> None:
        nonlocal held, held_bytes
        units.append(WorkUnit(len(units), tuple(held), held_bytes))
        held, held_bytes = [], 0

    for f in files:
        for segment, size in _segments(f, unit_bytes, opts):
            if held and held_bytes + size > unit_bytes:
                close()
            held.append(segment)
            held_bytes += size
            if held_bytes >= unit_bytes:
                close()
    if held:
        close()
    return units
