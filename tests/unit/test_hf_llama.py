"""HF transformers interop: our decoder and LlamaForCausalLM compute the same logits after export
and after import, transformers' generate() runs on an export, and the exported tokenizer encodes
exactly like ours."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from data_prep.tokenizer import load_tokenizer, train_sentencepiece
from dist_llm.data.sources import tokenizer_path
from dist_llm.errors import ConfigError
from dist_llm.evaluate import load_trained_model
from dist_llm.interop import export_hf, from_hf_llama, import_hf, save_hf_model, to_hf_llama
from dist_llm.models import DecoderLM, ModelConfig, generate
from tests.conftest import make_trainer

TOLERANCE = 1e-4
WORDS = (
    "the model reads data in shards and writes a checkpoint every step of training with attention "
    "heads gradient learning rate vocabulary sequence window seed python function return value"
).split()
TEXTS = [
    "Hello world",
    " leading space",
    "  two spaces",
    "trailing  ",
    "a\nb\n\nc",
    "\nstarts with newline",
    "digits 12345 and 3.14159",
    "naïve café, Straße, 日本語, emoji 😀",
    "tab\tseparated",
    "",
    " ",
    "\n",
    "literal </s> and <s> stay text",
    "a <mask> b",
    "x<extra_id_0>y",
    "<sep><cls> pair",
]


def corpus(count: int = 200) -> list[str]:
    rng = random.Random(0)
    endings = [".", " 42!", " (é)?"]
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + rng.choice(endings)
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    return train_sentencepiece(corpus(), str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), 480)


def small_decoder(vocab_size: int, tied: bool) -> DecoderLM:
    """fp32, random weights at a scale where logits differ clearly; norm gains random too, so a
    mixed-up norm mapping cannot hide behind all-ones weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-6,
        tie_embeddings=tied,
        init_std=0.1,
    )
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, sp_model, tied):
    ours = small_decoder(load_tokenizer(sp_model).vocab_size, tied)
    out = save_hf_model(ours.state_dict(), ours.cfg, str(tmp_path / "hf"), sp_model)
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(theirs, LlamaForCausalLM)
    assert (theirs.lm_head.weight is theirs.model.embed_tokens.weight) == tied
    assert ("lm_head.weight" in load_file(os.path.join(out, "model.safetensors"))) != tied
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = max_diff(ours(ids), theirs(ids).logits)
    assert diff < TOLERANCE, f"export logits differ by {diff}"

    # transformers' generate() runs, and greedy decoding picks the tokens ours picks.
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = torch.tensor([tokenizer("the model reads")["input_ids"]])
    hf_out = theirs.generate(prompt, max_new_tokens=8, do_sample=False)  # may stop early at EOS
    assert hf_out.shape[1] > prompt.shape[1]
    assert torch.equal(hf_out, generate(ours, prompt, 8, temperature=0.0)[:, : hf_out.shape[1]])


def random_llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_import_hf_gives_same_logits(tmp_path, tied):
    theirs = random_llama(tied)
    theirs.save_pretrained(str(tmp_path / "hf"))
    cfg, state = import_hf(str(tmp_path / "hf"))
    shape = (cfg.ffn_dim, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps, cfg.max_seq_len)
    assert shape == (96, 2, 5e5, 1e-5, 128)
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(state)  # strict: every key mapped, none left over
    assert (ours.output.weight is ours.tok_embeddings.weight) == tied
    ids = torch.randint(0, 300, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = max_diff(ours(ids), theirs(ids).logits)
    assert diff < TOLERANCE, f"import logits differ by {diff}"
    # The in-memory model maps to the same tensors as its saved directory.
    _, from_model = from_hf_llama(theirs)
    assert all(torch.equal(from_model[k], v) for k, v in state.items())


def test_round_trip_is_exact(sp_model):
    ours = small_decoder(load_tokenizer(sp_model).vocab_size, tied=False)
    hf_config, hf_state = to_hf_llama(ours.state_dict(), ours.cfg)
    theirs = LlamaForCausalLM(hf_config)
    theirs.load_state_dict(hf_state)
    cfg, state = from_hf_llama(theirs)
    assert cfg.ffn_dim == ours.cfg.ffn_dim and cfg.n_kv_heads == 2 and cfg.rope_theta == 5000.0
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("model_type, vocab_size", [("bpe", 480), ("unigram", 350)])
def test_exported_sentencepiece_tokenizer_encodes_like_ours(tmp_path, model_type, vocab_size):
    path = train_sentencepiece(corpus(), str(tmp_path / "sp.model"), vocab_size, model_type=model_type)
    ours = load_tokenizer(path)
    model = small_decoder(ours.vocab_size, tied=True)
    out = save_hf_model(model.state_dict(), model.cfg, str(tmp_path / "hf"), path)
    theirs = AutoTokenizer.from_pretrained(out)
    texts = TEXTS + corpus(20)
    if model_type == "unigram":  # documented: Unigram matches literal control pieces ("</s>") in text
        texts.remove("literal </s> and <s> stay text")
    for text in texts:
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, f"{text!r}"
        assert theirs.decode(ids) == ours.decode(ids), f"{text!r}"
    special = (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    assert special == (ours.bos_id, ours.eos_id, ours.pad_id)


def test_hf_tokenizer_dir_is_copied(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>").save_pretrained(
        str(tmp_path / "tok")
    )
    ours = load_tokenizer(str(tmp_path / "tok"))
    model = small_decoder(ours.vocab_size, tied=True)
    out = save_hf_model(
        model.state_dict(), model.cfg, str(tmp_path / "hf"), str(tmp_path / "tok"), dtype="bf16"
    )
    theirs = AutoTokenizer.from_pretrained(out)
    assert all(theirs(t, add_special_tokens=False)["input_ids"] == ours.encode(t) for t in TEXTS)
    assert AutoModelForCausalLM.from_pretrained(out).config.eos_token_id == ours.eos_id
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["dtype"] == "bfloat16"


@pytest.mark.parametrize("max_shard_bytes", [5 * 10**9, 200_000], ids=["one_file", "sharded"])
def test_export_hf_from_a_trained_checkpoint(tmp_path, dataset, max_shard_bytes):
    """Read from the sharded checkpoint tensor by tensor and written shard by shard: past the
    shard size, as transformers writes big models (numbered files plus an index), which it loads
    and which we import back."""
    run = tmp_path / "run"
    make_trainer(run, dataset, ["train.max_steps=2", "checkpoint.interval=2"], []).fit()
    out = export_hf(str(run), str(tmp_path / "hf"), max_shard_bytes=max_shard_bytes)
    files = sorted(f for f in os.listdir(out) if f.startswith("model"))
    if max_shard_bytes < 10**6:  # 0.66 MB of weights in fp32, 200 kB shards (the embedding alone is 256 kB)
        assert len(files) > 3 and "model.safetensors.index.json" in files and "model.safetensors" not in files
        with open(os.path.join(out, "model.safetensors.index.json"), encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        assert set(weight_map.values()) == set(files) - {"model.safetensors.index.json"}
    else:
        assert files == ["model.safetensors"]
    loaded = load_trained_model(str(run))
    _, imported = import_hf(out)
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(imported[name], value), name
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "Return the value of 3 + 4.\n"
    ids = tokenizer(text)["input_ids"]
    assert ids == load_tokenizer(tokenizer_path(dataset)).encode(text)
    with torch.no_grad():
        diff = max_diff(loaded.model(torch.tensor([ids])), theirs(torch.tensor([ids])).logits)
    assert diff < TOLERANCE, f"checkpoint export logits differ by {diff}"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear'"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
    ],
)
def test_import_rejects_what_our_decoder_cannot_express(tmp_path, change, message):
    random_llama(tied=True).save_pretrained(str(tmp_path / "hf"))
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    if "rope_scaling" in change:
        config.pop("rope_parameters", None)
    config_file.write_text(json.dumps({**config, **change}))
    with pytest.raises(ConfigError, match=message):
        import_hf(str(tmp_path / "hf"))
