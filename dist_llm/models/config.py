"""The model's config: shape and init hyperparameters, from the `model:` section of a YAML file.

Fields are plain types (int/float/bool/str/Optional) so the typed config loader can read them from
YAML and dotted CLI overrides without custom parsers. Derived values (`head_dim`, `kv_heads`,
`ffn_dim`) are properties rather than fields so a YAML file can never contradict them.
"""

from dataclasses import dataclass
from typing import Optional

from dist_llm.errors import ConfigError

ARCHS = ("decoder", "encoder", "encoder_decoder")
ACTIVATIONS = {"decoder": ("swiglu",), "encoder": ("gelu", "relu"), "encoder_decoder": ("relu", "gated-gelu")}
DEFAULT_ACTIVATION = {"decoder": "swiglu", "encoder": "gelu", "encoder_decoder": "relu"}


@dataclass
class ModelConfig:
    arch: str = "decoder"
    """Model family: "decoder" (GPT/Llama causal LM), "encoder" (BERT), "encoder_decoder" (T5)."""
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
    n_decoder_layers: Optional[int] = None
    """encoder_decoder only: decoder blocks; None = n_layers (the encoder's)."""
    ffn_hidden: Optional[int] = None
    """MLP hidden size; None = ~8/3*d_model rounded up to ffn_multiple_of for SwiGLU, 4*d_model else."""
    activation: Optional[str] = None
    """MLP activation; None = the family's: decoder "swiglu", encoder "gelu", encoder_decoder "relu"
    (T5 v1.0; "gated-gelu" is T5 v1.1)."""
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
    type_vocab_size: int = 2
    """encoder only: token-type (segment A/B) embeddings, as BERT's sentence pairs use."""
    rel_pos_buckets: int = 32
    """encoder_decoder only: relative-position buckets of T5's attention bias."""
    rel_pos_max_distance: int = 128
    """encoder_decoder only: distances beyond this share T5's last (logarithmic) bucket."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches; 0 for pretraining."""
    init_from: str = ""
    """Start from these weights instead of random ones (continued pretraining): a local Hugging Face
    model directory (Llama, BERT, T5) or a dist_llm checkpoint/run directory. Its shape replaces
    this section's; empty = random init."""
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
    def act(self) -> str:
        """MLP activation after resolving the None default."""
        return self.activation or DEFAULT_ACTIVATION[self.arch]

    @property
    def decoder_layers(self) -> int:
        """encoder_decoder: decoder blocks after resolving the None default."""
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @property
    def ffn_dim(self) -> int:
        """MLP hidden size. For SwiGLU the 8/3 factor keeps its three matrices at the parameter count
        (and FLOPs) of a classic two-matrix 4*d_model MLP, which BERT and T5 use."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.act != "swiglu":
            return 4 * self.d_model
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
        if self.act not in ACTIVATIONS[self.arch]:
            raise ConfigError(
                f"model.activation={self.activation!r} is not available for "
                f"model.arch={self.arch!r}; choose one of {list(ACTIVATIONS[self.arch])}"
            )
        for key in ("type_vocab_size", "rel_pos_buckets", "rel_pos_max_distance"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        for key in ("n_kv_heads", "ffn_hidden", "n_decoder_layers"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{key}={value} must be > 0 (or null for the default)")
        for key in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be > 0")
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 0 (0 = from the tokenizer)")
        if require_vocab and self.vocab_size == 0:
            raise ConfigError(
                "model.vocab_size=0 must be set before building the model "
                "(the trainer fills it in from the tokenizer; set it explicitly otherwise)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}")
        if self.arch == "decoder" and self.head_dim % 2:
            raise ConfigError(
                f"model.d_model={self.d_model} / model.n_heads={self.n_heads} = {self.head_dim} "
                "must be even: rotary embeddings rotate pairs of channels"
            )
