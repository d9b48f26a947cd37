"""HF transformers interop for the encoder: our model and BertForPreTraining / BertForMaskedLM compute
the same MLM and NSP logits after export and after import, an exported directory loads with the Auto
classes together with a tokenizer that encodes like ours and knows its mask/sep/cls tokens, and
configs we cannot express are refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
)

from data_prep.tokenizer import load_tokenizer, train_sentencepiece
from dist_llm.errors import ConfigError
from dist_llm.interop import import_hf, save_hf_model
from dist_llm.interop.hf_bert import from_hf_bert, to_hf_bert
from dist_llm.models.config import ModelConfig
from dist_llm.models.encoder import EncoderLM
from tests.unit.test_hf_llama import TEXTS, corpus

TOLERANCE = 1e-4
TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    return train_sentencepiece(corpus(), str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), 480)


def small_encoder(vocab_size: int, tied: bool = True) -> EncoderLM:
    """fp32, random weights at a scale where logits differ clearly; LayerNorm gains and every bias
    random too, so a mixed-up mapping cannot hide behind ones and zeros."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="encoder",
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        norm_eps=1e-12,
        tie_embeddings=tied,
        init_std=0.1,
    )
    model = EncoderLM(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.5, 0.5)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def inputs(vocab_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Three rows with segment B from position 12 and two of them right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (3, 40), generator=g)
    types = (torch.arange(40) >= 12).long().expand(3, 40).clone()
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, 9:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def ours_logits(model: EncoderLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        hidden = model.hidden_states(**batch)
        return model.mlm_logits(hidden), model.nsp_logits(hidden)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_computes_the_same_logits(tied):
    ours = small_encoder(300, tied)
    config, hf_state = to_hf_bert(ours.state_dict(), ours.cfg)
    theirs = BertForPreTraining(config).eval()
    result = theirs.load_state_dict(hf_state, strict=False)
    assert set(result.missing_keys) == (TIED_KEYS if tied else set()) and not result.unexpected_keys
    assert (theirs.cls.predictions.decoder.weight is theirs.bert.embeddings.word_embeddings.weight) == tied
    batch = inputs(300)
    mlm, nsp = ours_logits(ours, batch)
    with torch.no_grad():
        out = theirs(**batch)
    assert max_diff(mlm, out.prediction_logits) < TOLERANCE
    assert max_diff(nsp, out.seq_relationship_logits) < TOLERANCE


def random_hf(cls: type, tied: bool = True):
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=80,
        type_vocab_size=3,
        initializer_range=0.1,
        layer_norm_eps=1e-7,
        hidden_act="relu",
        tie_word_embeddings=tied,
    )
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_import_pretraining_checkpoint_gives_same_logits(tmp_path, tied):
    theirs = random_hf(BertForPreTraining, tied)
    theirs.save_pretrained(str(tmp_path / "hf"))
    cfg, state = from_hf_bert(str(tmp_path / "hf"))
    shape = (cfg.ffn_dim, cfg.act, cfg.max_seq_len, cfg.type_vocab_size, cfg.norm_eps, cfg.tie_embeddings)
    assert shape == (96, "relu", 80, 3, 1e-7, tied)
    ours = EncoderLM(cfg).eval()
    ours.load_state_dict(state)  # strict: every key mapped, none left over
    assert (ours.output.weight is ours.tok_embeddings.weight) == tied
    batch = inputs(300, seed=2)
    mlm, nsp = ours_logits(ours, batch)
    with torch.no_grad():
        out = theirs(**batch)
    assert max_diff(mlm, out.prediction_logits) < TOLERANCE
    assert max_diff(nsp, out.seq_relationship_logits) < TOLERANCE
    # The in-memory model maps to the same tensors as its saved directory.
    _, from_model = from_hf_bert(theirs)
    assert all(torch.equal(from_model[k], v) for k, v in state.items())


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertModel])
def test_import_checkpoint_without_heads_fills_them_from_init(tmp_path, warnings_log, cls):
    """BertForMaskedLM lacks the pooler and NSP head; BertModel (which has a pooler) lacks the MLM
    transform and NSP head. Both import for continued pretraining."""
    theirs = random_hf(cls)
    theirs.save_pretrained(str(tmp_path / "hf"))
    cfg, state = import_hf(str(tmp_path / "hf"))
    ours = EncoderLM(cfg).eval()
    ours.load_state_dict(state)
    assert "NSP head" in warnings_log.text
    assert torch.equal(state["nsp_head.bias"], torch.zeros(2))
    assert 0.08 < state["nsp_head.weight"].std().item() < 0.12  # normal(0, initializer_range)
    batch = inputs(300, seed=3)
    with torch.no_grad():
        if cls is BertModel:
            assert "MLM transform" in warnings_log.text and (state["head_norm.weight"] == 1).all()
            out = theirs(**batch)
            hidden = ours.hidden_states(**batch)
            assert max_diff(hidden, out.last_hidden_state) < TOLERANCE
            assert max_diff(ours.pooled(hidden), out.pooler_output) < TOLERANCE
        else:
            assert "pooler" in warnings_log.text and torch.equal(state["pooler.bias"], torch.zeros(64))
            assert max_diff(ours(**batch), theirs(**batch).logits) < TOLERANCE
    again = import_hf(str(tmp_path / "hf"))[1]
    assert all(torch.equal(again[k], v) for k, v in state.items()), "the filled-in heads are reproducible"


def test_save_hf_model_loads_with_auto_classes_and_tokenizer(tmp_path, sp_model):
    tokenizer = load_tokenizer(sp_model)
    ours = small_encoder(tokenizer.vocab_size)
    out = save_hf_model(ours.state_dict(), ours.cfg, str(tmp_path / "hf"), sp_model)

    theirs = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert isinstance(theirs, BertForMaskedLM)
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert (hf_tokenizer.mask_token_id, hf_tokenizer.sep_token_id, hf_tokenizer.cls_token_id) == (
        tokenizer.mask_id,
        tokenizer.sep_id,
        tokenizer.cls_id,
    )
    assert hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.extra_special_tokens) == tokenizer.sentinel_ids()
    for text in TEXTS + ["the <mask> reads data", "<mask>", "<cls> a <sep> b <sep>"]:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text), f"{text!r}"
    ids = [tokenizer.cls_id] + tokenizer.encode("the model reads data in shards") + [tokenizer.sep_id]
    ids[3] = tokenizer.mask_id
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == tokenizer.decode(
        [i for i in ids if i not in (tokenizer.mask_id, tokenizer.sep_id, tokenizer.cls_id)]
    )

    batch = {
        "input_ids": torch.tensor([ids]),
        "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }
    mlm, nsp = ours_logits(ours, batch)
    with torch.no_grad():
        assert max_diff(mlm, theirs(**batch).logits) < TOLERANCE
        pretraining = BertForPreTraining.from_pretrained(out).eval()(**batch)
    assert max_diff(nsp, pretraining.seq_relationship_logits) < TOLERANCE
    with open(f"{out}/config.json", encoding="utf-8") as f:
        assert json.load(f)["pad_token_id"] == tokenizer.pad_id

    cfg, state = import_hf(out)  # round trip through the directory is exact
    assert cfg.ffn_dim == ours.cfg.ffn_dim and cfg.tie_embeddings
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new' is not supported"),
        ({"is_decoder": True}, "is_decoder=True is not supported"),
    ],
)
def test_import_rejects_what_our_encoder_cannot_express(tmp_path, change, message):
    random_hf(BertForMaskedLM).save_pretrained(str(tmp_path / "hf"))
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(ConfigError, match=message):
        import_hf(str(tmp_path / "hf"))


def test_export_rejects_other_archs():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2)
    with pytest.raises(ConfigError, match="model.arch='decoder' has no BERT equivalent"):
        to_hf_bert({}, cfg)
