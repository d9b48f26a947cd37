"""Scaling on paper: tokens/s and MFU for 8-512 GPUs from one device's step time and the
communication volume of each parallel layout, so a cluster run can be planned before it is paid for.

The model, per optimizer step and per GPU:
- compute: tokens per GPU x FLOPs/token / (single-device MFU x peak) — the single-device MFU is
  measured (`--tokens-per-s` of one GPU at the same micro-batch) or assumed (`--mfu`);
  tensor parallelism divides the compute by tp, pipeline parallelism adds the 1F1B bubble
  (pp - 1) / (micro-batches + pp - 1);
- data-parallel gradient traffic per GPU: a ring all-reduce moves 2 (dp-1)/dp x the gradient bytes
  (ZeRO-1/2: reduce-scatter + all-gather, the same volume; ZeRO-3: 1.5x that, parameters are
  gathered again in backward); bandwidth is the inter-node link once dp spans nodes, NVLink
  within a node; a share `overlap` of the backward pass (2/3 of compute) hides it;
- tensor-parallel traffic: 4 all-reduces of the micro-batch's activations (b x s x d, bf16) per
  layer per micro-batch (2 forward, 2 backward), over NVLink (TP stays inside a node), not hidden;
- pipeline traffic (activations between stages) is small and ignored.
Every number that is an assumption is a field of `Hardware` or an argument, printed with the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dist_llm.errors import ConfigError
from dist_llm.models import count_params, flops_per_token
from dist_llm.models.config import ModelConfig


@dataclass(frozen=True)
class Hardware:
    peak_tflops: float = 989.0
    """Dense bf16 peak per GPU (H100 SXM datasheet)."""
    gpus_per_node: int = 8
    nvlink_gbps: float = 450.0
    """NVLink bandwidth per GPU per direction, GB/s (H100 SXM: 900 GB/s bidirectional)."""
    internode_gbps: float = 50.0
    """Inter-node bandwidth per GPU per direction, GB/s (one 400 Gb/s NDR InfiniBand NIC per GPU)."""
    bus_efficiency: float = 0.8
    """Share of the link bandwidth NCCL collectives reach at these message sizes."""
    overlap: float = 0.7
    """Share of the backward pass during which gradient traffic is hidden (bucketed all-reduce)."""
    memory_gb: float = 80.0
    """GPU memory, for the "fits" column (model states only: activations come on top)."""


@dataclass(frozen=True)
class Layout:
    name: str
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    grad_bytes: int = 2
    """Bytes per gradient element on the wire (bf16 with DeepSpeed; fp32 gradients would be 4)."""


LAYOUTS = {
    "zero1": Layout("ZeRO-1 (DP)"),
    "zero3": Layout("ZeRO-3 (DP)", zero_stage=3),
    "tp8": Layout("TP 8 x DP", tp=8),
    "tp8-pp4": Layout("TP 8 x PP 4 x DP", tp=8, pp=4),
}


@dataclass
class ScalingRow:
    gpus: int
    layout: str
    dp: int
    micro_batch: int
    state_gb: float
    """Weights, gradients and Adam state per GPU (bf16 weights/grads, fp32 master + moments)."""
    fits: bool
    compute_s: float
    comm_s: float
    exposed_comm_s: float
    step_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    mfu: float


def estimate(
    cfg: ModelConfig,
    seq_len: int,
    global_batch: int,
    micro_batch: int,
    gpus: int,
    layout: Layout,
    single_mfu: float,
    hw: Hardware,
) -> ScalingRow:
    """One row: `global_batch` sequences of `seq_len` per optimizer step on `gpus` GPUs."""
    model_parallel = layout.tp * layout.pp
    if gpus % model_parallel or (layout.tp > hw.gpus_per_node):
        raise ConfigError(f"{layout.name} does not fit {gpus} GPUs of {hw.gpus_per_node} per node")
    dp = gpus // model_parallel
    # Many replicas share one global batch: each gets fewer sequences, so micro-batches shrink.
    micro_batch = min(micro_batch, global_batch // dp)
    if micro_batch < 1 or global_batch % (dp * micro_batch):
        raise ConfigError(
            f"global batch {global_batch} is not a multiple of dp {dp} x micro-batch {micro_batch}"
        )
    micro_steps = global_batch // (dp * micro_batch)
    fpt = flops_per_token(cfg, seq_len)
    tokens_per_replica = global_batch // dp * seq_len
    compute = tokens_per_replica * fpt / (single_mfu * hw.peak_tflops * 1e12) / model_parallel
    compute *= 1 + (layout.pp - 1) / micro_steps  # 1F1B bubble: (pp-1) idle slots per micro_steps
    # Gradients of this GPU's shard of the model, all-reduced across the dp replicas.
    grad_bytes = count_params(cfg) / model_parallel * layout.grad_bytes
    dp_volume = 2 * (dp - 1) / dp * grad_bytes * (1.5 if layout.zero_stage == 3 else 1.0)
    spans_nodes = dp * model_parallel > hw.gpus_per_node
    dp_bw = (hw.internode_gbps if spans_nodes else hw.nvlink_gbps) * 1e9 * hw.bus_efficiency
    dp_comm = dp_volume / dp_bw
    tp_volume = (
        4
        * cfg.n_layers
        / layout.pp
        * micro_steps
        * 2
        * (layout.tp - 1)
        / layout.tp
        * micro_batch
        * seq_len
        * cfg.d_model
        * 2
    )
    tp_comm = tp_volume / (hw.nvlink_gbps * 1e9 * hw.bus_efficiency)
    exposed = max(0.0, dp_comm - hw.overlap * compute * 2 / 3) + tp_comm
    state = _state_bytes(count_params(cfg) / model_parallel, dp, layout.zero_stage) / 1e9
    step = compute + exposed
    tokens = global_batch * seq_len / step
    return ScalingRow(
        gpus=gpus,
        layout=layout.name,
        dp=dp,
        micro_batch=micro_batch,
        state_gb=state,
        fits=state < hw.memory_gb,
        compute_s=compute,
        comm_s=dp_comm + tp_comm,
        exposed_comm_s=exposed,
        step_s=step,
        tokens_per_s=tokens,
        tokens_per_s_per_gpu=tokens / gpus,
        mfu=tokens / gpus * fpt / (hw.peak_tflops * 1e12),
    )


def _state_bytes(params: float, dp: int, zero_stage: int) -> float:
    """Mixed-precision Adam: 2 bytes of weights + 2 of gradients + 12 of fp32 master weights and
    moments per parameter; ZeRO-1 shards the 12 over dp, ZeRO-2 also the gradients, ZeRO-3 all 16."""
    weights, grads, optimizer = 2 * params, 2 * params, 12 * params
    if zero_stage >= 2:
        grads /= dp
    if zero_stage >= 3:
        weights /= dp
    return weights + grads + optimizer / dp


def single_device_mfu(cfg: ModelConfig, seq_len: int, tokens_per_s: float, hw: Hardware) -> float:
    """MFU of a measured single-GPU throughput (the starting point of every estimate)."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / (hw.peak_tflops * 1e12)


def scaling_table(
    cfg: ModelConfig,
    seq_len: int,
    global_batch: int,
    micro_batch: int,
    layouts: list[str],
    gpu_counts: list[int],
    single_mfu: float,
    hw: Hardware,
) -> list[ScalingRow]:
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise ConfigError(f"--layouts: unknown {unknown}; choose from {list(LAYOUTS)}")
    rows = []
    for name in layouts:
        for gpus in gpu_counts:
            layout = LAYOUTS[name]
            if gpus % (layout.tp * layout.pp) == 0 and global_batch >= gpus // (layout.tp * layout.pp):
                rows.append(estimate(cfg, seq_len, global_batch, micro_batch, gpus, layout, single_mfu, hw))
    return rows


@dataclass
class ScalingReport:
    model: str
    seq_len: int
    global_batch: int
    micro_batch: int
    single_gpu_mfu: float
    single_gpu_source: str
    """'assumed' or the measured single-GPU tokens/s it was derived from."""
    hardware: Hardware
    rows: list[ScalingRow]


def bench_scaling(
    config: str,
    overrides: list[str],
    global_batch: int,
    micro_batch: int,
    layouts: list[str],
    gpu_counts: list[int],
    mfu: float,
    tokens_per_s: float | None,
    hw: Hardware,
) -> ScalingReport:
    """The table for the model and sequence length of `config`; `tokens_per_s` (one GPU, measured at
    this micro-batch) replaces the assumed `mfu` when given."""
    from dist_llm.config import load_config

    cfg = load_config(config, overrides)
    seq_len = cfg.data.seq_len
    source = "assumed"
    if tokens_per_s:
        mfu = single_device_mfu(cfg.model, seq_len, tokens_per_s, hw)
        source = f"measured {tokens_per_s:,.0f} tokens/s on one GPU"
    rows = scaling_table(cfg.model, seq_len, global_batch, micro_batch, layouts, gpu_counts, mfu, hw)
    return ScalingReport(
        model=config,
        seq_len=seq_len,
        global_batch=global_batch,
        micro_batch=micro_batch,
        single_gpu_mfu=mfu,
        single_gpu_source=source,
        hardware=hw,
        rows=rows,
    )


def format_table(results: list[ScalingReport]) -> str:
    report = results[0]
    hw = report.hardware
    lines = [
        f"{report.model}: seq {report.seq_len}, global batch {report.global_batch} sequences, "
        f"micro-batch {report.micro_batch}; single-GPU MFU {100 * report.single_gpu_mfu:.1f}% "
        f"({report.single_gpu_source}); " + ", ".join(f"{k} {v}" for k, v in asdict(hw).items()),
        "GPUs | layout | dp x micro-batch | states GB/GPU | compute s | comm s (exposed) | step s | "
        "tokens/s | tokens/s/GPU | MFU",
        "---|---|---|---|---|---|---|---|---|---",
    ]
    for r in report.rows:
        fits = "" if r.fits else f" (> {hw.memory_gb:.0f})"
        lines.append(
            f"{r.gpus} | {r.layout} | {r.dp} x {r.micro_batch} | {r.state_gb:.1f}{fits} | "
            f"{r.compute_s:.3f} | {r.comm_s:.3f} ({r.exposed_comm_s:.3f}) | {r.step_s:.3f} | "
            f"{r.tokens_per_s:,.0f} | {r.tokens_per_s_per_gpu:,.0f} | {100 * r.mfu:.1f}%"
        )
    return "\n".join(lines)
