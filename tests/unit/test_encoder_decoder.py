"""The T5-style encoder-decoder: parameter counts (ours and HF's), teacher forcing from labels,
masking, causality, the meta-device init path and mixed precision."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.encoder_decoder import (
    EncoderDecoderLM,
    count_encoder_decoder_params,
    relative_position_bucket,
    shift_right,
)
from dist_llm.models.presets import load_preset

VOCAB = 200


def small_cfg(**overrides) -> ModelConfig:
    base = dict(
        arch="encoder_decoder",
        vocab_size=VOCAB,
        d_model=64,
        n_layers=2,
        n_heads=4,
        norm_eps=1e-6,
        rel_pos_buckets=8,
        rel_pos_max_distance=16,
    )
    return ModelConfig(**{**base, **overrides})


def small_model(**overrides) -> EncoderDecoderLM:
    torch.manual_seed(0)
    return EncoderDecoderLM(small_cfg(**overrides)).eval()


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once


def randint(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "gated-gelu", "tie_embeddings": False},
        {"n_decoder_layers": 3, "ffn_hidden": 96},
    ],
    ids=["relu-tied", "gated-untied", "asymmetric"],
)
def test_param_count_formula_matches_numel(overrides):
    cfg = small_cfg(**overrides)
    model = EncoderDecoderLM(cfg)
    assert count_encoder_decoder_params(cfg) == numel(model)
    vocab_matrices = 1 if cfg.tie_embeddings else 2
    assert count_encoder_decoder_params(cfg, non_embedding=True) == numel(model) - vocab_matrices * VOCAB * 64


@pytest.mark.parametrize("name, total", [("t5-small", 60_506_624), ("t5-base", 222_903_552)])
def test_presets_match_hf_t5_parameter_counts(name, total):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = load_preset(name)
    hf_config = T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.head_dim,
        d_ff=cfg.ffn_dim,
        num_layers=cfg.n_layers,
        num_heads=cfg.n_heads,
    )
    with torch.device("meta"):
        ours, theirs = EncoderDecoderLM(cfg), T5ForConditionalGeneration(hf_config)
    assert count_encoder_decoder_params(cfg) == numel(ours) == numel(theirs) == total


def test_relative_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 16)):
            expected = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(relative_position_bucket(relative, bidirectional, buckets, distance), expected)


def test_loss_from_labels_is_teacher_forcing_on_shifted_labels():
    model = small_model()
    ids, labels = randint(2, 12), randint(2, 7, seed=2)
    labels[1, 5:] = -100
    shifted = shift_right(labels)
    assert shifted[:, 0].tolist() == [0, 0] and torch.equal(shifted[0, 1:], labels[0, :-1])
    assert shifted[1, 6].item() == 0  # an ignored label is read as padding
    with torch.no_grad():
        logits = model(ids, decoder_input_ids=shifted)
        manual = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        assert torch.allclose(model(ids, labels=labels), manual)
        assert torch.equal(model(ids, labels=labels, decoder_input_ids=shifted), model(ids, labels=labels))
    with pytest.raises(ValueError, match="labels or decoder_input_ids"):
        model(ids)


def test_padding_masks_make_padded_rows_match_unpadded():
    model = small_model()
    ids, dec = randint(1, 9), randint(1, 5, seed=2)
    pad_ids = torch.cat([ids, randint(1, 4, seed=3)], dim=1)
    pad_dec = torch.cat([dec, randint(1, 3, seed=4)], dim=1)
    mask = torch.tensor([[1] * 9 + [0] * 4])
    dec_mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        ref_states, ref_logits = model.hidden_states(ids), model(ids, decoder_input_ids=dec)
        states = model.hidden_states(pad_ids, attention_mask=mask)
        logits = model(
            pad_ids, attention_mask=mask, decoder_input_ids=pad_dec, decoder_attention_mask=dec_mask
        )
        empty = model(pad_ids, attention_mask=torch.zeros_like(mask), decoder_input_ids=pad_dec)
    assert torch.allclose(states[:, :9], ref_states, atol=1e-5)
    assert torch.allclose(logits[:, :5], ref_logits, atol=1e-5)
    assert torch.isfinite(empty).all()  # an all-padding row attends uniformly instead of NaN


def test_decoder_is_causal_and_encoder_bidirectional():
    model = small_model()
    ids, dec = randint(1, 10), randint(1, 6, seed=2)
    later_dec, later_ids = dec.clone(), ids.clone()
    later_dec[0, 4], later_ids[0, 9] = (dec[0, 4] + 1) % VOCAB, (ids[0, 9] + 1) % VOCAB
    with torch.no_grad():
        base = model(ids, decoder_input_ids=dec)
        assert torch.equal(model(ids, decoder_input_ids=later_dec)[:, :4], base[:, :4])
        assert not torch.allclose(model.hidden_states(later_ids)[:, 0], model.hidden_states(ids)[:, 0])


def test_meta_build_to_empty_init_weights_reties():
    cfg = small_cfg(init_std=0.04)  # T5's initializer_factor 2
    with torch.device("meta"):
        model = EncoderDecoderLM(cfg)
    model.to_empty(device="cpu")
    assert model.output.weight is not model.tok_embeddings.weight  # to_empty breaks the tie
    torch.manual_seed(0)
    model.init_weights()
    assert model.output.weight is model.tok_embeddings.weight
    layer = model.decoder.layers["1"]
    assert layer.ffn_norm.weight.eq(1).all() and model.encoder.norm.weight.eq(1).all()
    stds = {
        "embedding": (model.tok_embeddings.weight, 2.0),
        "wq": (layer.attention.wq.weight, 2 / (64 * 16) ** 0.5),  # 1/sqrt(d_model * head_dim)
        "wk": (layer.cross_attention.wk.weight, 2 / 8),
        "wo": (layer.feed_forward.wo.weight, 2 / 256**0.5),
    }
    for name, (weight, std) in stds.items():
        assert abs(weight.std().item() / std - 1) < 0.1, name
    untied = dataclasses.replace(cfg, tie_embeddings=False)
    assert EncoderDecoderLM(untied).output.weight is not EncoderDecoderLM(untied).tok_embeddings.weight


def test_bf16_autocast_and_dropout():
    model = small_model(dropout=0.1)
    ids, labels = randint(2, 8), randint(2, 5, seed=2)
    mask = torch.tensor([[1] * 8, [0] * 8])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, attention_mask=mask, decoder_input_ids=shift_right(labels))
    assert torch.isfinite(logits).all()  # fp32 mask minimum cast to bf16 stays finite
    model.train()
    assert not torch.equal(model(ids, labels=labels), model(ids, labels=labels))  # dropout is active
    model.eval()
    assert torch.equal(model(ids, labels=labels), model(ids, labels=labels))


def test_rejects_grouped_query_attention():
    with pytest.raises(ConfigError, match="n_kv_heads=2"):
        EncoderDecoderLM(small_cfg(n_kv_heads=2))
