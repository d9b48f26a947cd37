"""Per-rank memory of a layout: the training state the engine's sharding code gives the rank
(`shares`), plus activations, buffers and the process's fixed cost, by formula for the decoder as
built (`models/decoder.py`, `models/layers.py`).

Activations, bytes saved for backward per token of a micro-batch and per block, with `a` the
compute dtype's bytes (4 fp32, 2 bf16), d = d_model, q = heads x head_dim, kv = KV heads x head_dim,
f = ffn hidden size, t = TP degree (sequence parallelism shards what is d-wide by tokens):
  two RMSNorms:    2 x (8d/t + a d)       fp32 input and normalized copy; the matmul input, gathered
  attention:       (8(q + kv) + a(3q + 2kv)) / t   RoPE keeps fp32 q, k and their rotated halves;
                   SDPA (a fused kernel: no T x T matrix) keeps q, k, v and its output; wo's input
  SwiGLU MLP:      4 a f / t               w1 and w3 outputs, silu(w1 x), their product
This is eager mode: `engine.compile=true` fuses the norms and RoPE and keeps less, so the estimate
is an upper bound there. With activation checkpointing a block keeps only its fp32 input (4d/t)
and one block at a time is recomputed in full. A pipeline's first stage holds min(micro-batches, pp)
micro-batches in flight (1F1B); without pipelining one micro-batch is live at a time. The encoder
(BERT) and the encoder-decoder (T5, both stacks) are counted with the same per-block formula, an
approximation (GELU MLPs, no RoPE, T5's cross-attention left out).

Buffers: the last stage's logits, their fp32 log-softmax and its gradient ((a + 8) x vocab / t per
token); FSDP2's unsharded copies in engine.param_dtype — two blocks in flight (the one computing
and the one prefetched), each twice: the all-gather's flat output and the unsharded parameters it is
copied into (with reshard_after_forward off, as with pipelines, the whole stage's blocks stay
unsharded) — and in reduce_dtype one block's unsharded gradients plus the reduce-scatter's flat
input; the root unit (embedding, final norm, head), never resharded, likewise twice in each dtype;
replication in bf16 keeps a bf16 copy of the parameters. The fixed runtime cost
comes from `Hardware`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dist_llm.config import Config
from dist_llm.distributed.pipeline import partition_layers
from dist_llm.models import count_params
from dist_llm.models.config import ModelConfig
from dist_llm.plan.hardware import Hardware
from dist_llm.plan.layouts import Layout
from dist_llm.plan.shares import RankShare

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class MemoryEstimate:
    rank: int
    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    runtime: float
    offloaded: float
    """Parameters, gradients and optimizer state kept off the device (in host memory with CPU
    offload, on disk with DeepSpeed's NVMe offload)."""

    @property
    def device_total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers + self.runtime

    def components(self) -> dict[str, float]:
        return {
            "params": self.params,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "buffers": self.buffers,
            "runtime": self.runtime,
        }


def block_activation_bytes(m: ModelConfig, tokens: int, a: int, tp: int) -> float:
    """Bytes one block keeps for backward for `tokens` tokens (the formula in the module doc)."""
    d, q, kv, f = m.d_model, m.n_heads * m.head_dim, m.kv_heads * m.head_dim, m.ffn_dim
    norms = 2 * (8 * d / tp + a * d)
    attention = (8 * (q + kv) + a * (3 * q + 2 * kv)) / tp
    mlp = 4 * a * f / tp
    return tokens * (norms + attention + mlp)


def stage_layers(m: ModelConfig, pp: int) -> list[int]:
    """Blocks per pipeline stage, by the engine's own split."""
    return [len(r) for r in partition_layers([1] * m.n_layers, pp)] if pp > 1 else [m.n_layers]


def _block_params(m: ModelConfig) -> int:
    return (count_params(m, non_embedding=True) - m.d_model) // m.n_layers


def estimate_memory(
    cfg: Config, layout: Layout, share: RankShare, world: int, precision: str, hw: Hardware
) -> MemoryEstimate:
    """The memory of `share.rank` under `layout` (`cfg` already set to it)."""
    m, e = cfg.model, cfg.engine
    dims = e.dims(world, share.rank)
    stage = dims.pp_rank
    first, last = stage == 0, stage == dims.pp - 1
    layers = stage_layers(m, dims.pp)[stage]
    if m.arch == "encoder_decoder":
        layers += m.decoder_layers
    a = DTYPE_BYTES[precision]
    tokens = layout.micro_batch * cfg.data.seq_len
    n_micro = cfg.train.global_batch_size // (layout.micro_batch * dims.dp)
    in_flight = min(n_micro, dims.pp - stage) if dims.pp > 1 else 1
    block = block_activation_bytes(m, tokens, a, dims.tp)
    if layout.activation_checkpointing:
        activations = in_flight * layers * tokens * 4 * m.d_model / dims.tp + block
    else:
        activations = in_flight * layers * block
    if last:
        activations += tokens * (8 * m.d_model / dims.tp + a * m.d_model)  # final norm
    buffers = tokens * (a + 8) * m.vocab_size / dims.tp if last else 0.0
    p_b, r_b = DTYPE_BYTES[e.param_dtype], DTYPE_BYTES[e.reduce_dtype]
    block_local = _block_params(m) / dims.tp
    if cfg.engine.type == "torch" and dims.dp_shard > 1:
        reshard = e.reshard_after_forward if e.reshard_after_forward is not None else dims.pp == 1
        # Two units in flight, each as the all-gather's flat output and the unsharded parameters it
        # is copied into; backward adds a unit's unsharded gradients and the reduce-scatter's input.
        kept = 2 * block_local if reshard else layers * block_local
        buffers += (kept + 2 * block_local) * p_b + 2 * block_local * r_b
        root = m.vocab_size * m.d_model / dims.tp * ((first + last) if not m.tie_embeddings else 1)
        if first or last:
            buffers += 2 * root * (p_b + r_b)
    elif cfg.engine.type == "torch" and dims.dp > 1 and p_b != 4:
        buffers += share.param_bytes / 4 * p_b
    state = [float(share.param_bytes), float(share.grad_bytes), float(share.optimizer_bytes)]
    if e.type == "deepspeed":
        places = [e.offload_params, "none", e.offload_optimizer]
    else:
        places = ["cpu" if layout.cpu_offload else "none"] * 3
    offloaded = 0.0
    for i, place in enumerate(places):
        # On a GPU, offloaded state leaves the device; on a CPU host only NVMe takes it out of memory.
        if place == "nvme" or (place == "cpu" and not hw.is_cpu):
            offloaded, state[i] = offloaded + state[i], 0.0
    return MemoryEstimate(
        rank=share.rank,
        params=state[0],
        grads=state[1],
        optimizer=state[2],
        activations=activations,
        buffers=buffers,
        runtime=hw.runtime_bytes,
        offloaded=offloaded,
    )
