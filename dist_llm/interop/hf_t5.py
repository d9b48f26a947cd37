"""Our encoder-decoder <-> Hugging Face `T5ForConditionalGeneration`: config fields and weight
names, nothing else (the two compute the same function, see models/encoder_decoder.py).

Three T5 details the mapping has to respect:
- HF stores the relative-position table in the first block of each stack
  (`block.0.layer.0.SelfAttention.relative_attention_bias`); ours lives on the stack itself.
- The shared embedding is stored once as `shared.weight`; `encoder/decoder.embed_tokens` are
  tied views of it and may or may not appear in a state_dict.
- Tying and the d_model**-0.5 decoder-output rescale go together in our model (v1.0: both,
  v1.1: neither). transformers 5 always ties `lm_head` at construction and keeps the rescale
  as `scale_decoder_outputs` (derived from `tie_word_embeddings` when the config is built); a
  checkpoint that stores a different `lm_head.weight` is loaded untied. So an untied export
  stores `lm_head.weight`, and `from_pretrained` keeps it separate (transformers logs a warning
  that it "will NOT tie them", which is what we want). Hub v1.1 configs (4.x era) say
  `tie_word_embeddings: false` and no `scale_decoder_outputs`; both generations import.
  Caveat: transformers 5 writes `tie_word_embeddings: true` even for an untied export, which
  transformers 4.x would read as tied and rescaled; exports are meant for transformers >= 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.checkpoint.offline import RenamedTensors
from dist_llm.errors import ConfigError
from dist_llm.interop.hf_llama import _check_keys, read_hf_source
from dist_llm.models.config import ModelConfig
from dist_llm.models.encoder_decoder import PAD_ID, REFERENCE_STD

if TYPE_CHECKING:  # transformers takes seconds to import; only the functions below pay for it
    from transformers import PreTrainedModel, T5Config

ACTIVATIONS = {"relu": ("relu", False), "gated-gelu": ("gelu_new", True)}
"""feed_forward_proj -> (dense_act_fn, is_gated_act) that HF derives from it."""
EMBEDDING, HEAD = ("tok_embeddings.weight", "shared.weight"), ("output.weight", "lm_head.weight")
# Tied copies of `shared.weight`, and a table some old checkpoints stored although it is unused.
DERIVED = {
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
}


def _attention(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}.{a}.weight", f"{theirs}.{b}.weight") for a, b in zip(("wq", "wk", "wv", "wo"), "qkvo")]


def _layer_pairs(side: str, index: int, is_decoder: bool, gated: bool) -> list[tuple[str, str]]:
    """(our key, HF key) for one block. HF numbers a block's sublayers: 0 self-attention,
    1 cross-attention (decoder only), then the MLP."""
    ours, theirs = f"{side}.layers.{index}", f"{side}.block.{index}.layer"
    pairs = [(f"{ours}.attention_norm.weight", f"{theirs}.0.layer_norm.weight")]
    pairs += _attention(f"{ours}.attention", f"{theirs}.0.SelfAttention")
    ffn = 1
    if is_decoder:
        pairs.append((f"{ours}.cross_attention_norm.weight", f"{theirs}.1.layer_norm.weight"))
        pairs += _attention(f"{ours}.cross_attention", f"{theirs}.1.EncDecAttention")
        ffn = 2
    pairs.append((f"{ours}.ffn_norm.weight", f"{theirs}.{ffn}.layer_norm.weight"))
    projections = ("wi_0", "wi_1", "wo") if gated else ("wi", "wo")
    pairs += [
        (f"{ours}.feed_forward.{p}.weight", f"{theirs}.{ffn}.DenseReluDense.{p}.weight") for p in projections
    ]
    return pairs


def key_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for every stored tensor. A tied head is not stored on either side's
    export: HF re-ties `lm_head` to `shared`, we re-tie `output` to `tok_embeddings`."""
    gated = cfg.act == "gated-gelu"
    pairs = [EMBEDDING]
    stacks = (("encoder", cfg.n_layers, False), ("decoder", cfg.decoder_layers, True))
    for side, n_layers, is_decoder in stacks:
        pairs += [
            (
                f"{side}.position_bias.table.weight",
                f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ),
            (f"{side}.norm.weight", f"{side}.final_layer_norm.weight"),
        ]
        for i in range(n_layers):
            pairs += _layer_pairs(side, i, is_decoder, gated)
    return pairs if cfg.tie_embeddings else pairs + [HEAD]


def to_hf_t5(
    state_dict: Mapping[str, torch.Tensor], model_cfg: ModelConfig
) -> tuple[T5Config, Mapping[str, torch.Tensor]]:
    """Our encoder-decoder's state_dict and config as a `T5Config` and a `T5ForConditionalGeneration`
    state_dict (same tensors, renamed). pad and decoder_start are 0, what our model uses; bos/eos are
    left None for the caller. Loading an untied state into a freshly built
    `T5ForConditionalGeneration` with `load_state_dict` needs its `lm_head` untied first
    (transformers 5 builds it tied); `from_pretrained` on a saved directory handles that itself."""
    from transformers import T5Config

    if model_cfg.arch != "encoder_decoder":
        raise ConfigError(
            f"model.arch={model_cfg.arch!r} has no T5 equivalent; only 'encoder_decoder' "
            "exports to a Hugging Face T5ForConditionalGeneration"
        )
    model_cfg.validate(require_vocab=True)
    pairs = key_pairs(model_cfg)
    _check_keys(set(state_dict), {ours for ours, _ in pairs}, {HEAD[0]}, "checkpoint model state")
    config = T5Config(
        vocab_size=model_cfg.vocab_size,
        d_model=model_cfg.d_model,
        d_kv=model_cfg.head_dim,
        d_ff=model_cfg.ffn_dim,
        num_layers=model_cfg.n_layers,
        num_decoder_layers=model_cfg.decoder_layers,
        num_heads=model_cfg.n_heads,
        relative_attention_num_buckets=model_cfg.rel_pos_buckets,
        relative_attention_max_distance=model_cfg.rel_pos_max_distance,
        dropout_rate=model_cfg.dropout,
        layer_norm_epsilon=model_cfg.norm_eps,
        initializer_factor=model_cfg.init_std / REFERENCE_STD,
        feed_forward_proj=model_cfg.act,
        tie_word_embeddings=model_cfg.tie_embeddings,
        n_positions=model_cfg.max_seq_len,
        is_encoder_decoder=True,
        pad_token_id=PAD_ID,
        decoder_start_token_id=PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
    )
    return config, RenamedTensors(state_dict, pairs)


def _rescales_decoder_output(config: Any) -> bool:
    """transformers 5 records the rescale as `scale_decoder_outputs`; 4.x derives it from
    `tie_word_embeddings`."""
    scale = getattr(config, "scale_decoder_outputs", None)
    return bool(config.tie_word_embeddings if scale is None else scale)


def model_config_from_hf(config: Any, head_is_shared: bool) -> ModelConfig:
    """Our ModelConfig for a T5 config; ConfigError naming the config.json key we cannot express.
    `head_is_shared`: whether the weights' LM head is the shared embedding (absent or equal)."""
    if config.model_type != "t5":
        raise ConfigError(
            f"config.json: model_type={config.model_type!r}; only 't5' imports into our encoder-decoder"
        )
    proj = config.feed_forward_proj
    if proj not in ACTIVATIONS:
        raise ConfigError(
            f"config.json: feed_forward_proj={proj!r} is not supported by our encoder-decoder "
            f"(it implements {sorted(ACTIVATIONS)})"
        )
    act_fn, gated = ACTIVATIONS[proj]
    for key, value in (("is_gated_act", gated), ("dense_act_fn", act_fn)):
        if getattr(config, key, value) != value:
            raise ConfigError(
                f"config.json: {key}={getattr(config, key)!r} contradicts "
                f"feed_forward_proj={proj!r} (which needs {key}={value!r}); fix one of them"
            )
    if config.d_kv * config.num_heads != config.d_model:
        raise ConfigError(
            f"config.json: d_kv={config.d_kv} * num_heads={config.num_heads} != d_model="
            f"{config.d_model}; our encoder-decoder derives the head size as "
            "d_model // num_heads"
        )
    rescale = _rescales_decoder_output(config)
    if rescale and not head_is_shared:
        raise ConfigError(
            "config.json: tie_word_embeddings/scale_decoder_outputs=True (rescale the decoder "
            "output by d_model**-0.5) with a separate lm_head.weight is not supported: our "
            "model rescales exactly when the head is tied"
        )
    # A shared head without the rescale imports as an untied head holding a copy of the embedding
    # (same function); continued pretraining then trains the two apart, as v1.1 does.
    cfg = ModelConfig(
        arch="encoder_decoder",
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        n_layers=config.num_layers,
        n_decoder_layers=config.num_decoder_layers,
        n_heads=config.num_heads,
        ffn_hidden=config.d_ff,
        activation=proj,
        rel_pos_buckets=config.relative_attention_num_buckets,
        rel_pos_max_distance=config.relative_attention_max_distance,
        norm_eps=config.layer_norm_epsilon,
        dropout=float(config.dropout_rate),
        tie_embeddings=rescale,
        init_std=config.initializer_factor * REFERENCE_STD,
        max_seq_len=int(getattr(config, "n_positions", None) or 512),  # T5 trained at 512 tokens
    )
    cfg.validate(require_vocab=True)
    return cfg


def from_hf_t5(hf_model_or_dir: PreTrainedModel | str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state_dict loadable by `EncoderDecoderLM`) from a `T5ForConditionalGeneration`
    or a local directory it was saved to. Tensors keep their dtype; a tied head shares the
    embedding tensor."""
    # Whether the head is shared is only known from the weights; every other config error shows first.
    config, hf_state, where = read_hf_source(
        hf_model_or_dir, lambda c: model_config_from_hf(c, head_is_shared=True)
    )
    head = hf_state.get(HEAD[1])
    shared = hf_state.get(EMBEDDING[1])
    head_is_shared = head is None or shared is None or head is shared or torch.equal(head, shared)
    model_cfg = model_config_from_hf(config, head_is_shared)
    pairs = key_pairs(model_cfg)
    # The head was looked at above (a tied one may or may not be listed).
    want = {theirs for _, theirs in pairs if theirs != HEAD[1]}
    _check_keys(set(hf_state), want, DERIVED | {HEAD[1]}, where)
    state = {ours: hf_state[theirs] for ours, theirs in pairs if theirs != HEAD[1]}
    if model_cfg.tie_embeddings:
        state[HEAD[0]] = state[EMBEDDING[0]]
    else:
        state[HEAD[0]] = head if not head_is_shared else state[EMBEDDING[0]].clone()
    return model_cfg, state
