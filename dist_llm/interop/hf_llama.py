"""Our decoder <-> Hugging Face `LlamaForCausalLM`: config fields and weight names, nothing else.

The two models compute the same function, so the mapping is renames only:
- rotary: both use the "rotate half" layout (channel i pairs with i + head_dim/2) and
  inv_freq = theta^(-2i/head_dim) in fp32, so q/k weights need no permutation (the permutation in
  HF's convert_llama_weights_to_hf.py is for Meta's interleaved-pair checkpoints, not for us);
- GQA: both store k/v projections as [kv_heads * head_dim, d_model], heads contiguous;
- SwiGLU: our w1/w3/w2 are Llama's gate/up/down;
- RMSNorm: both normalize in fp32 and multiply by the gain in the input dtype.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import torch

from dist_llm.checkpoint.offline import RenamedTensors
from dist_llm.errors import CheckpointError, ConfigError
from dist_llm.models.config import ModelConfig

if TYPE_CHECKING:  # transformers takes seconds to import; only the functions below pay for it
    from transformers import LlamaConfig, PreTrainedModel

# (our name, HF name) inside one block.
LAYER_KEYS = (
    ("attention_norm.weight", "input_layernorm.weight"),
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
)
EMBEDDING, HEAD = ("tok_embeddings.weight", "model.embed_tokens.weight"), ("output.weight", "lm_head.weight")


def key_pairs(n_layers: int, tied: bool) -> list[tuple[str, str]]:
    """(our key, HF key) for every stored tensor. A tied head is not stored on the HF side: HF
    re-ties `lm_head` to the embedding from `tie_word_embeddings`."""
    pairs = [EMBEDDING, ("norm.weight", "model.norm.weight")]
    pairs += [
        (f"layers.{i}.{ours}", f"model.layers.{i}.{theirs}")
        for i in range(n_layers)
        for ours, theirs in LAYER_KEYS
    ]
    return pairs if tied else pairs + [HEAD]


def _check_keys(have: set[str], want: set[str], optional: set[str], where: str) -> None:
    missing, unexpected = sorted(want - have), sorted(have - want - optional)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); the weights and their config.json come from "
            "different models"
        )


def to_hf_llama(
    state_dict: Mapping[str, torch.Tensor], model_cfg: ModelConfig
) -> tuple[LlamaConfig, Mapping[str, torch.Tensor]]:
    """Our decoder's state_dict and config as a `LlamaConfig` and a `LlamaForCausalLM` state_dict
    (same tensors, renamed). Token ids (bos/eos/pad) are left None for the caller to set."""
    from transformers import LlamaConfig

    if model_cfg.arch != "decoder":
        raise ConfigError(
            f"model.arch={model_cfg.arch!r} has no Llama equivalent; only 'decoder' exports "
            "to a Hugging Face LlamaForCausalLM"
        )
    model_cfg.validate(require_vocab=True)
    pairs = key_pairs(model_cfg.n_layers, model_cfg.tie_embeddings)
    _check_keys(set(state_dict), {ours for ours, _ in pairs}, {HEAD[0]}, "checkpoint model state")
    config = LlamaConfig(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.d_model,
        intermediate_size=model_cfg.ffn_dim,
        num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.kv_heads,
        head_dim=model_cfg.head_dim,
        max_position_embeddings=model_cfg.max_seq_len,
        rms_norm_eps=model_cfg.norm_eps,
        rope_theta=model_cfg.rope_theta,
        tie_word_embeddings=model_cfg.tie_embeddings,
        initializer_range=model_cfg.init_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return config, RenamedTensors(state_dict, pairs)


def rope_theta(config: Any) -> float:
    """rope_theta from either config generation: transformers 5 nests it in `rope_parameters`,
    4.x has a top-level `rope_theta` (and `rope_scaling` for non-default types)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"config.json: rope type {rope_type!r} (rope scaling) is not supported by our "
            "decoder, which implements plain RoPE; import a model without rope scaling"
        )
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def model_config_from_hf(config: Any) -> ModelConfig:
    """Our ModelConfig for a Llama config; ConfigError naming the config.json key we cannot express."""
    if config.model_type != "llama":
        raise ConfigError(
            f"config.json: model_type={config.model_type!r}; only 'llama' imports into our decoder"
        )
    unsupported = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
    for key, value in unsupported.items():
        if getattr(config, key, value) != value:
            raise ConfigError(
                f"config.json: {key}={getattr(config, key)!r} is not supported by our decoder "
                f"(it needs {key}={value!r})"
            )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise ConfigError(
            f"config.json: head_dim={head_dim} * num_attention_heads="
            f"{config.num_attention_heads} != hidden_size={config.hidden_size}; our decoder "
            "derives head_dim from them"
        )
    cfg = ModelConfig(
        arch="decoder",
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        ffn_hidden=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        rope_theta=rope_theta(config),
        norm_eps=config.rms_norm_eps,
        tie_embeddings=bool(config.tie_word_embeddings),
        init_std=config.initializer_range,
    )
    cfg.validate(require_vocab=True)
    return cfg


def read_safetensors_dir(hf_dir: str) -> dict[str, torch.Tensor]:
    """Every tensor of a `save_pretrained` directory, single-file or sharded, without building the
    model (a 13B import then needs its weights' memory once, not twice)."""
    from safetensors.torch import load_file

    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(os.path.join(hf_dir, shard)).items()}
    raise CheckpointError(
        f"{hf_dir}: no model.safetensors or model.safetensors.index.json; re-save the "
        "model with save_pretrained(dir) (safetensors is its default format)"
    )


def read_hf_source(
    hf_model_or_dir: PreTrainedModel | str, check_config: Callable[[Any], Any]
) -> tuple[Any, dict[str, torch.Tensor], str]:
    """(HF config, HF state_dict, a name for messages) of a model in memory or a local
    `save_pretrained` directory. `check_config(config)` runs first, so a config we cannot express
    fails before gigabytes of weights are read."""
    if isinstance(hf_model_or_dir, (str, os.PathLike)):
        from transformers import AutoConfig

        where = os.fspath(hf_model_or_dir)
        config = AutoConfig.from_pretrained(where, local_files_only=True)
        check_config(config)
        return config, read_safetensors_dir(where), where
    check_config(hf_model_or_dir.config)
    return hf_model_or_dir.config, hf_model_or_dir.state_dict(), type(hf_model_or_dir).__name__


def from_hf_llama(hf_model_or_dir: PreTrainedModel | str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state_dict loadable by `DecoderLM`) from a `LlamaForCausalLM` or a local directory
    it was saved to. Tensors keep their dtype; a tied head shares the embedding tensor."""
    config, hf_state, where = read_hf_source(hf_model_or_dir, model_config_from_hf)
    model_cfg = model_config_from_hf(config)
    pairs = key_pairs(model_cfg.n_layers, model_cfg.tie_embeddings)
    # A tied model may still list lm_head; older checkpoints stored the rotary inv_freq buffers.
    derived = {HEAD[1]} | {k for k in hf_state if k.endswith("rotary_emb.inv_freq")}
    _check_keys(set(hf_state), {theirs for _, theirs in pairs}, derived, where)
    state = {ours: hf_state[theirs] for ours, theirs in pairs}
    if model_cfg.tie_embeddings:
        state[HEAD[0]] = state[EMBEDDING[0]]
    return model_cfg, state
