"""The BERT encoder: closed-form parameter counts (ours and HF's), loss and logit shapes, the padding
mask, and meta-device construction with init_weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.encoder import EncoderLM, count_encoder_params
from dist_llm.models.presets import load_preset


def small_cfg(**overrides) -> ModelConfig:
    base = dict(
        arch="encoder",
        vocab_size=211,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_seq_len=48,
        type_vocab_size=3,
        norm_eps=1e-12,
    )
    return ModelConfig(**{**base, **overrides})


def build(cfg: ModelConfig, seed: int = 0) -> EncoderLM:
    torch.manual_seed(seed)
    return EncoderLM(cfg).eval()


def vocab_sized(model: EncoderLM) -> set[int]:
    return {
        id(model.tok_embeddings.weight),
        id(model.output.weight),
        id(model.output_bias),
        id(model.pos_embeddings.weight),
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False},
        {"activation": "relu", "ffn_hidden": 96},
        {"n_layers": 3, "n_heads": 8},
    ],
    ids=["tied", "untied", "relu", "deeper"],
)
def test_count_matches_built_model(overrides):
    cfg = small_cfg(**overrides)
    model = build(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_encoder_params(cfg)
    body = sum(p.numel() for p in model.parameters() if id(p) not in vocab_sized(model))
    assert body == count_encoder_params(cfg, non_embedding=True)


@pytest.mark.parametrize("name, nominal", [("bert-base", 110e6), ("bert-large", 335e6)])
def test_presets_count_what_hf_bert_for_pretraining_holds(name, nominal):
    from transformers import BertConfig, BertForPreTraining

    cfg = load_preset(name)
    assert cfg.arch == "encoder" and cfg.vocab_size == 30522 and cfg.max_seq_len == 512
    config = BertConfig(
        vocab_size=30522,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=4 * cfg.d_model,
    )
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in BertForPreTraining(config).parameters())
        ours = sum(p.numel() for p in EncoderLM(cfg).parameters())
    assert count_encoder_params(cfg) == hf_count == ours
    assert abs(hf_count / nominal - 1) < 0.01


def batch(cfg: ModelConfig, rows: int = 3, seq_len: int = 20, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (rows, seq_len), generator=g)
    types = (torch.arange(seq_len) >= seq_len // 2).long().expand(rows, seq_len).clone()
    labels = torch.full((rows, seq_len), -100)
    labels[:, 3::4] = ids[:, 3::4]
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "next_sentence_label": torch.tensor([0, 1, 0])[:rows],
    }


def test_logits_and_loss():
    cfg = small_cfg()
    model = build(cfg)
    b = batch(cfg)
    logits = model(b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"])
    assert logits.shape == (3, 20, cfg.vocab_size)
    mlm = model(**{k: v for k, v in b.items() if k != "next_sentence_label"})
    expected = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100)
    assert mlm.shape == () and torch.allclose(mlm, expected, atol=1e-6)
    total = model(**b)  # engines call model(**batch)
    hidden = model.hidden_states(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    nsp = F.cross_entropy(model.nsp_logits(hidden), b["next_sentence_label"])
    assert torch.allclose(total, expected + nsp, atol=1e-6)
    assert model.pooled(hidden).shape == (3, cfg.d_model)
    # At init the MLM loss is about ln(V): logits start near zero.
    assert abs(mlm.item() - torch.log(torch.tensor(cfg.vocab_size)).item()) < 0.5


def test_every_parameter_gets_a_gradient_without_a_sentence_task():
    """DDP (without find_unused_parameters) needs a gradient for the pooler and NSP head too."""
    model = build(small_cfg()).train()
    b = batch(model.cfg)
    del b["next_sentence_label"]
    model(**b).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_token_types_change_the_output():
    cfg = small_cfg()
    model = build(cfg)
    b = batch(cfg)
    assert not torch.allclose(model(b["input_ids"], b["token_type_ids"]), model(b["input_ids"]))


def test_padding_does_not_change_real_positions():
    cfg = small_cfg()
    model = build(cfg)
    b = batch(cfg, rows=2, seq_len=16)
    short = model(b["input_ids"][:, :10], b["token_type_ids"][:, :10])
    padded_ids = b["input_ids"].clone()
    padded_ids[:, 10:] = 0  # arbitrary pad content: masked out
    mask = torch.ones_like(padded_ids)
    mask[:, 10:] = 0
    padded = model(padded_ids, b["token_type_ids"], attention_mask=mask)
    assert (padded[:, :10] - short).abs().max() < 1e-5
    unmasked = model(padded_ids, b["token_type_ids"])
    assert (unmasked[:, :10] - short).abs().max() > 1e-3, "without the mask the pads do leak in"


def test_meta_build_then_init_weights_reties_and_initializes():
    cfg = small_cfg(init_std=0.05)
    with torch.device("meta"):
        model = EncoderLM(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert model.output.weight is model.tok_embeddings.weight
    params = dict(model.named_parameters())
    assert 0.04 < params["layers.0.feed_forward.w1.weight"].std().item() < 0.06
    assert 0.04 < params["pos_embeddings.weight"].std().item() < 0.06
    assert (params["layers.1.attention_norm.weight"] == 1).all() and (params["embed_norm.bias"] == 0).all()
    assert (params["output_bias"] == 0).all() and (params["pooler.bias"] == 0).all()
    assert torch.isfinite(model(torch.randint(0, cfg.vocab_size, (1, 8)))).all()
    # Calling it again with the same seed gives the same weights (it initializes every tensor).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_untied_head_is_its_own_matrix():
    model = build(small_cfg(tie_embeddings=False))
    assert model.output.weight is not model.tok_embeddings.weight


def test_rejects_other_archs_and_too_long_inputs():
    with pytest.raises(ConfigError, match="model.arch='decoder'"):
        EncoderLM(dataclasses.replace(small_cfg(), arch="decoder", activation=None))
    model = build(small_cfg(max_seq_len=8))
    with pytest.raises(ConfigError, match="model.max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
