"""Encoder LM (BERT): token + position + segment embeddings -> N post-norm blocks -> MLM head, plus
the pooler and next-sentence head. It computes what Hugging Face's `BertForPreTraining` computes,
so a checkpoint exports to (and imports from) it by renaming weights only (`interop/hf_bert.py`).

What sets BERT apart from our decoder, each because the published checkpoints are trained so:
- Attention is bidirectional: no causal mask, only the padding mask from `attention_mask`.
- Learned absolute positions (`max_seq_len` of them) and segment ("token type") embeddings instead
  of RoPE; the embedding sum is LayerNorm-ed before the first block.
- Post-norm blocks: x = norm(x + attn(x)), x = norm(x + mlp(x)), with biases everywhere, LayerNorm
  (mean and variance, with bias) and a GELU/ReLU MLP of two matrices.
- The MLM head is a small transform (dense, activation, LayerNorm) before the vocabulary
  projection, which shares the word embedding and adds its own per-token bias.

Read top to bottom like decoder.py: the layers, then `EncoderLM` with `init_weights`,
`hidden_states`, the heads and `forward`. No parallelism lives here.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig
from dist_llm.models.decoder import lm_loss

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
"""cfg.act -> function. "gelu" is the exact erf form, which BERT's `hidden_act="gelu"` means."""


class EncoderAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased q/k/v/output projections."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        inner = cfg.n_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, inner)
        self.wk = nn.Linear(cfg.d_model, inner)
        self.wv = nn.Linear(cfg.d_model, inner)
        self.wo = nn.Linear(inner, cfg.d_model)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
        """x: [B, T, D]; keep: bool [B, 1, 1, T], True where a key may be attended to, or None."""
        batch, seq_len, _ = x.shape
        q, k, v = (
            w(x).view(batch, seq_len, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq_len, -1))


class EncoderMLP(nn.Module):
    """w2(act(w1 x)): BERT's intermediate (w1) and output (w2) dense layers."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.act]
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(x)))


class EncoderBlock(nn.Module):
    """Post-norm block: x = norm(x + attn(x)), then x = norm(x + mlp(x)).

    Post-norm (the original Transformer's and BERT's order) normalizes the residual stream itself,
    so `attention_norm` and `ffn_norm` are applied *after* their sublayer, unlike the decoder's.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention = EncoderAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.feed_forward = EncoderMLP(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attention_norm(x + self.resid_dropout(self.attention(x, keep)))
        return self.ffn_norm(x + self.resid_dropout(self.feed_forward(x)))


class EncoderLM(nn.Module):
    """BERT for pretraining: masked-LM logits from `forward`, the sentence-pair (NSP/SOP) loss when
    `next_sentence_label` is given, and `hidden_states`/`pooled` for fine-tuning heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate(require_vocab=True)
        if cfg.arch != "encoder":
            raise ConfigError(f"model.arch={cfg.arch!r}: EncoderLM builds model.arch='encoder' only")
        self.cfg = cfg
        d = cfg.d_model
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, d)
        self.pos_embeddings = nn.Embedding(cfg.max_seq_len, d)
        self.type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        # Keyed "0".."N-1" like the decoder's, so checkpoint keys look alike across families.
        self.layers = nn.ModuleDict({str(i): EncoderBlock(cfg) for i in range(cfg.n_layers)})
        # MLM head: transform, then the vocabulary projection (tied to tok_embeddings by default)
        # with a separate bias, which stays untied because the embedding has no bias to share.
        self.head_dense = nn.Linear(d, d)
        self.head_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.output = nn.Linear(d, cfg.vocab_size, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # Sentence-pair head: the pooler reads the first ([CLS]) position; nsp scores 2 classes.
        self.pooler = nn.Linear(d, d)
        self.nsp_head = nn.Linear(d, 2)
        self.init_weights()

    def init_weights(self) -> None:
        """BERT's init: normal(0, init_std) for every Linear and Embedding weight, zero biases,
        LayerNorm gain 1 and bias 0. Public because a large model is built on the meta device, moved
        with `to_empty(device=...)` (which leaves memory uninitialized and breaks weight tying) and
        then initialized in place by calling this. Unlike the decoder, residual projections get no
        1/sqrt(2*n_layers) scaling: post-norm renormalizes the stream after every sublayer, so its
        scale does not grow with depth, and imported BERT checkpoints were trained from this init."""
        std = self.cfg.init_std
        if self.cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                if not (name == "output" and self.cfg.tie_embeddings):  # already drawn as the embedding
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        nn.init.zeros_(self.output_bias)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Final encoder states [B, T, D] (post-norm: the last block's output is already normalized).
        token_type_ids: [B, T] segment ids, None = all segment 0; attention_mask: [B, T], 1 for real
        tokens and 0 for padding, None = no padding. Padded positions still get states (they attend
        to the real tokens) but no real position attends to them."""
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.max_seq_len:
            raise ConfigError(
                f"input length {seq_len} > model.max_seq_len={self.cfg.max_seq_len}: BERT "
                "has one learned embedding per position; lower data.seq_len or raise "
                "model.max_seq_len"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(seq_len, device=input_ids.device)
        # Summed in HF's order (word + type, then + position) so results match it bit for bit.
        h = self.tok_embeddings(input_ids) + self.type_embeddings(token_type_ids)
        h = self.embed_dropout(self.embed_norm(h + self.pos_embeddings(positions)))
        # A boolean key mask broadcast over heads and queries. A row with no real token at all would
        # attend to nothing and give NaN; a sample always has at least its [CLS] token.
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.layers.values():
            h = layer(h, keep)
        return h

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits [B, T, V] from `hidden_states`."""
        x = self.head_norm(ACTIVATIONS[self.cfg.act](self.head_dense(hidden)))
        return self.output(x) + self.output_bias

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler output [B, D]: tanh(dense(first position's state)), the sentence vector
        the NSP head and sequence-classification fine-tuning read."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sentence-pair logits [B, 2] (class 0 = B follows A / in order, 1 = random / swapped)."""
        return self.nsp_head(self.pooled(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        next_sentence_label: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """MLM logits [B, T, V] when neither label is given; otherwise a scalar loss: the mean MLM
        cross-entropy over positions whose label is not -100, plus the sentence-pair cross-entropy
        when `next_sentence_label` [B] is given (their sum, as BERT's pretraining loss)."""
        hidden = self.hidden_states(input_ids, token_type_ids, attention_mask)
        if labels is None and next_sentence_label is None:
            return self.mlm_logits(hidden)
        sentence_logits = self.nsp_logits(hidden)
        if next_sentence_label is None:
            # Zero-weighted, so the loss is unchanged: every parameter still gets a gradient, which
            # DDP requires (without find_unused_parameters) of each step.
            loss = 0.0 * sentence_logits.sum()
        else:
            # fp32 for the same reason as lm_loss: the loss is the number the run is judged by.
            loss = F.cross_entropy(sentence_logits.float(), next_sentence_label)
        if labels is not None:
            loss = loss + lm_loss(self.mlm_logits(hidden), labels)
        return loss


def count_encoder_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of `EncoderLM(cfg)` by formula (it equals the built model's numel, and HF
    `BertForPreTraining`'s at the same shape).

    non_embedding=True follows Kaplan et al. (2020): it leaves out the word embedding and the
    position embedding, and with them every other vocab-sized tensor (the MLM output bias and, when
    untied, the output matrix), so it depends on neither the tokenizer nor the context length. The
    2-row segment embedding stays in: it is neither.
    """
    d, ffn, inner = cfg.d_model, cfg.ffn_dim, cfg.n_heads * cfg.head_dim
    norm = 2 * d  # LayerNorm gain + bias
    attention = 3 * (d * inner + inner) + inner * d + d
    mlp = d * ffn + ffn + ffn * d + d
    body = cfg.n_layers * (attention + mlp + 2 * norm)
    segments = cfg.type_vocab_size * d + norm  # type embeddings + embedding LayerNorm
    heads = (d * d + d + norm) + (d * d + d) + (2 * d + 2)  # MLM transform, pooler, NSP
    non_embedding_count = body + segments + heads
    if non_embedding:
        return non_embedding_count
    vocab = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + cfg.vocab_size  # + output bias
    return non_embedding_count + vocab + cfg.max_seq_len * d
