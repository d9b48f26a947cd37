import numpy as np
import pytest

from data_prep.tokenizer import (
    PIECE_CHARS,
    SPECIAL_TOKENS,
    load_tokenizer,
    piece_bounds,
    train_sentencepiece,
)
from dist_llm.errors import DataError


def test_trained_sentencepiece_roundtrips_and_has_special_tokens(sp_model, corpus_docs):
    tok = load_tokenizer(sp_model)
    assert tok.kind == "sentencepiece"
    assert tok.vocab_size == 512
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert (tok.sep_id, tok.cls_id, tok.sentinel_ids()) == (5, 6, list(range(7, 39)))
    assert len(tok.sha256) == 64
    for offset, piece in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(piece) == 4 + offset
        assert 4 + offset in tok.encode(f"x {piece} y")  # one id, never split into pieces
    assert "<extra_id_31>" in SPECIAL_TOKENS
    # Lossless, including whitespace runs, tabs, newlines and characters never seen in training.
    for text in corpus_docs[:50] + ["  two  spaces\tand tab\n\nnew 日本語 ✓ ", "x"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(corpus_docs[:3]) == [tok.encode(t) for t in corpus_docs[:3]]


def test_training_is_deterministic(tmp_path, corpus_docs, sp_model):
    again = train_sentencepiece(corpus_docs, str(tmp_path / "again.model"), 512)
    assert open(again, "rb").read() == open(sp_model, "rb").read()


def test_unigram_and_file_source(tmp_path, corpus_docs):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus_docs), encoding="utf-8")
    model = train_sentencepiece([path], str(tmp_path / "u.model"), 400, model_type="unigram")
    tok = load_tokenizer(model)
    assert tok.decode(tok.encode(corpus_docs[0])) == corpus_docs[0]


def test_training_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="--vocab-size"):
        train_sentencepiece(["tiny text only"], str(tmp_path / "t.model"), 5000)
    with pytest.raises(DataError, match="no non-blank text"):
        train_sentencepiece(["", "  \n"], str(tmp_path / "t.model"), 500)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.model"))
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(DataError, match="sentencepiece"):
        load_tokenizer(str(bogus))
    with pytest.raises(DataError, match="Hugging Face"):
        load_tokenizer(str(tmp_path))  # a directory without tokenizer files


def test_hf_tokenizer_directory(hf_tokenizer_dir, corpus_docs):
    tok = load_tokenizer(str(hf_tokenizer_dir))
    assert tok.kind == "hf"
    assert tok.eos_id is not None and tok.bos_id is not None and tok.mask_id is not None
    assert tok.vocab_size >= 300
    assert tok.decode(tok.encode(corpus_docs[0])) == corpus_docs[0]
    assert len(tok.sha256) == 64


def test_piece_bounds_end_before_a_space_after_a_word_and_respect_the_limit():
    text = "ab  cd efg\nh " * 40 + "x" * 50 + " tail"
    bounds = list(piece_bounds(text, 16))
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(0 < stop - start <= 16 for start, stop in bounds)

    def after_word(i: int) -> bool:
        return text[i] == " " and not text[i - 1].isspace()

    for start, stop in bounds[:-1]:
        # The last such space in the window's second half, else (in the run of x) the limit.
        spaces = [i for i in range(start + 8, start + 16) if after_word(i)]
        assert stop == (spaces[-1] if spaces else start + 16)
    assert any(stop - start == 16 for start, stop in bounds)
    assert list(piece_bounds("short", 16)) == [(0, 5)]


def test_a_long_document_in_pieces_gets_the_ids_of_the_whole(sp_model, hf_tokenizer_dir, corpus_docs):
    # Newlines, double spaces and non-ASCII included; several pieces.
    text = " ".join(corpus_docs) * 6
    assert len(list(piece_bounds(text))) >= 4
    for tok in (load_tokenizer(sp_model), load_tokenizer(str(hf_tokenizer_dir))):
        assert tok.splits_at_spaces()
        ids = tok.encode_long(text, np.dtype(np.uint16))
        assert ids.dtype == np.uint16 and ids.tolist() == tok.encode(text)


def test_a_piece_cut_inside_a_word_changes_ids_only_there_and_still_decodes(sp_model):
    # No space in the first window: the cut falls at PIECE_CHARS, inside the run of letters.
    tok = load_tokenizer(sp_model)
    text = "ab" * (PIECE_CHARS // 2 + 10) + " and then words."
    ids = tok.encode_long(text, np.dtype(np.uint16)).tolist()
    assert tok.decode(ids) == text
    whole = tok.encode(text)
    head = tok.encode(text[:PIECE_CHARS])
    assert ids[: len(head)] == head and ids[-5:] == whole[-5:]
