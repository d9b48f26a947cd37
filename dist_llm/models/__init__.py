"""Model definitions and the arithmetic about them (parameter counts, FLOPs per token).

Public API:
    ModelConfig                          the `model:` config section
    build_model(cfg) -> nn.Module        dispatch on cfg.arch
    count_params(cfg, non_embedding)     closed-form parameter count, no instantiation
    flops_per_token(cfg, seq_len)        training FLOPs per token for MFU
    DecoderLM, generate                  the decoder model and its sampler
"""

from torch import nn

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.decoder import DecoderLM
from dist_llm.models.sampling import generate

__all__ = ["ModelConfig", "DecoderLM", "build_model", "count_params", "flops_per_token", "generate"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model for cfg.arch on the current default device (wrap in `torch.device("meta")`
    to build without memory, then `to_empty(device=...)` and `init_weights()`)."""
    cfg.validate(require_vocab=True)
    if cfg.arch == "decoder":
        return DecoderLM(cfg)
    raise ConfigError(
        f"model.arch={cfg.arch!r} is not implemented yet; only 'decoder' can be built"
    )


def count_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of the model `build_model(cfg)` would build, by formula (instant for 13B).

    non_embedding=True follows Kaplan et al. (2020): it leaves out every vocab-sized matrix (the
    token embedding and, when untied, the LM head), so it does not depend on the tokenizer or on
    tying and is the number scaling laws are stated in. With vocab_size=0 (not yet known) the
    full count equals the non-embedding count.
    """
    cfg.validate()
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + cfg.n_heads * hd * d
    mlp = 3 * d * cfg.ffn_dim
    norms = 2 * d
    body = cfg.n_layers * (attention + mlp + norms) + d  # + final norm
    if non_embedding:
        return body
    vocab_matrices = 1 if cfg.tie_embeddings else 2
    return body + vocab_matrices * cfg.vocab_size * d


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
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
    """
    if seq_len <= 0:
        raise ConfigError(f"seq_len={seq_len} must be > 0 to count FLOPs per token")
    n = count_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.d_model
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
