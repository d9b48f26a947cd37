"""nanoGPT (Karpathy's small GPT-2 trainer), rebuilt from its public description: the peer that
`dist-llm bench peer` measures our training against.

Model (its model.py): learned token and position embeddings, pre-LayerNorm blocks (LayerNorm with
an optional bias), causal self-attention through one fused qkv Linear and
`scaled_dot_product_attention(is_causal=True)`, a 4x GELU MLP, the LM head tied to the token
embedding, N(0, 0.02) init with every residual output projection (`c_proj`) at
0.02/sqrt(2*n_layer). Step (its train.py): autocast only on CUDA (fp32 on CPU), gradient
accumulation with each micro-step's loss divided by their count, gradient clipping, AdamW with
decay on >= 2-D parameters (fused only on CUDA), `zero_grad(set_to_none=True)`, and its `get_lr`.

A user's own checkout can stand in for the model (`load_checkout`): the step needs only
`GPT(GPTConfig(...))`, `model(idx, targets) -> (logits, loss)` and `configure_optimizers`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.errors import ConfigError


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    """Biases in Linears and LayerNorms, as GPT-2 has; nanoGPT's train.py trains with False."""


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be left out (nn.LayerNorm could not when nanoGPT was written)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in self.c_attn(x).split(self.n_embd, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1, self.attn = LayerNorm(cfg.n_embd, cfg.bias), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = LayerNorm(cfg.n_embd, cfg.bias), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=LayerNorm(cfg.n_embd, cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def get_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """train.py's schedule: linear warmup to `learning_rate`, cosine down to `min_lr` at
    `lr_decay_iters`, then flat. Its warmup reaches (it+1)/(warmup_iters+1) of the peak, one
    step behind ours ((it+1)/warmup_iters); after warmup the two are the same curve."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager:
    """train.py's `ctx`: nothing on CPU, so nanoGPT trains in fp32 there; bf16 autocast on CUDA
    (its fp16 + GradScaler path for GPUs without bf16 is not reproduced)."""
    if device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict[str, torch.Tensor]],
    lr: float,
    grad_clip: float,
    device: torch.device,
) -> float:
    """One optimizer step of train.py's loop over `micro_batches`; returns the step's mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=device)
    for batch in micro_batches:
        x = batch["input_ids"].to(device, non_blocking=True)
        y = batch["labels"].to(device, non_blocking=True)
        with autocast_context(device):
            _, loss = model(x, y)
            loss = loss / len(micro_batches)
        loss.backward()
        total += loss.detach()
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item()


def load_checkout(path: str) -> ModuleType:
    """`model.py` of a local nanoGPT checkout, imported from that file (nothing is downloaded)."""
    file = os.path.join(path, "model.py")
    if not os.path.isfile(file):
        raise ConfigError(
            f"--nanogpt-dir {path}: no model.py there; point it at a nanoGPT checkout "
            "(the directory holding model.py and train.py)"
        )
    spec = importlib.util.spec_from_file_location("nanogpt_checkout_model", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("GPT", "GPTConfig") if not hasattr(module, name)]
    if missing:
        raise ConfigError(
            f"--nanogpt-dir {path}: {file} defines no {missing}; it must be nanoGPT's "
            "model.py (class GPT, dataclass GPTConfig)"
        )
    return module
