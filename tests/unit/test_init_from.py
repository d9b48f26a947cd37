"""Continued pretraining: `model.init_from` starts a run from a local Hugging Face model directory
(or one of our checkpoints) whose weights compute the same logits inside our trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dist_llm.errors import ConfigError, DataError
from dist_llm.evaluate import load_trained_model
from dist_llm.pretrained import check_pretrained
from tests.conftest import make_trainer

TOLERANCE = 1e-4


def hf_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config).eval()


def test_training_starts_from_an_hf_llama_directory(tmp_path, dataset):
    theirs = hf_llama(1024)
    theirs.save_pretrained(tmp_path / "hf")
    trainer = make_trainer(
        tmp_path / "run", dataset, [f"model.init_from={tmp_path / 'hf'}", "train.max_steps=2"], []
    )
    # The HF config's shape replaced the run's model section (d_model 64, SwiGLU 160, untied).
    assert (trainer.cfg.model.ffn_dim, trainer.cfg.model.tie_embeddings) == (160, False)
    ids = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (trainer.engine.model(ids) - theirs(ids).logits).abs().max().item()
    assert diff < TOLERANCE, f"imported model's logits differ by {diff}"

    trainer.fit()
    # The run's checkpoint is a normal one: it reloads with the imported shape, trained onwards.
    loaded = load_trained_model(str(tmp_path / "run"))
    assert loaded.cfg.model.init_from == str(tmp_path / "hf") and loaded.cfg.model.ffn_dim == 160
    start = theirs.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(loaded.model.layers["0"].feed_forward.w3.weight, start)


def test_init_from_refuses_a_smaller_vocabulary_and_a_missing_directory(tmp_path, dataset):
    hf_llama(512).save_pretrained(tmp_path / "hf")
    with pytest.raises(DataError, match=r"has 512 token embeddings but the dataset's tokenizer has 1024"):
        make_trainer(tmp_path / "run", dataset, [f"model.init_from={tmp_path / 'hf'}"], [])
    with pytest.raises(ConfigError, match=r"model.init_from=.*nope: neither a Hugging Face model directory"):
        check_pretrained(str(tmp_path / "nope"), "model.init_from")
