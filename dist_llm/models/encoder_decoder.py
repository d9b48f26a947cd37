"""Encoder-decoder LM (T5): shared embedding -> encoder stack, decoder stack with cross-attention
-> LM head. It computes what Hugging Face's `T5ForConditionalGeneration` computes, for T5 v1.0
(relu MLP, tied head) and v1.1 (gated-gelu MLP, untied head).

What sets T5 apart from our decoder, each for a reason:
- No position embeddings; attention scores get a learned bias per head and *relative* distance
  bucket (exact for small distances, logarithmic up to `rel_pos_max_distance`), so the model runs
  on any length. Each stack owns one table; it is computed once and added in every layer.
- Attention scores are q.k without the 1/sqrt(head_dim) factor: T5 folds it into the init of the
  query projection (see `init_weights`), and checkpoints are trained that way.
- A tied LM head reads the decoder output scaled by d_model**-0.5, which keeps logits at the
  embedding's unit scale; untied v1.1 heads learn their own scale and get no rescale.

Read top to bottom like decoder.py: the layers, then `EncoderDecoderLM` with `init_weights`,
`encode`, `decode` and `forward`. No parallelism lives here.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.decoder import lm_loss
from dist_llm.models.layers import RMSNorm

# init_std is read as T5's `initializer_factor` relative to the 0.02 every other family defaults
# to, so the default config reproduces T5's published init exactly (see init_weights).
REFERENCE_STD = 0.02
PAD_ID = 0
"""Decoder start token: T5 starts decoding from the pad id, which is 0 in T5 and in our tokenizers."""


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket of each (key position - query position). Half the buckets (per direction when
    bidirectional) hold exact distances 0..n-1; the rest split [n, max_distance) on a log scale, so
    nearby tokens are told apart and far ones share a bucket. A causal decoder never attends
    forward, so it spends all buckets on backward distances."""
    if bidirectional:
        num_buckets //= 2
        offset = (relative > 0).long() * num_buckets  # keys after the query get the upper half
        distance = relative.abs()
    else:
        offset = torch.zeros_like(relative)
        distance = (-relative).clamp_min(0)
    exact = num_buckets // 2
    # clamp_min keeps log() finite where the exact bucket is chosen anyway (log(0) = -inf).
    scaled = (
        torch.log(distance.clamp_min(exact).float() / exact)
        / math.log(max_distance / exact)
        * (num_buckets - exact)
    )
    log_bucket = (exact + scaled.long()).clamp_max(num_buckets - 1)
    return offset + torch.where(distance < exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """Learned scalar bias per (head, distance bucket), added to the attention scores."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.rel_pos_buckets
        self.max_distance = cfg.rel_pos_max_distance
        self.table = nn.Embedding(cfg.rel_pos_buckets, cfg.n_heads)

    def forward(self, q_len: int, k_len: int) -> torch.Tensor:
        """[1, heads, q_len, k_len] bias for queries at 0..q_len-1 and keys at 0..k_len-1."""
        device = self.table.weight.device
        relative = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)


def padding_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, T] additive mask from a [B, T] keep-mask (1 = attend): 0 or dtype's minimum.
    The finite minimum rather than -inf means a fully masked row (e.g. an all-padding sample)
    gives uniform attention, as in HF, instead of NaN."""
    bias = torch.zeros(keep.shape[0], 1, 1, keep.shape[1], dtype=dtype, device=keep.device)
    return bias.masked_fill(keep[:, None, None, :] == 0, torch.finfo(dtype).min)


class BiasedAttention(nn.Module):
    """Multi-head attention whose scores are q.k + bias, with no 1/sqrt(head_dim) scaling and no
    Linear biases. Self-attention when `memory` is None, cross-attention over `memory` otherwise.
    The bias carries both the relative positions and the masks, so one code path serves the
    encoder, the causal decoder and cross-attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        inner = cfg.n_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, inner, bias=False)
        self.wk = nn.Linear(cfg.d_model, inner, bias=False)
        self.wv = nn.Linear(cfg.d_model, inner, bias=False)
        self.wo = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, bias: Optional[torch.Tensor], memory: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, q_len, _ = x.shape
        source = x if memory is None else memory
        q = self.wq(x).view(batch, q_len, -1, self.head_dim).transpose(1, 2)
        k = self.wk(source).view(batch, source.shape[1], -1, self.head_dim).transpose(1, 2)
        v = self.wv(source).view(batch, source.shape[1], -1, self.head_dim).transpose(1, 2)
        if bias is not None and bias.dtype != q.dtype:
            # Under autocast the bias is fp32 and q bf16; the cast turns fp32's minimum into -inf,
            # so clamp it back to a finite minimum (see padding_bias).
            bias = bias.to(q.dtype).clamp_min(torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )
        return self.wo(out.transpose(1, 2).reshape(batch, q_len, -1))


class FeedForward(nn.Module):
    """T5's MLP: relu (v1.0) wo(relu(wi x)), or gated-gelu (v1.1) wo(gelu(wi_0 x) * wi_1 x) with
    the tanh-approximated gelu HF's "gated-gelu" uses. Dropout sits on the hidden activations."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.act == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.wo = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def inputs(self) -> list[nn.Linear]:
        """The projections that read the residual stream (for init)."""
        return [self.wi_0, self.wi_1] if self.gated else [self.wi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            hidden = F.relu(self.wi(x))
        return self.wo(self.dropout(hidden))


class EncoderDecoderBlock(nn.Module):
    """Pre-norm T5 block: self-attention, then (decoder only) cross-attention over the encoder
    output, then the MLP, each as x + dropout(sublayer(norm(x)))."""

    def __init__(self, cfg: ModelConfig, cross_attention: bool) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = BiasedAttention(cfg)
        if cross_attention:
            self.cross_attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.cross_attention = BiasedAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def attentions(self) -> list[BiasedAttention]:
        if hasattr(self, "cross_attention"):
            return [self.attention, self.cross_attention]
        return [self.attention]

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor,
        memory: Optional[torch.Tensor] = None,
        memory_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), self_bias))
        if memory is not None:
            x = x + self.dropout(self.cross_attention(self.cross_attention_norm(x), memory_bias, memory))
        return x + self.dropout(self.feed_forward(self.ffn_norm(x)))


class Stack(nn.Module):
    """One side of the model: blocks sharing one relative-position table, then a final norm.
    The table is computed into a bias once per forward and passed to every block (T5 stores it in
    the first block and hands the result on; the function is the same)."""

    def __init__(self, cfg: ModelConfig, n_layers: int, is_decoder: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.position_bias = RelativePositionBias(cfg, bidirectional=not is_decoder)
        # ModuleDict keyed "0".."N-1": see DecoderLM (pipeline stages keep their checkpoint keys).
        self.layers = nn.ModuleDict({str(i): EncoderDecoderBlock(cfg, is_decoder) for i in range(n_layers)})
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def self_bias(self, x: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
        """Position bias with the causal (decoder) and padding masks folded in: [1 or B, H, T, T]."""
        seq_len = x.shape[1]
        bias = self.position_bias(seq_len, seq_len)
        minimum = torch.finfo(bias.dtype).min
        if self.is_decoder:
            future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).triu(1)
            bias = bias.masked_fill(future, minimum)
        if keep is not None:
            bias = bias.masked_fill(keep[:, None, None, :] == 0, minimum)
        return bias

    def forward(
        self,
        x: torch.Tensor,
        keep: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_keep: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: embedded tokens [B, T, D]; keep: [B, T] attention mask (1 = real token);
        memory/memory_keep: the encoder output and its mask (decoder only)."""
        bias = self.self_bias(x, keep)
        memory_bias = None
        if memory is not None and memory_keep is not None:
            memory_bias = padding_bias(memory_keep, bias.dtype)
        h = self.dropout(x)
        for layer in self.layers.values():
            h = layer(h, bias, memory, memory_bias)
        return self.dropout(self.norm(h))


class EncoderDecoderLM(nn.Module):
    """T5: a bidirectional encoder over `input_ids` and a causal decoder that cross-attends to it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate(require_vocab=True)
        if cfg.arch != "encoder_decoder":
            raise ConfigError(f"model.arch={cfg.arch!r}: EncoderDecoderLM needs model.arch='encoder_decoder'")
        if cfg.kv_heads != cfg.n_heads:
            raise ConfigError(
                f"model.n_kv_heads={cfg.n_kv_heads} is not supported by "
                "model.arch='encoder_decoder' (T5 attention has as many key/value heads as "
                "query heads); set it to null"
            )
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, is_decoder=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, is_decoder=True)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize every parameter in place and re-tie the head (public for the meta-device
        path: build on meta, `to_empty(device=...)`, then call this).

        T5's scheme (Mesh TensorFlow), with factor = init_std / 0.02 (so the default 0.02 is T5
        exactly): every matrix is normal(0, factor / sqrt(fan_in)), so activations keep unit scale
        through each projection; the query projection additionally gets 1/sqrt(head_dim), which is
        the attention-score scaling T5 leaves out of the forward pass. The embedding (and an untied
        head) is normal(0, factor): a tied head sees it through the d_model**-0.5 rescale. The
        relative-position tables are normal(0, factor / sqrt(d_model)); norm gains are 1."""
        cfg = self.cfg
        factor = cfg.init_std / REFERENCE_STD
        d, inner = cfg.d_model, cfg.n_heads * cfg.head_dim
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=factor)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, mean=0.0, std=factor)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.position_bias.table.weight, mean=0.0, std=factor * d**-0.5)
            stack.norm.reset_parameters()
            for layer in stack.layers.values():
                for attention in layer.attentions():
                    nn.init.normal_(attention.wq.weight, mean=0.0, std=factor * (d * cfg.head_dim) ** -0.5)
                    nn.init.normal_(attention.wk.weight, mean=0.0, std=factor * d**-0.5)
                    nn.init.normal_(attention.wv.weight, mean=0.0, std=factor * d**-0.5)
                    nn.init.normal_(attention.wo.weight, mean=0.0, std=factor * inner**-0.5)
                for linear in layer.feed_forward.inputs():
                    nn.init.normal_(linear.weight, mean=0.0, std=factor * d**-0.5)
                nn.init.normal_(layer.feed_forward.wo.weight, mean=0.0, std=factor * cfg.ffn_dim**-0.5)
                for module in layer.modules():
                    if isinstance(module, RMSNorm):
                        module.reset_parameters()

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final encoder states [B, T, D]; attention_mask [B, T] marks real tokens with 1."""
        return self.encoder(self.tok_embeddings(input_ids), attention_mask)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Final encoder states [B, T, D]: what a fine-tuning head (classification, tagging) reads."""
        return self.encode(input_ids, attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits [B, T_dec, V] of the decoder over `encoder_states` (attention_mask is the
        encoder's, decoder_attention_mask the decoder inputs')."""
        h = self.decoder(
            self.tok_embeddings(decoder_input_ids), decoder_attention_mask, encoder_states, attention_mask
        )
        if self.cfg.tie_embeddings:
            h = h * self.cfg.d_model**-0.5
        return self.output(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits [B, T_dec, V] if labels is None, else the mean cross-entropy over labels != -100.
        Without decoder_input_ids the decoder reads the labels shifted right (teacher forcing)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("EncoderDecoderLM.forward needs labels or decoder_input_ids")
            decoder_input_ids = shift_right(labels)
        logits = self.decode(
            decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask, decoder_attention_mask
        )
        return logits if labels is None else lm_loss(logits, labels)


def shift_right(labels: torch.Tensor, start_id: int = PAD_ID) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then labels[:, :-1], with ignored
    positions (-100) read as padding."""
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, PAD_ID)


def count_encoder_decoder_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of `EncoderDecoderLM(cfg)` by formula. non_embedding leaves out the shared
    embedding and an untied head (see `count_params`)."""
    d, inner = cfg.d_model, cfg.n_heads * cfg.head_dim
    attention = 4 * d * inner
    mlp = (3 if cfg.act == "gated-gelu" else 2) * d * cfg.ffn_dim
    encoder_layer = attention + mlp + 2 * d
    decoder_layer = 2 * attention + mlp + 3 * d
    stacks = 2 * (cfg.rel_pos_buckets * cfg.n_heads + d)  # position tables + final norms
    body = cfg.n_layers * encoder_layer + cfg.decoder_layers * decoder_layer + stacks
    if non_embedding:
        return body
    return body + (1 if cfg.tie_embeddings else 2) * cfg.vocab_size * d
