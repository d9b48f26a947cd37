"""HF transformers interop for the encoder-decoder: our model and T5ForConditionalGeneration compute
the same logits after export (in memory and through a saved directory) and after import, for T5
v1.0 (relu, tied head, rescaled) and v1.1 (gated-gelu, untied head); generate() runs on an export."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

from data_prep.tokenizer import load_tokenizer, train_sentencepiece
from dist_llm.errors import ConfigError
from dist_llm.interop import import_hf, save_hf_model
from dist_llm.interop.hf_t5 import from_hf_t5, to_hf_t5
from dist_llm.models.config import ModelConfig
from dist_llm.models.encoder_decoder import EncoderDecoderLM, shift_right
from tests.unit.test_hf_llama import corpus

TOLERANCE = 1e-4
VARIANTS = [("relu", True), ("gated-gelu", False)]
IDS = ["v1.0-relu-tied", "v1.1-gated-untied"]
TIED_COPIES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    return train_sentencepiece(corpus(), str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), 480)


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random norm gains, so a mixed-up norm mapping cannot hide behind all-ones weights."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def small_t5(vocab_size: int, act: str, tied: bool, decoder_layers: int = 3) -> EncoderDecoderLM:
    torch.manual_seed(0)
    # init_std 0.01 (T5 factor 0.5) keeps an untied head's logits O(10), where fp32 agrees to 1e-5.
    cfg = ModelConfig(
        arch="encoder_decoder",
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_decoder_layers=decoder_layers,
        n_heads=4,
        activation=act,
        tie_embeddings=tied,
        norm_eps=1e-6,
        rel_pos_buckets=8,
        rel_pos_max_distance=20,
        max_seq_len=64,
        init_std=0.01,
    )
    return randomize_norms(EncoderDecoderLM(cfg))


def batch(vocab_size: int) -> dict[str, torch.Tensor]:
    """Two rows with encoder padding (one left-padded) and decoder padding, plus ignored labels."""
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[0, 22:], mask[1, :4] = 0, 0
    labels = torch.randint(0, vocab_size, (2, 10), generator=g)
    labels[1, 7:] = -100
    decoder_mask = torch.ones(2, 10, dtype=torch.long)
    decoder_mask[1, 8:] = 0
    return {
        "input_ids": torch.randint(0, vocab_size, (2, 30), generator=g),
        "attention_mask": mask,
        "labels": labels,
        "decoder_attention_mask": decoder_mask,
    }


def compare(ours: EncoderDecoderLM, theirs: T5ForConditionalGeneration) -> None:
    inputs = batch(ours.cfg.vocab_size)
    with torch.no_grad():
        out = theirs(**inputs)
        logits = ours(**{**inputs, "labels": None, "decoder_input_ids": shift_right(inputs["labels"])})
        loss = ours(**inputs)
    diff = (logits - out.logits).abs().max().item()
    assert diff < TOLERANCE, f"logits differ by {diff}"
    assert abs(loss.item() - out.loss.item()) < TOLERANCE


def hf_model(config: T5Config, state: dict[str, torch.Tensor]) -> T5ForConditionalGeneration:
    """A T5ForConditionalGeneration holding `state`. transformers 5 builds lm_head tied to the
    embedding whatever the config says, so an untied head is untied by hand before loading."""
    model = T5ForConditionalGeneration(config)
    if "lm_head.weight" in state:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= TIED_COPIES
    return model.eval()


@pytest.mark.parametrize("act, tied", VARIANTS, ids=IDS)
def test_to_hf_gives_same_logits_and_round_trips(act, tied):
    ours = small_t5(300, act, tied)
    config, state = to_hf_t5(ours.state_dict(), ours.cfg)
    assert ("lm_head.weight" in state) != tied
    theirs = hf_model(config, state)
    compare(ours, theirs)
    cfg, back = from_hf_t5(theirs)
    shape = (
        "d_model",
        "n_layers",
        "decoder_layers",
        "n_heads",
        "ffn_dim",
        "act",
        "tie_embeddings",
        "rel_pos_buckets",
        "rel_pos_max_distance",
        "norm_eps",
        "init_std",
        "max_seq_len",
    )
    assert all(getattr(cfg, key) == getattr(ours.cfg, key) for key in shape)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def random_hf_t5(act: str, tied: bool) -> T5ForConditionalGeneration:
    torch.manual_seed(1)
    config = T5Config(
        vocab_size=250,
        d_model=48,
        d_kv=12,
        d_ff=80,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=40,
        feed_forward_proj=act,
        tie_word_embeddings=tied,
        initializer_factor=0.5,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    if not tied:  # transformers 5 ties lm_head at construction; give v1.1 its own head
        model.lm_head.weight = torch.nn.Parameter(torch.randn(250, 48) * 0.5)
    return randomize_norms(model)


@pytest.mark.parametrize("act, tied", VARIANTS, ids=IDS)
def test_import_saved_hf_dir_gives_same_logits(tmp_path, act, tied):
    theirs = random_hf_t5(act, tied)
    theirs.save_pretrained(str(tmp_path / "hf"))
    cfg, state = import_hf(str(tmp_path / "hf"))
    shape = (cfg.ffn_dim, cfg.decoder_layers, cfg.rel_pos_buckets, cfg.act, cfg.tie_embeddings)
    assert shape == (80, 1, 16, act, tied)
    ours = EncoderDecoderLM(cfg).eval()
    ours.load_state_dict(state)  # strict: every key mapped, none left over
    assert (ours.output.weight is ours.tok_embeddings.weight) == tied
    compare(ours, theirs)
    _, from_model = from_hf_t5(theirs)  # the in-memory model maps to the same tensors
    assert all(torch.equal(from_model[k], v) for k, v in state.items())
    # A Hub v1.1 config.json (transformers 4.x era) says tie_word_embeddings=false, no rescale key.
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("scale_decoder_outputs")
    config_file.write_text(json.dumps({**config, "tie_word_embeddings": tied}))
    assert import_hf(str(tmp_path / "hf"))[0].tie_embeddings == tied


def greedy(model: EncoderDecoderLM, input_ids: torch.Tensor, steps: int) -> torch.Tensor:
    out = torch.zeros(1, 1, dtype=torch.long)  # decoding starts from the pad id
    with torch.no_grad():
        for _ in range(steps):
            out = torch.cat([out, model(input_ids, decoder_input_ids=out)[:, -1:].argmax(-1)], dim=1)
    return out


@pytest.mark.parametrize("act, tied", VARIANTS, ids=IDS)
def test_export_loads_with_auto_class_and_generates(tmp_path, sp_model, act, tied):
    tokenizer = load_tokenizer(sp_model)
    # Symmetric depth: transformers 5.23's generate() sizes its KV cache by the encoder's num_layers
    # and fails with IndexError when the decoder is deeper (a transformers bug, not the export's).
    ours = small_t5(tokenizer.vocab_size, act, tied, decoder_layers=2)
    out = save_hf_model(ours.state_dict(), ours.cfg, str(tmp_path / "hf"), sp_model)
    theirs = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert isinstance(theirs, T5ForConditionalGeneration)
    assert ("lm_head.weight" in load_file(os.path.join(out, "model.safetensors"))) != tied
    assert (theirs.lm_head.weight is theirs.shared.weight) == tied
    assert (theirs.config.decoder_start_token_id, theirs.config.pad_token_id) == (0, tokenizer.pad_id)
    compare(ours, theirs)

    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.convert_tokens_to_ids("<extra_id_0>") == tokenizer.sentinel_ids()[0]
    prompt = torch.tensor([hf_tokenizer("the model reads <extra_id_0> shards")["input_ids"]])
    # The exported generation_config.json starts decoding from the pad token, as T5 does.
    generated = theirs.generate(prompt, max_new_tokens=6, do_sample=False)  # may stop early at EOS
    assert generated.shape[1] > 1 and generated[0, 0].item() == 0
    assert torch.equal(generated, greedy(ours, prompt, 6)[:, : generated.shape[1]])

    cfg, state = import_hf(out)  # and back: the same model
    assert (cfg.act, cfg.tie_embeddings, cfg.decoder_layers) == (act, tied, 2)
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj='gated-silu' is not supported"),
        ({"d_kv": 8}, "d_kv=8 \\* num_heads=4 != d_model=48"),
        ({"tie_word_embeddings": True, "scale_decoder_outputs": True}, "separate lm_head.weight"),
    ],
)
def test_import_rejects_what_our_model_cannot_express(tmp_path, change, message):
    random_hf_t5("gated-gelu", tied=False).save_pretrained(str(tmp_path / "hf"))
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(ConfigError, match=message):
        import_hf(str(tmp_path / "hf"))


def test_is_gated_act_mismatch_is_named():
    config = random_hf_t5("relu", tied=True).config
    config.is_gated_act = True
    with pytest.raises(ConfigError, match="is_gated_act=True contradicts feed_forward_proj='relu'"):
        from_hf_t5(T5ForConditionalGeneration(config))


def test_to_hf_rejects_other_archs():
    with pytest.raises(ConfigError, match="no T5 equivalent"):
        to_hf_t5({}, ModelConfig(vocab_size=10))
