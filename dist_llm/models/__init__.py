"""Model definitions and the arithmetic about them (parameter counts, FLOPs per token).

Public API:
    ModelConfig                          the `model:` config section
    build_model(cfg) -> nn.Module        dispatch on cfg.arch: DecoderLM, EncoderLM, EncoderDecoderLM
    count_params(cfg, non_embedding)     closed-form parameter count, no instantiation
    flops_per_token(cfg, seq_len, ...)   training FLOPs per (input) token for MFU
    dense_flops_per_token(n, L, H*Q, T)  the same count from raw sizes (for models not built here)
    DecoderLM, generate                  the decoder model and its sampler

The encoder (BERT) and encoder-decoder (T5) modules are imported on use, so a decoder run does not
load them.
"""

from torch import nn

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.decoder import DecoderLM
from dist_llm.models.sampling import generate

__all__ = [
    "ModelConfig",
    "DecoderLM",
    "build_model",
    "count_params",
    "dense_flops_per_token",
    "flops_per_token",
    "generate",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model for cfg.arch on the current default device (wrap in `torch.device("meta")`
    to build without memory, then `to_empty(device=...)` and `init_weights()`)."""
    cfg.validate(require_vocab=True)
    if cfg.arch == "encoder":
        from dist_llm.models.encoder import EncoderLM

        return EncoderLM(cfg)
    if cfg.arch == "encoder_decoder":
        from dist_llm.models.encoder_decoder import EncoderDecoderLM

        return EncoderDecoderLM(cfg)
    return DecoderLM(cfg)


def count_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of the model `build_model(cfg)` would build, by formula (instant for 13B).

    non_embedding=True follows Kaplan et al. (2020): it leaves out every vocab-sized matrix (the
    token embedding and, when untied, the LM head), so it does not depend on the tokenizer or on
    tying and is the number scaling laws are stated in (the encoder also leaves out its learned
    position table). For the decoder, with vocab_size=0 (not yet known) the full count equals the
    non-embedding count.
    """
    cfg.validate()
    if cfg.arch == "encoder":
        from dist_llm.models.encoder import count_encoder_params

        return count_encoder_params(cfg, non_embedding)
    if cfg.arch == "encoder_decoder":
        from dist_llm.models.encoder_decoder import count_encoder_decoder_params

        return count_encoder_decoder_params(cfg, non_embedding)
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + cfg.n_heads * hd * d
    mlp = 3 * d * cfg.ffn_dim
    norms = 2 * d
    body = cfg.n_layers * (attention + mlp + norms) + d  # + final norm
    if non_embedding:
        return body
    vocab_matrices = 1 if cfg.tie_embeddings else 2
    return body + vocab_matrices * cfg.vocab_size * d


def flops_per_token(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) for MFU: 6*N + 12*L*H*Q*T.

    This is the PaLM (Chowdhery et al. 2022, app. B) / Megatron convention:
      - 6*N: each parameter that takes part in a matmul costs 2 FLOPs forward and 4 backward.
        N = count_params(non_embedding=True) + vocab_size*d_model: the input embedding is a table
        lookup (no FLOPs) but the LM head is a real [d_model x vocab] matmul whether or not it
        is tied, and at 32k vocab it is ~20% of a 125M model's compute. Norm gains are counted
        although they are elementwise; they are < 0.01% of N.
      - 12*L*H*Q*T: the attention score and value matmuls (QK^T and AV), L layers, H heads,
        Q head dim, T = seq_len; counted over the full T x T square, not halved for causality,
        so MFU numbers compare with published ones. Activation recomputation is not counted:
        MFU measures useful work, not hardware work.
    The encoder (BERT) is counted the same way (its attention is the full square anyway).
    The encoder-decoder (T5) is counted per *encoder input* token, the unit its throughput is
    reported in: the encoder's share as above, plus the decoder's, which runs on `target_len`
    tokens per `seq_len` input tokens and attends to both its own and the encoder's positions.
    """
    if seq_len <= 0:
        raise ConfigError(f"seq_len={seq_len} must be > 0 to count FLOPs per token")
    if cfg.arch == "encoder_decoder":
        return _encoder_decoder_flops(cfg, seq_len, target_len)
    n = count_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.d_model
    return dense_flops_per_token(n, cfg.n_layers, cfg.n_heads * cfg.head_dim, seq_len)


def dense_flops_per_token(matmul_params: int, n_layers: int, attention_width: int, seq_len: int) -> float:
    """6*N + 12*L*(H*Q)*T, the `flops_per_token` convention, for any decoder given its matmul
    parameter count N and attention width H*Q (also how `dist-llm bench peer` counts nanoGPT)."""
    return 6.0 * matmul_params + 12.0 * n_layers * attention_width * seq_len


def _encoder_decoder_flops(cfg: ModelConfig, seq_len: int, target_len: int | None) -> float:
    """`flops_per_token` for T5: encoder + decoder FLOPs of one sample, divided by its input tokens."""
    if not target_len or target_len <= 0:
        raise ConfigError(
            f"target_len={target_len}: an encoder-decoder's FLOPs depend on its decoder "
            "length; pass the objective's target length"
        )
    d, inner = cfg.d_model, cfg.n_heads * cfg.head_dim
    mlp = (3 if cfg.act == "gated-gelu" else 2) * d * cfg.ffn_dim
    encoder_layer = 4 * d * inner + mlp
    decoder_layer = 8 * d * inner + mlp  # self- and cross-attention
    attention = 12 * cfg.n_heads * cfg.head_dim
    encoder = seq_len * (6.0 * cfg.n_layers * encoder_layer + attention * cfg.n_layers * seq_len)
    decoder = target_len * (
        6.0 * (cfg.decoder_layers * decoder_layer + cfg.vocab_size * d)
        + attention * cfg.decoder_layers * (target_len + seq_len)
    )
    return (encoder + decoder) / seq_len
