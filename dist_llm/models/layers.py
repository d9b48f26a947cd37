"""Shared Transformer layers: RMSNorm, rotary embeddings, attention, SwiGLU MLP, pre-norm Block.

Pure PyTorch with no parallelism code. Tensor parallelism shards the Linear layers from outside,
which is why attention infers the local head count from the projected shape (`view(B, T, -1, hd)`)
instead of trusting the config.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.models.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias/mean-centering (Llama)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reduce in fp32: in bf16 the mean of squares loses enough precision to shift activations.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables (RoPE), "rotate half" layout.

    The rotate-half layout (channel i pairs with channel i + head_dim/2) is the one HF Llama
    checkpoints use, so import/export needs no permutation of the q/k weights.
    cos/sin are buffers so they follow `.to(device)`, but non-persistent: they are a pure function
    of the config, and keeping them out of state_dict keeps checkpoints free of derived data.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.theta = theta
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)compute the tables in fp32; also needed after `to_empty()` from the meta device,
        which leaves buffers uninitialized."""
        device = self.cos.device
        channels = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = 1.0 / self.theta ** (channels / self.head_dim)
        positions = torch.arange(self.max_seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # [T, head_dim]: both halves share a frequency
        self.cos = angles.cos()
        self.sin = angles.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x: [B, T, heads, head_dim] in fp32 and cast back. The angles are always computed
        in fp32 (bf16 cannot tell position 2047 from 2048); if the module was cast to bf16 only the
        cos/sin values are rounded, as in HF Llama."""
        seq_len = x.shape[1]
        cos = self.cos[:seq_len, None, :].float()
        sin = self.sin[:seq_len, None, :].float()
        x32 = x.float()
        x1, x2 = x32.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with grouped-query attention (n_kv_heads <= n_heads).

    Separate q/k/v projections (rather than one fused qkv matrix) so tensor parallelism can shard
    each by heads column-wise without untangling a fused GQA layout.
    Each instance owns its rotary tables (~1 MB at T=2048, head_dim=128) so a Block is
    self-contained `x -> x`, which is what pipeline stages and activation checkpointing want.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.wq(x).view(batch, seq_len, -1, self.head_dim)
        k = self.wk(x).view(batch, seq_len, -1, self.head_dim)
        v = self.wv(x).view(batch, seq_len, -1, self.head_dim)
        q, k = self.rope(q), self.rope(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, head_dim]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=k.shape[1] != q.shape[1],  # fused kernels broadcast kv heads; no copies
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq_len, -1))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x). Llama names: w1 gate, w3 up, w2 down."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Pre-norm keeps an identity path from input to output, which is what makes deep stacks
    trainable without warmup tricks.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def init_weights(self, std: float, resid_std: float) -> None:
        """normal(0, std) for input projections, normal(0, resid_std) for the two projections that
        write into the residual stream (see DecoderLM.init_weights for why)."""
        for linear in (
            self.attention.wq,
            self.attention.wk,
            self.attention.wv,
            self.feed_forward.w1,
            self.feed_forward.w3,
        ):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
        for linear in (self.attention.wo, self.feed_forward.w2):
            nn.init.normal_(linear.weight, mean=0.0, std=resid_std)
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attention.rope.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.resid_dropout(self.attention(self.attention_norm(x)))
        return x + self.resid_dropout(self.feed_forward(self.ffn_norm(x)))
