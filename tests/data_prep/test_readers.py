"""Reading work units: byte-range segments give exactly the documents of the whole file, bad
input raises naming file:line or is skipped and counted, memory stays bounded."""

import gzip
import json
import random
import time
import tracemalloc

import pyarrow as pa
import pytest

from data_prep import readers
from data_prep.inputs import resolve_inputs
from data_prep.planner import plan_units
from data_prep.readers import Document, ErrorPolicy, read_unit
from data_prep.units import ReadOptions, Segment, WorkUnit
from dist_llm.errors import DataError

BOM = b"\xef\xbb\xbf"


def read_all(paths, on_error="raise", unit_bytes=1 << 30, **options):
    """Resolve, plan and read like the pipeline does; returns (documents, policy)."""
    opts = ReadOptions(**options)
    policy = ErrorPolicy(on_error)
    files = resolve_inputs([str(p) for p in paths], opts, policy)
    docs = [d for unit in plan_units(files, unit_bytes, opts) for d in read_unit(unit, opts, policy)]
    return docs, policy


def reference(data: bytes, mode: str) -> list[str]:
    """The documents of a whole file by the simplest possible rules (everything in memory)."""
    lines = data.removeprefix(BOM).split(b"\n")
    if mode == "line":
        return [line.rstrip(b"\r").decode() for line in lines if line.strip()]
    if mode == "jsonl":
        return [json.loads(line)["text"] for line in lines if line.strip()]
    paragraphs, block = [], []
    for line in [*lines, b""]:
        if line.strip():
            block.append(line.rstrip(b"\r"))
        elif block:
            paragraphs.append(b"\n".join(block).decode())
            block = []
    return paragraphs


def messy_text(rng: random.Random, pieces: int) -> bytes:
    """CRLF and LF, blank and whitespace-only lines, 2-4 byte UTF-8, maybe a BOM, maybe no final newline."""
    words = ["word", "héllo", "€uro", "😀", "  indented", "tab\there", "x" * 40, "a"]
    breaks = ["\n", "\r\n", "\n\n", "\r\n\r\n", "\n \n", "\n\t\r\n\n", " "]
    text = "".join(rng.choice(words) + rng.choice(breaks) for _ in range(pieces))
    text = text.rstrip() if rng.random() < 0.5 else text
    return (BOM if rng.random() < 0.5 else b"") + text.encode()


def messy_jsonl(rng: random.Random, records: int) -> bytes:
    lines = []
    for i in range(records):
        text = rng.choice(["plain", "multi\nline", "ünï €😀", 'quote"s', " spaced "]) + str(i)
        lines.append(json.dumps({"id": i, "text": text}, ensure_ascii=rng.random() < 0.5))
        lines.append(rng.choice(["\n", "\r\n", "\n\n", "\n  \n"]))
    return "".join(lines).rstrip("\n").encode()


@pytest.mark.parametrize("mode", ["line", "paragraph", "jsonl"])
def test_units_concatenate_to_the_whole_file_for_any_unit_size(tmp_path, monkeypatch, mode):
    rng = random.Random(mode)
    for case in range(3):
        data = messy_jsonl(rng, 25) if mode == "jsonl" else messy_text(rng, 60)
        path = tmp_path / f"c{case}.{'jsonl' if mode == 'jsonl' else 'txt'}"
        path.write_bytes(data)
        options = {} if mode == "jsonl" else {"text_split": mode}
        whole, _ = read_all([path], **options)
        assert [d.text for d in whole] == reference(data, mode)
        # Tiny blocks: documents and line starts straddle block ends too.
        for block, sizes in [(5, range(1, 51)), (1 << 20, [1, 2, 3, 7, 13, 29, 50, 97, 256, len(data) - 1])]:
            monkeypatch.setattr(readers, "BLOCK_BYTES", block)
            for unit_bytes in sizes:
                docs, _ = read_all([path], unit_bytes=unit_bytes, **options)
                assert docs == whole, (case, block, unit_bytes)


def test_text_splits_offsets_and_crlf(tmp_path):
    path = tmp_path / "a.txt"
    data = b"first para\nstill first\n\n\nsecond para\r\n\nthird"
    path.write_bytes(data)
    docs, _ = read_all([path])
    assert docs == [Document(data.decode(), str(path), 0)]  # text_split=file: verbatim
    docs, _ = read_all([path], text_split="line")
    assert [(d.text, d.offset) for d in docs] == [
        ("first para", 0),
        ("still first", 11),
        ("second para", 25),
        ("third", 39),
    ]
    docs, _ = read_all([path], text_split="paragraph", unit_bytes=4)
    assert [(d.text, d.offset) for d in docs] == [
        ("first para\nstill first", 0),
        ("second para", 25),
        ("third", 39),
    ]


def test_custom_text_field_and_bom(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(BOM + b'{"body": "hello", "text": 1}\n')
    docs, _ = read_all([path], text_field="body")
    assert [d.text for d in docs] == ["hello"]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _zstd(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)


@pytest.mark.parametrize("suffix,compress", [(".gz", _gzip), (".zst", _zstd), (".zstd", _zstd)])
def test_compressed_files_stream_to_the_same_documents(tmp_path, suffix, compress):
    rng = random.Random(suffix)
    text, records = messy_text(rng, 200), messy_jsonl(rng, 50)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_bytes(text)
    (tmp_path / "plain" / "b.jsonl").write_bytes(records)
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / f"a.txt{suffix}").write_bytes(compress(text))
    # two concatenated members/frames, as `cat a.gz b.gz` or pigz/zstd -T write them
    (tmp_path / "packed" / f"b.jsonl{suffix}").write_bytes(compress(records[:100]) + compress(records[100:]))
    expected, _ = read_all([tmp_path / "plain"], text_split="line", unit_bytes=64)
    docs, _ = read_all([tmp_path / "packed"], text_split="line", unit_bytes=64)
    assert [d.text for d in docs] == [d.text for d in expected] and len(docs) > 50


BAD_INPUTS = [
    # (name, bytes, reason, line, options)
    ("bad.txt", b"ok line\nalso ok\nbad \xff byte\n", "invalid_utf8", 3, {}),  # file mode: 1 document
    ("bad_line.txt", b"ok line\nalso ok\nbad \xff byte\n", "invalid_utf8", 3, {"text_split": "line"}),
    ("bad_para.txt", b"ok\n\npara\nbad \xff\n\nok\n", "invalid_utf8", 4, {"text_split": "paragraph"}),
    ("empty.txt", b"", "empty_file", 1, {}),
    ("empty.jsonl", b"", "empty_file", 1, {}),
    ("blank.txt", b"  \n\t\n", "blank_document", 1, {}),
    ("nul.txt", b"text\nthen\x00binary", "binary_file", 2, {"text_split": "line"}),
    ("utf16.jsonl", '{"text": "x"}\n'.encode("utf-16"), "binary_file", 1, {}),
    ("blank.jsonl", b'{"text": "fine"}\n{"text": "   "}\n', "blank_document", 2, {}),
    ("bad.jsonl", b'{"text": "fine"}\r\n{"text": "oops"\n', "bad_json", 2, {}),
    ("notobj.jsonl", b'["text"]\n', "bad_json", 1, {}),
    ("nofield.jsonl", b'{"text": "fine"}\n\n{"body": "x"}\n', "missing_field", 3, {}),
    ("nonstr.jsonl", b'{"text": 5}\n', "non_string_field", 1, {}),
    ("badutf.jsonl", b'{"text": "fine"}\n{"text": "\xc3("}\n', "invalid_utf8", 2, {}),
    ("empty.txt.gz", gzip.compress(b""), "empty_file", 1, {}),
    ("notgzip.jsonl.gz", b'{"text": "not compressed"}\n', "corrupt_file", 1, {}),
]


@pytest.mark.parametrize("name,data,reason,line,options", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_with_file_and_line_or_is_counted(tmp_path, name, data, reason, line, options):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_all([path], **options)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert reason in message and "--on-error skip" in message

    docs, policy = read_all([path], on_error="skip", **options)
    assert policy.summary() == {"total": 1, "by_reason": {reason: 1}}
    assert all(d.text.strip() for d in docs)


def test_error_in_a_late_segment_names_its_line_lazily(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(3000)]
    lines[2500] = '{"text": broken'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"{path}:2501: malformed JSON"):
        read_all([path], unit_bytes=1000)
    docs, policy = read_all([path], on_error="skip", unit_bytes=1000)
    assert len(docs) == 2999 and policy.counts == {"bad_json": 1}


def test_invalid_utf8_loses_only_its_document(tmp_path):
    (tmp_path / "mixed.txt").write_bytes(b"good one\nbad \xfe\r\ngood two\n")
    (tmp_path / "mixed.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xe2\x82"}\n{"text": "b"}\n')
    docs, policy = read_all([tmp_path], on_error="skip", text_split="line", unit_bytes=7)
    assert [d.text for d in docs] == ["a", "b", "good one", "good two"]
    assert policy.counts == {"invalid_utf8": 2}


def test_binary_file_split_into_segments_is_counted_once(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(bytes(range(256)) * 64)  # NUL in the first bytes, 16 KiB: many segments
    docs, policy = read_all([path], on_error="skip", text_split="line", unit_bytes=1000)
    assert docs == [] and policy.counts == {"binary_file": 1}


@pytest.mark.parametrize("suffix,compress", [(".gz", _gzip), (".zst", _zstd)])
def test_truncated_compressed_file_is_skipped_whole_or_raises_at_the_line_reached(tmp_path, suffix, compress):
    lines = b"".join(b'{"text": "record %d with some words"}\n' % i for i in range(20000))
    packed = compress(lines)
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "kept"}\n')
    cut = tmp_path / f"b.jsonl{suffix}"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=rf"{cut}:\d+: .*truncated.*\(truncated_file\)") as info:
        read_all([tmp_path])
    reached = int(str(info.value).split(":")[1])
    assert 1 < reached <= 20000
    docs, policy = read_all([tmp_path], on_error="skip")
    assert [d.text for d in docs] == ["kept"] and policy.counts == {"truncated_file": 1}


def test_hundred_megabyte_line_is_one_document_with_bounded_copies(tmp_path):
    size = 100 << 20
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.write(b"first\n")
        f.write(b"a" * size)
        f.write(b"\r\nlast")
    started = time.perf_counter()
    tracemalloc.start()
    try:
        docs, _ = read_all([path], text_split="line", unit_bytes=16 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(d.text) for d in docs] == [5, size, 4]
    assert docs[1].text == "a" * size and docs[1].offset == 6
    assert peak < 3.5 * size  # pieces + joined bytes + the str: a few copies, never quadratic
    assert time.perf_counter() - started < 20


def test_memory_stays_bounded_by_the_block_size(tmp_path, monkeypatch):
    path = tmp_path / "many.jsonl"
    line = json.dumps({"text": "some words in a document " * 4}) + "\n"
    path.write_text(line * 60000)  # about 7 MB
    monkeypatch.setattr(readers, "BLOCK_BYTES", 256 << 10)
    opts = ReadOptions()
    files = resolve_inputs([str(path)], opts, ErrorPolicy())
    unit = WorkUnit(0, (Segment(str(path), "jsonl", None, 0, files[0].size),), files[0].size)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_unit(unit, opts, ErrorPolicy()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 60000
    assert peak < 2 << 20, peak  # a few 256 KiB blocks, not the 7 MB file
