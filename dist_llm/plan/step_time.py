"""Estimated time of one optimizer step of a layout, from its FLOPs and its communication volume.

Per rank and step:
- compute: global batch tokens x FLOPs per token (`flops_per_token`: 6N + attention) / ranks /
  (peak x assumed efficiency); activation checkpointing recomputes the forward (x 4/3); a pipeline
  idles (pp - 1) of its (micro-batches + pp - 1) slots (the 1F1B bubble);
- FSDP2 (dp_shard > 1): every micro-batch all-gathers the stage's parameters in param_dtype (twice
  when they are resharded after forward) and reduce-scatters its gradients in reduce_dtype, each
  moving (dp_shard - 1) / dp_shard of the bytes; replication (HSDP across groups, or plain data
  parallelism) all-reduces each rank's gradient shard once per step, 2 (r - 1) / r of the bytes;
  a share `overlap` of the compute hides this traffic;
- TP (sequence parallel): per block and micro-batch, an all-gather and a reduce-scatter of the
  micro-batch's activations (tokens x d_model) before and after attention and the MLP, forward and
  backward (8 collectives; 12 with recomputation), never hidden;
- PP: each micro-batch's activations sent forward and their gradients back, never hidden;
- every collective also pays a fixed latency;
- the optimizer step reads and writes ~32 bytes per local parameter at the memory bandwidth (CPU
  offload: over the host link, plus the shards' copies to and from the device every micro-batch).
DeepSpeed ZeRO is estimated as FSDP over every rank (ZeRO-1/2 gather no parameters per micro-batch,
so this overstates their traffic). A group's traffic runs at the intra-node bandwidth while the
group fits in a node, else inter-node; all-gathers and reduce-scatters at `gather_ratio` of it
(gloo's are much slower than its all-reduce).
"""

from __future__ import annotations

from dataclasses import dataclass

from dist_llm.config import Config
from dist_llm.data.collate import target_length
from dist_llm.models import count_params, flops_per_token
from dist_llm.plan.hardware import GB, Hardware
from dist_llm.plan.layouts import Layout
from dist_llm.plan.memory import DTYPE_BYTES, stage_layers

OPTIMIZER_BYTES_PER_PARAM = 32  # AdamW reads and writes weight, gradient and two moments in fp32


@dataclass
class TimeEstimate:
    compute_s: float
    data_parallel_comm_s: float
    tp_comm_s: float
    pp_comm_s: float
    latency_s: float
    optimizer_s: float
    step_s: float
    tokens_per_s: float
    mfu: float


def _bandwidth(hw: Hardware, stride: int, size: int, ranks_per_node: int, gather: bool = False) -> float:
    """Bytes/s of a group of `size` ranks `stride` apart (intra-node while it fits in one node);
    `gather`: all-gather / reduce-scatter rather than all-reduce."""
    link = hw.intra_gbps if stride * size <= ranks_per_node else hw.inter_gbps
    return link * GB * (hw.gather_ratio if gather else 1.0)


def estimate_time(
    cfg: Config, layout: Layout, world: int, ranks_per_node: int, precision: str, hw: Hardware
) -> TimeEstimate:
    m, e, t = cfg.model, cfg.engine, cfg.train
    dims = e.dims(world)
    seq, a = cfg.data.seq_len, DTYPE_BYTES[precision]
    p_b, r_b = DTYPE_BYTES[e.param_dtype], DTYPE_BYTES[e.reduce_dtype]
    n_micro = t.global_batch_size // (layout.micro_batch * dims.dp)
    tokens = t.global_batch_size * seq
    fpt = flops_per_token(m, seq, target_length(cfg.data))
    peak = hw.peak_tflops.get(precision, hw.peak_tflops["fp32"]) * 1e12
    compute = tokens * fpt / world / (peak * hw.efficiency)
    if layout.activation_checkpointing:
        compute *= 4 / 3
    compute *= (n_micro + dims.pp - 1) / n_micro
    layers = max(stage_layers(m, dims.pp))
    local = count_params(m) / dims.pp / dims.tp  # parameters of this rank's stage, per TP rank
    shard = local / dims.dp_shard
    dp_comm, collectives = 0.0, 0.0
    if dims.dp_shard > 1:
        reshard = e.reshard_after_forward if e.reshard_after_forward is not None else dims.pp == 1
        gathers = 2 if reshard else 1
        volume = n_micro * (dims.dp_shard - 1) / dims.dp_shard * local * (gathers * p_b + r_b)
        dp_comm += volume / _bandwidth(hw, dims.tp, dims.dp_shard, ranks_per_node, gather=True)
        collectives += n_micro * (layers + 1) * (gathers + 1)
    if dims.dp_replicate > 1:
        volume = 2 * (dims.dp_replicate - 1) / dims.dp_replicate * shard * r_b
        stride = dims.tp * dims.dp_shard
        dp_comm += volume / _bandwidth(hw, stride, dims.dp_replicate, ranks_per_node)
        collectives += layers + 1
    tp_comm = 0.0
    if dims.tp > 1:
        per_block = 12 if layout.activation_checkpointing else 8
        count = layers * n_micro * per_block
        tp_comm = count * (dims.tp - 1) / dims.tp * layout.micro_batch * seq * m.d_model * a
        tp_comm /= _bandwidth(hw, 1, dims.tp, ranks_per_node, gather=True)
        collectives += count
    pp_comm = 0.0
    if dims.pp > 1:
        sends = 2 * n_micro
        pp_comm = sends * layout.micro_batch * seq * m.d_model * a / dims.tp
        pp_comm /= _bandwidth(hw, world // dims.pp, 2, ranks_per_node)
        collectives += sends
    latency = collectives * hw.latency_s
    optimizer = shard * OPTIMIZER_BYTES_PER_PARAM / (hw.memory_gbps * GB)
    if layout.cpu_offload and not hw.is_cpu:
        copies = n_micro * shard * (4 * (2 if dims.pp == 1 else 1) + 4)
        optimizer = (shard * OPTIMIZER_BYTES_PER_PARAM + copies) / (hw.host_gbps * GB)
    exposed = max(0.0, dp_comm - hw.overlap * compute) + tp_comm + pp_comm + latency
    step = compute + exposed + optimizer
    return TimeEstimate(
        compute_s=compute,
        data_parallel_comm_s=dp_comm,
        tp_comm_s=tp_comm,
        pp_comm_s=pp_comm,
        latency_s=latency,
        optimizer_s=optimizer,
        step_s=step,
        tokens_per_s=tokens / step,
        mfu=tokens / step * fpt / (world * peak),
    )
