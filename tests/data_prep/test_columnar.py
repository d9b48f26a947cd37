"""Parquet files and Hugging Face datasets: planned from metadata, read by row groups / row ranges,
bad schemas and bad values named by file, column and row."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.inputs import resolve_inputs
from data_prep.planner import plan_units
from data_prep.readers import ErrorPolicy, read_unit
from data_prep.units import ReadOptions
from dist_llm.errors import DataError


def read_all(paths, on_error="raise", unit_bytes=1 << 30, **options):
    opts = ReadOptions(**options)
    policy = ErrorPolicy(on_error)
    files = resolve_inputs([str(p) for p in paths], opts, policy)
    units = plan_units(files, unit_bytes, opts)
    return [d for u in units for d in read_unit(u, opts, policy)], policy, files, units


def write_parquet(path, texts, row_group_size=10, **columns):
    table = pa.table({"id": list(range(len(texts))), "text": texts, **columns})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_is_planned_from_the_footer_and_read_by_row_groups(tmp_path):
    texts = [f"document number {i} " * (1 + i % 7) for i in range(95)]
    path = write_parquet(tmp_path / "t.parquet", texts, embedding=[[0.5] * 64] * 95)
    docs, _, (file,), units = read_all([path], unit_bytes=300)
    meta = pq.read_metadata(path)
    text_leaf = meta.schema.names.index("text")
    assert file.rows == 95 and file.kind == "parquet"
    assert file.row_group_bytes == tuple(
        meta.row_group(g).column(text_leaf).total_compressed_size for g in range(10)
    )
    assert len(units) > 2 and all(s.kind == "parquet" for u in units for s in u.segments)
    assert [(d.text, d.offset) for d in docs] == [(t, i) for i, t in enumerate(texts)]


def test_parquet_null_and_blank_values_are_named_by_row(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", ["a", "b", None, "c", "  ", "d"], row_group_size=2)
    with pytest.raises(DataError, match=rf"{path}:row 2: column 'text' is null \(null_field\)"):
        read_all([path], unit_bytes=1)
    docs, policy, _, _ = read_all([path], on_error="skip", unit_bytes=1)
    assert [(d.text, d.offset) for d in docs] == [("a", 0), ("b", 1), ("c", 3), ("d", 5)]
    assert policy.counts == {"null_field": 1, "blank_document": 1}


@pytest.mark.parametrize(
    "field,problem", [("body", "no column 'body'"), ("id", "column 'id' is int64, not a string")]
)
def test_parquet_with_the_wrong_schema_names_file_column_and_columns(tmp_path, field, problem):
    path = write_parquet(tmp_path / "t.parquet", ["a", "b"])
    with pytest.raises(DataError) as info:
        read_all([path], text_field=field)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and "bad_schema" in message
    assert "(columns: id: int64, text: string)" in message and "--text-field" in message
    docs, policy, files, _ = read_all([path], on_error="skip", text_field=field)
    assert docs == [] and files == [] and policy.counts == {"bad_schema": 1}


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty.parquet", None, "empty_file"),
        ("zero.parquet", b"", "empty_file"),
        ("junk.parquet", b"not parquet at all", "corrupt_file"),
    ],
)
def test_empty_and_corrupt_parquet(tmp_path, name, data, reason):
    path = tmp_path / name
    if data is None:
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match=rf"{path}: .*\({reason}\)"):
        read_all([path])
    _, policy, _, _ = read_all([path], on_error="skip")
    assert policy.counts == {reason: 1}


@pytest.fixture(scope="module")
def saved_datasets(tmp_path_factory):
    """A saved Dataset in two arrow shards and a saved DatasetDict, among plain files."""
    import datasets

    root = tmp_path_factory.mktemp("hf")
    texts = [f"hf row {i} é" for i in range(300)]
    datasets.Dataset.from_dict({"text": texts, "n": list(range(300))}).save_to_disk(
        str(root / "corpus" / "b_single"), num_shards=2
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["train one", "train two"]}),
            "test": datasets.Dataset.from_dict({"text": ["test one"]}),
        }
    ).save_to_disk(str(root / "corpus" / "c_dict"))
    (root / "corpus" / "a.txt").write_text("plain file first")
    return root / "corpus", texts


def test_saved_hf_datasets_in_a_directory_are_read_by_row_ranges(saved_datasets):
    corpus, texts = saved_datasets
    docs, _, files, units = read_all([corpus], unit_bytes=2000)
    assert [f.kind for f in files] == ["text", "hf", "hf", "hf"]
    assert [f.uri.split("/corpus/")[1] for f in files[1:]] == [
        "b_single/data-00000-of-00002.arrow",
        "b_single/data-00001-of-00002.arrow",
        "c_dict/train/data-00000-of-00001.arrow",
    ]
    assert [f.rows for f in files[1:]] == [150, 150, 2]
    assert sum(1 for u in units for s in u.segments if s.kind == "hf") > 4  # row ranges
    assert [d.text for d in docs] == ["plain file first", *texts, "train one", "train two"]
    assert [d.offset for d in docs[1:152]] == [*range(150), 0]


def test_hf_dataset_dict_split_and_schema_errors(saved_datasets):
    corpus, _ = saved_datasets
    docs, _, _, _ = read_all([corpus / "c_dict"], hf_split="test")
    assert [d.text for d in docs] == ["test one"]
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: \['train', 'test'\]\); set --hf-split"):
        read_all([corpus / "c_dict"], hf_split="dev")
    with pytest.raises(DataError, match=r"data-00000-of-00002.arrow: column 'n' is int64, not a string"):
        read_all([corpus / "b_single"], text_field="n")


def test_format_hf_loads_plain_files_with_datasets(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"json {i}"}) + "\n" for i in range(5)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "json b"}) + "\n")
    (tmp_path / "c.txt").write_text("line one\nline two\n")
    cache = tmp_path / "cache"
    docs, _, files, _ = read_all(
        [tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.txt"],
        format="hf",
        hf_cache_dir=str(cache),
        unit_bytes=1,
    )
    assert all(f.kind == "hf" and f.uri.startswith(str(cache)) for f in files)
    assert [d.text for d in docs] == [*(f"json {i}" for i in range(5)), "json b", "line one", "line two"]
