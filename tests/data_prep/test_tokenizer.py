import pytest

from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_sentencepiece
from dist_llm.errors import DataError


def test_trained_sentencepiece_roundtrips_and_has_special_tokens(sp_model, corpus_docs):
    tok = load_tokenizer(sp_model)
    assert tok.kind == "sentencepiece"
    assert tok.vocab_size == 512
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert len(tok.sha256) == 64
    for offset, piece in enumerate(SPECIAL_TOKENS):
        assert tok.encode(piece) == [4 + offset]
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


def test_hf_tokenizer_directory(tmp_path, corpus_docs):
    hf_dir = build_hf_tokenizer(tmp_path / "hf", corpus_docs)
    tok = load_tokenizer(str(hf_dir))
    assert tok.kind == "hf"
    assert tok.eos_id is not None and tok.bos_id is not None and tok.mask_id is not None
    assert tok.vocab_size >= 300
    assert tok.decode(tok.encode(corpus_docs[0])) == corpus_docs[0]
    assert len(tok.sha256) == 64


def build_hf_tokenizer(out, texts):
    """A small byte-level BPE trained in-test and saved as a HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<mask>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>"
    )
    fast.save_pretrained(str(out))
    return out
