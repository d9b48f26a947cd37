"""The model's config: shape and init hyperparameters, from the `model:` section of a YAML file.

Fields are plain types (int/float/bool/str/Optional) so the typed config loader can read them from
YAML and dotted CLI overrides without custom parsers. Derived values (`head_dim`, `kv_heads`,
`ffn_dim`) are properties rather than fields so a YAML file can never contradict them.
"""

from dataclasses import dataclass
from typing import Optional

from dist_llm.errors import ConfigError

ARCHS = ("decoder", "encoder", "encoder_decoder")


@dataclass
class ModelConfig:
    arch: str = "decoder"
    """Model family: "decoder" (GPT/Llama-style causal LM); "encoder", "encoder_decoder" to come."""
    vocab_size: int = 0
    """Vocabulary size; 0 = filled in from the dataset's tokenizer by the trainer."""
    d_model: int = 256
    """Width of the residual stream (hidden size)."""
    n_layers: int = 4
    """Number of Transformer blocks."""
    n_heads: int = 4
    """Number of query heads; must divide d_model."""
    n_kv_heads: Optional[int] = None
    """Number of key/value heads; None = n_heads (multi-head), fewer = grouped-query attention."""
    ffn_hidden: Optional[int] = None
    """SwiGLU hidden size; None = ~8/3*d_model rounded up to a multiple of ffn_multiple_of."""
    ffn_multiple_of: int = 64
    """Round the default SwiGLU hidden size up to this multiple (GPU-friendly matmul shapes)."""
    max_seq_len: int = 256
    """Longest sequence the model sees; sizes the rotary tables and crops context in sampling."""
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies (larger = slower rotation, longer contexts)."""
    norm_eps: float = 1e-5
    """Epsilon added to the mean square inside RMSNorm."""
    tie_embeddings: bool = True
    """Share the token-embedding matrix with the LM head (saves vocab_size*d_model parameters)."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches; 0 for pretraining."""
    init_std: float = 0.02
    """Std of the normal weight init; residual output projections get init_std/sqrt(2*n_layers)."""

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads after resolving the None default."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        """Per-head width; query, key and value heads all use it."""
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """SwiGLU hidden size. The 8/3 factor keeps SwiGLU's three matrices at the parameter count
        (and FLOPs) of a classic two-matrix 4*d_model MLP."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = -(-8 * self.d_model // 3)  # ceil(8/3 * d_model)
        return -(-hidden // self.ffn_multiple_of) * self.ffn_multiple_of

    def validate(self, require_vocab: bool = False) -> None:
        """Raise ConfigError naming the first bad key. `require_vocab=True` is for build time:
        the config loader validates before the tokenizer is known, so vocab_size=0 is legal
        until then."""
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch={self.arch!r} is unknown; choose one of {list(ARCHS)}")
        positive = ("d_model", "n_layers", "n_heads", "ffn_multiple_of", "max_seq_len")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        for key in ("n_kv_heads", "ffn_hidden"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{key}={value} must be > 0 (or null for the default)")
        for key in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        if self.vocab_size < 0:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} must be >= 0 (0 = from the tokenizer)"
            )
        if require_vocab and self.vocab_size == 0:
            raise ConfigError(
                "model.vocab_size=0 must be set before building the model "
                "(the trainer fills it in from the tokenizer; set it explicitly otherwise)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.d_model={self.d_model} / model.n_heads={self.n_heads} = {self.head_dim} "
                "must be even: rotary embeddings rotate pairs of channels"
            )
