"""Our encoder <-> Hugging Face `BertForPreTraining` / `BertForMaskedLM`: config fields and weight
names, nothing else (the two compute the same function, see models/encoder.py).

Two HF details the mapping handles:
- The MLM bias exists twice in HF, as `cls.predictions.bias` and as the bias of the
  `cls.predictions.decoder` Linear; with tied embeddings HF ties the two (and saves only the
  former), untied it uses the decoder's. We store one `output_bias` and write it to both.
- `BertForMaskedLM` (and a bare `BertModel`) checkpoints lack some heads (pooler, NSP, even the
  MLM transform). Importing one for continued pretraining fills each missing head with the values
  `EncoderLM.init_weights` gives it, from a fixed seed so an import is reproducible, and logs which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.checkpoint.offline import RenamedTensors
from dist_llm.errors import CheckpointError, ConfigError
from dist_llm.interop.hf_llama import _check_keys, read_hf_source
from dist_llm.log import get_logger
from dist_llm.models.config import ModelConfig

if TYPE_CHECKING:  # transformers takes seconds to import; only the functions below pay for it
    from transformers import BertConfig, PreTrainedModel

log = get_logger(__name__)

# (our name, HF name) inside one block.
LAYER_KEYS = (
    ("attention.wq", "attention.self.query"),
    ("attention.wk", "attention.self.key"),
    ("attention.wv", "attention.self.value"),
    ("attention.wo", "attention.output.dense"),
    ("attention_norm", "attention.output.LayerNorm"),
    ("feed_forward.w1", "intermediate.dense"),
    ("feed_forward.w2", "output.dense"),
    ("ffn_norm", "output.LayerNorm"),
)
EMBEDDING_KEYS = (
    ("tok_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
    ("pos_embeddings.weight", "bert.embeddings.position_embeddings.weight"),
    ("type_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"),
    ("embed_norm.weight", "bert.embeddings.LayerNorm.weight"),
    ("embed_norm.bias", "bert.embeddings.LayerNorm.bias"),
)
# Heads, grouped as a checkpoint has or lacks them.
MLM_TRANSFORM = (
    ("head_dense.weight", "cls.predictions.transform.dense.weight"),
    ("head_dense.bias", "cls.predictions.transform.dense.bias"),
    ("head_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("head_norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("output_bias", "cls.predictions.bias"),
)
POOLER = (("pooler.weight", "bert.pooler.dense.weight"), ("pooler.bias", "bert.pooler.dense.bias"))
NSP = (("nsp_head.weight", "cls.seq_relationship.weight"), ("nsp_head.bias", "cls.seq_relationship.bias"))
HEAD_WEIGHT, HEAD_BIAS = ("output.weight", "cls.predictions.decoder.weight"), "cls.predictions.decoder.bias"
INIT_SEED = 0
"""Seed of the init values given to heads an imported checkpoint lacks."""


def body_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(our key, HF key) for the embeddings and every block: what any BERT checkpoint holds."""
    pairs = list(EMBEDDING_KEYS)
    for i in range(n_layers):
        for ours, theirs in LAYER_KEYS:
            pairs += [
                (f"layers.{i}.{ours}.{p}", f"bert.encoder.layer.{i}.{theirs}.{p}") for p in ("weight", "bias")
            ]
    return pairs


def to_hf_bert(
    state_dict: Mapping[str, torch.Tensor], model_cfg: ModelConfig
) -> tuple[BertConfig, Mapping[str, torch.Tensor]]:
    """Our encoder's state_dict and config as a `BertConfig` and a `BertForPreTraining` state_dict
    (same tensors, renamed). A tied decoder weight and bias are left out, as HF's own save leaves
    them out (HF re-ties them on load). Token ids (bos/eos/pad) are left None for the caller."""
    from transformers import BertConfig

    if model_cfg.arch != "encoder":
        raise ConfigError(
            f"model.arch={model_cfg.arch!r} has no BERT equivalent; only 'encoder' exports "
            "to a Hugging Face BertForPreTraining"
        )
    model_cfg.validate(require_vocab=True)
    pairs = body_pairs(model_cfg.n_layers) + list(MLM_TRANSFORM + POOLER + NSP)
    if not model_cfg.tie_embeddings:
        pairs.append(HEAD_WEIGHT)
    _check_keys(set(state_dict), {ours for ours, _ in pairs}, {HEAD_WEIGHT[0]}, "checkpoint model state")
    config = BertConfig(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.d_model,
        num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads,
        intermediate_size=model_cfg.ffn_dim,
        hidden_act=model_cfg.act,
        hidden_dropout_prob=model_cfg.dropout,
        attention_probs_dropout_prob=model_cfg.dropout,
        max_position_embeddings=model_cfg.max_seq_len,
        type_vocab_size=model_cfg.type_vocab_size,
        initializer_range=model_cfg.init_std,
        layer_norm_eps=model_cfg.norm_eps,
        tie_word_embeddings=model_cfg.tie_embeddings,
        architectures=["BertForPreTraining"],
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if not model_cfg.tie_embeddings:  # untied, HF's decoder Linear uses its own bias: the same values
        pairs.append(("output_bias", HEAD_BIAS))
    return config, RenamedTensors(state_dict, pairs)


def model_config_from_hf(config: Any) -> ModelConfig:
    """Our ModelConfig for a BERT config; ConfigError naming the config.json key we cannot express."""
    if config.model_type != "bert":
        raise ConfigError(
            f"config.json: model_type={config.model_type!r}; only 'bert' imports into our encoder"
        )
    position_type = getattr(config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(
            f"config.json: position_embedding_type={position_type!r} is not supported by our "
            "encoder, which implements learned absolute positions ('absolute')"
        )
    if config.hidden_act not in ("gelu", "relu"):
        raise ConfigError(
            f"config.json: hidden_act={config.hidden_act!r} is not supported by our encoder "
            "(it needs 'gelu', the exact erf form, or 'relu')"
        )
    for key in ("is_decoder", "add_cross_attention"):
        if getattr(config, key, False):
            raise ConfigError(
                f"config.json: {key}=True is not supported by our encoder (a bidirectional "
                f"encoder without cross-attention needs {key}=False)"
            )
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"config.json: num_attention_heads={config.num_attention_heads} does not divide "
            f"hidden_size={config.hidden_size}"
        )
    cfg = ModelConfig(
        arch="encoder",
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        ffn_hidden=config.intermediate_size,
        activation=config.hidden_act,
        max_seq_len=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        norm_eps=config.layer_norm_eps,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        init_std=config.initializer_range,
        dropout=config.hidden_dropout_prob,
    )
    cfg.validate(require_vocab=True)
    return cfg


def _fresh_heads(cfg: ModelConfig, groups: list[tuple[tuple[str, str], ...]]) -> dict[str, torch.Tensor]:
    """EncoderLM.init_weights' values for the given head groups (our keys): normal(0, init_std)
    matrices from a fixed-seed generator, zero biases and LayerNorm bias, unit LayerNorm gain."""
    generator = torch.Generator().manual_seed(INIT_SEED)
    d, out = cfg.d_model, {}
    shapes = {"head_dense.weight": (d, d), "pooler.weight": (d, d), "nsp_head.weight": (2, d)}
    vectors = {
        "head_dense.bias": d,
        "head_norm.bias": d,
        "output_bias": cfg.vocab_size,
        "pooler.bias": d,
        "nsp_head.bias": 2,
    }
    for group in groups:
        for ours, _ in group:
            if ours in shapes:
                out[ours] = torch.randn(shapes[ours], generator=generator) * cfg.init_std
            elif ours == "head_norm.weight":
                out[ours] = torch.ones(d)
            else:
                out[ours] = torch.zeros(vectors[ours])
    return out


def from_hf_bert(hf_model_or_dir: PreTrainedModel | str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state_dict loadable by `EncoderLM`) from a `BertForPreTraining`,
    `BertForMaskedLM` or `BertModel`, in memory or as a local `save_pretrained` directory. Heads the
    checkpoint lacks start from init values (module docstring). Tensors keep their dtype; a tied
    head shares the embedding tensor."""
    config, hf_state, where = read_hf_source(hf_model_or_dir, model_config_from_hf)
    model_cfg = model_config_from_hf(config)
    if not any(k.startswith(("bert.", "cls.")) for k in hf_state):  # a bare BertModel: no prefix
        hf_state = {f"bert.{k}": v for k, v in hf_state.items()}
    body = body_pairs(model_cfg.n_layers)
    head_groups = {"MLM transform": MLM_TRANSFORM, "pooler": POOLER, "NSP head": NSP}
    present = {name: group for name, group in head_groups.items() if group[0][1] in hf_state}
    missing = [name for name in head_groups if name not in present]
    want = {theirs for _, theirs in body} | {theirs for g in present.values() for _, theirs in g}
    # The decoder weight/bias are HF's tied copies (or, untied, read below); older checkpoints also
    # stored the position_ids buffer.
    derived = {HEAD_WEIGHT[1], HEAD_BIAS, "bert.embeddings.position_ids"}
    _check_keys(set(hf_state), want, derived, where)
    state = {ours: hf_state[theirs] for group in (body, *present.values()) for ours, theirs in group}
    if missing:
        log.warning(
            "%s has no %s; they start from init values (fine for continued pretraining)",
            where,
            ", ".join(missing),
        )
        state.update(_fresh_heads(model_cfg, [head_groups[name] for name in missing]))
    if HEAD_BIAS in hf_state and not model_cfg.tie_embeddings:
        state["output_bias"] = hf_state[HEAD_BIAS]  # the bias an untied HF model actually adds
    if model_cfg.tie_embeddings:
        state[HEAD_WEIGHT[0]] = state[EMBEDDING_KEYS[0][0]]
    elif HEAD_WEIGHT[1] in hf_state:
        state[HEAD_WEIGHT[0]] = hf_state[HEAD_WEIGHT[1]]
    else:
        raise CheckpointError(
            f"{where}: tie_word_embeddings=False but the weights have no {HEAD_WEIGHT[1]}; "
            "set tie_word_embeddings=true in config.json if the head shares the embedding"
        )
    return model_cfg, state
