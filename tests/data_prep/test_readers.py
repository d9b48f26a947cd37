import pytest

from data_prep.readers import ErrorPolicy, read_documents, resolve_inputs
from dist_llm.errors import DataError


def read_all(paths, on_error="raise", **kwargs):
    policy = ErrorPolicy(on_error)
    docs = list(read_documents(resolve_inputs([str(p) for p in paths], policy), policy, **kwargs))
    return docs, policy


def test_text_splits_and_line_numbers(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\n\nsecond para\r\n\nthird\n", encoding="utf-8")
    docs, _ = read_all([path])
    assert [(d.text, d.line) for d in docs] == [(path.read_bytes().decode(), 1)]  # verbatim
    docs, _ = read_all([path], text_split="line")
    assert [(d.text, d.line) for d in docs] == [
        ("first para", 1), ("still first", 2), ("second para", 5), ("third", 7)
    ]
    docs, _ = read_all([path], text_split="paragraph")
    assert [(d.text, d.line) for d in docs] == [
        ("first para\nstill first", 1), ("second para", 5), ("third", 7)
    ]
    assert all(d.source_file == str(path) for d in docs)


def test_directories_are_recursive_sorted_and_auto_detect_format(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from text", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "from jsonl"}\n\n{"text": "two"}\n', encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    docs, _ = read_all([tmp_path])
    assert [(d.text, d.line) for d in docs] == [("from jsonl", 1), ("two", 3), ("from text", 1)]


def test_custom_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "hello", "text": 1}\n', encoding="utf-8")
    docs, _ = read_all([path], text_field="body")
    assert [d.text for d in docs] == ["hello"]


BAD_INPUTS = [
    # (name, bytes, reason, line, kwargs)
    ("bad.txt", "ok line\nalso ok\nbad \xff byte\n".encode("latin-1"), "invalid_utf8", 3, {}),
    ("empty.txt", b"", "empty_file", 1, {}),
    ("blank.txt", b"  \n\t\n", "blank_document", 1, {}),
    ("blank.jsonl", b'{"text": "fine"}\n{"text": "   "}\n', "blank_document", 2, {}),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": "oops"\n', "bad_json", 2, {}),
    ("notobj.jsonl", b'["text"]\n', "bad_json", 1, {}),
    ("nofield.jsonl", b'{"text": "fine"}\n\n{"body": "x"}\n', "missing_field", 3, {}),
    ("nonstr.jsonl", b'{"text": 5}\n', "non_string_field", 1, {}),
    ("badutf.jsonl", b'{"text": "fine"}\n{"text": "\xc3("}\n', "invalid_utf8", 2, {}),
]


@pytest.mark.parametrize("name,data,reason,line,kwargs", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_with_file_and_line_or_is_counted(tmp_path, name, data, reason, line, kwargs):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_all([path], **kwargs)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert reason in message and "--on-error skip" in message

    docs, policy = read_all([path], on_error="skip", **kwargs)
    assert policy.summary() == {"total": 1, "by_reason": {reason: 1}}
    assert all(d.text.strip() for d in docs)


def test_invalid_utf8_skips_only_that_line_in_line_mode(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good one\nbad \xfe\ngood two\n")
    docs, policy = read_all([path], on_error="skip", text_split="line")
    assert [d.text for d in docs] == ["good one", "good two"]
    assert policy.counts == {"invalid_utf8": 1}


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"{missing}: input path does not exist"):
        read_all([missing])
    _, policy = read_all([missing], on_error="skip")
    assert policy.counts == {"missing_path": 1}
