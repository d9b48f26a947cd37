"""The one typed config tree: model / data / optim / train / engine / checkpoint / logging / launch.

Loaded from YAML (a file may name `base:` files it extends), overridden with dotted `key=value`
arguments, and validated before any process is spawned. Every error names the file, line and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import yaml

from dist_llm.distributed.dims import ParallelDims
from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig

OBJECTIVES = {"decoder": "causal", "encoder": "mlm", "encoder_decoder": "span_corruption"}
"""model.arch -> the data.objective that pretrains it."""


@dataclass
class SourceConfig:
    path: str = ""
    """One prepared dataset (local dir or URI such as s3://bucket/web) with a manifest.json."""
    weight: float = 1.0
    """Share of training samples drawn from this source, relative to the other weights."""
    name: str = ""
    """Label in metrics (tokens_src/NAME, val_loss/NAME); empty = the last component of `path`."""


@dataclass
class DataConfig:
    path: str = "runs/data"
    """Dataset written by `dist-llm prep` (holds manifest.json): a local dir or a URI such as
    s3://bucket/prefix. Ignored when `sources` is set."""
    sources: list[SourceConfig] = field(default_factory=list)
    """A weighted mixture of datasets, e.g. 70% web + 30% code; empty = `path` alone."""
    seq_len: int = 256
    """Tokens per training sample (context window); samples are packed across documents."""
    objective: Literal["causal", "mlm", "span_corruption"] = "causal"
    """How a window of tokens becomes model inputs (the collator): causal = next-token prediction
    (model.arch decoder), mlm = BERT masked LM (encoder), span_corruption = T5 (encoder_decoder)."""
    mask_prob: float = 0.15
    """mlm: share of tokens chosen for prediction (of those 80% [MASK], 10% random, 10% unchanged)."""
    sentence_task: Literal["none", "nsp", "sop"] = "none"
    """mlm: also train BERT's next-sentence prediction or ALBERT's sentence-order prediction."""
    noise_density: float = 0.15
    """span_corruption: share of a sample's tokens hidden in spans (T5: 0.15)."""
    mean_span_length: float = 3.0
    """span_corruption: mean length of a hidden span (T5: 3)."""
    cache_dir: str = ""
    """Local cache for remote shards (one subdirectory per dataset URI); empty =
    $XDG_CACHE_HOME/dist_llm/data or ~/.cache/dist_llm/data. Use a node-local disk."""
    prefetch_steps: int = 8
    """Remote data: download in background threads the shards the next N steps will read (0 = only
    the current step's, still in parallel)."""
    download_workers: int = 4
    """Remote data: parallel shard downloads per process."""

    def source_list(self) -> list[SourceConfig]:
        """The sources to train on, names filled in; `path` alone is one unnamed source."""
        if not self.sources:
            return [SourceConfig(path=self.path, weight=1.0, name="")]
        return [
            SourceConfig(path=s.path, weight=s.weight, name=s.name or _last_component(s.path))
            for s in self.sources
        ]


def _last_component(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate (reached after warmup)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` for cosine/linear/wsd schedules."""
    schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    """Decay after warmup. wsd = warmup-stable-decay (constant, then linear decay at the end)."""
    warmup_steps: int = 100
    """Linear warmup from 0 to `lr`."""
    wsd_decay_fraction: float = 0.2
    """For schedule=wsd: the final fraction of steps spent decaying."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""


@dataclass
class TrainConfig:
    max_steps: int = 1000
    """Optimizer steps to train for."""
    exit_at_step: int = 0
    """Stop (after saving a checkpoint) once this step is done, although the LR schedule runs to
    max_steps: for time-sliced jobs and resume tests. 0 = run to max_steps."""
    global_batch_size: int = 32
    """Samples per optimizer step across all data-parallel ranks."""
    micro_batch_size: int = 8
    """Samples per forward/backward on one rank; the rest is gradient accumulation."""
    seed: int = 1234
    """Global seed; data order and init derive per-purpose seeds from it."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype for forward/backward; weights and optimizer stay fp32. auto: bf16 where the
    device has native bf16 (CUDA, CPUs with AVX512-BF16/AMX), else fp32. fp16 needs CUDA."""
    eval_interval: int = 100
    """Run validation every N steps (and at the end); 0 = only at the end."""
    eval_batches: int = 20
    """Micro-batches per rank per validation run."""
    log_interval: int = 1
    """Log metrics every N steps."""
    max_bad_steps: int = 5
    """Consecutive steps with non-finite loss/gradients (each skipped) before `on_bad_steps` acts."""
    on_bad_steps: Literal["stop", "rollback"] = "stop"
    """stop: exit with an error; rollback: reload weights/optimizer from the last committed
    checkpoint and go on with the data after the bad batches."""


@dataclass
class DistillConfig:
    teacher: str = ""
    """Knowledge distillation from this frozen model (a dist_llm checkpoint/run directory or a local
    Hugging Face model directory of the same family and vocabulary); empty = no teacher."""
    temperature: float = 1.0
    """Softmax temperature T of the soft targets; the soft loss is scaled by T^2 (Hinton et al.).
    Measured on the tiny configs: T=1 helped in every run, T=1.5-2 left the student worse than no
    teacher (soft targets too flat for a small vocabulary-wide student)."""
    alpha: float = 0.5
    """Weight of the hard-label loss; the soft-target KL gets 1 - alpha."""
    teacher_shard: bool = False
    """engine.type=deepspeed: partition the teacher's weights across ranks (ZeRO-3 inference)
    instead of a full copy per rank."""
    teacher_offload: bool = False
    """With teacher_shard: keep the teacher's partitions in CPU memory (ZeRO-3 parameter offload)."""


@dataclass
class EngineConfig:
    type: Literal["torch", "deepspeed"] = "torch"
    """torch: one torch-native engine for every FSDP2/HSDP/DP x TP x PP layout; deepspeed: ZeRO 0-3
    with CPU/NVMe offload (data parallelism only)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend; auto = nccl when CUDA is present, else gloo."""
    dp_shard: int = -1
    """Data-parallel ranks that shard one replica with FSDP2 (parameters, gradients and optimizer
    state split among them); -1 = what the world size leaves after the other degrees."""
    dp_replicate: int = 1
    """Data-parallel replicas: with dp_shard > 1 this is HSDP (sharded within a group, e.g. a node,
    replicated across groups); with dp_shard = 1 plain data parallelism (a full replica per rank)."""
    tp: int = 1
    """Tensor-parallel degree (ranks that split each layer's matrices, with sequence parallelism and a
    vocabulary-parallel embedding, head and cross-entropy)."""
    pp: int = 1
    """Pipeline-parallel degree (ranks that each hold a contiguous group of layers)."""
    reshard_after_forward: Optional[bool] = None
    """FSDP2: free each block's gathered parameters after forward and gather them again in backward
    (less memory, more communication); null = true, except with pipeline parallelism."""
    param_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP2: dtype parameters are gathered and computed in (bf16 halves the all-gathers); the sharded
    master weights and the optimizer stay fp32."""
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP2: dtype gradients are reduced in."""
    cpu_offload: bool = False
    """FSDP2: keep sharded parameters, gradients and optimizer state in host memory; the optimizer
    step runs on the CPU (needs data-parallel ranks, i.e. dp_shard or dp_replicate > 1)."""
    activation_checkpointing: bool = False
    """Recompute each Transformer block's activations in backward instead of storing them."""
    compile: bool = False
    """torch.compile each Transformer block (fuses norms, RoPE and activations; the first steps
    pay the compilation). Parameter names stay the same, so checkpoints are interchangeable."""
    zero_stage: int = 1
    """deepspeed only: ZeRO stage 0-3 (1: optimizer states, 2: + gradients, 3: + parameters sharded)."""
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    """deepspeed only: where optimizer states live (ZeRO stage >= 1)."""
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    """deepspeed only: where parameters live between uses (ZeRO stage 3)."""
    nvme_path: str = ""
    """deepspeed only: directory for NVMe offload."""
    deepspeed_config: str = ""
    """deepspeed only: a DeepSpeed JSON file to use instead of the one generated from this config;
    batch sizes, precision and optimizer in it must agree with train/optim (checked)."""

    def dims(self, world_size: int, rank: int = 0) -> ParallelDims:
        """The resolved layout on `world_size` ranks (DeepSpeed: every rank is a data-parallel rank);
        raises ValueError with the reason if the degrees do not fit."""
        if self.type == "deepspeed":
            return ParallelDims(pp=1, dp_replicate=1, dp_shard=world_size, tp=1, rank=rank)
        return ParallelDims.resolve(self.pp, self.dp_replicate, self.dp_shard, self.tp, world_size, rank)


@dataclass
class CheckpointConfig:
    dir: str = ""
    """Checkpoint location (URI string); empty = <logging.run_dir>/checkpoints."""
    interval: int = 0
    """Save every N steps; 0 = only at the end of training."""
    keep_last: int = 3
    """Retention: keep the newest N committed checkpoints."""
    keep_every: int = 0
    """Retention: also keep every checkpoint whose step is a multiple of this forever; 0 = off."""
    resume: str = "none"
    """none | auto (newest committed checkpoint in `dir`, if any) | a checkpoint path."""
    async_save: bool = True
    """Snapshot to host memory, then upload and commit in a background thread while training goes on."""
    on_busy: Literal["wait", "skip"] = "wait"
    """When a checkpoint is due while the previous one is still uploading: wait for it, or skip this one."""
    commit_timeout_s: float = 1800.0
    """Rank 0 marks a checkpoint failed if some rank's files are not written within this time."""


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log to Weights & Biases from rank 0 (the config, every metric record, checkpoint events)."""
    mode: Literal["offline", "online"] = "offline"
    """offline: no account or network needed, the run is written under <run_dir>/wandb (upload it
    later with `wandb sync`); online: streams to the server (`wandb login` or WANDB_API_KEY first)."""
    project: str = "dist-llm"
    entity: str = ""
    """Team or user; empty = the account's default."""
    name: str = ""
    """Display name; empty = the run directory's name."""
    tags: str = ""
    """Comma-separated tags."""


@dataclass
class LoggingConfig:
    run_dir: str = "runs/tiny"
    """Where metrics.jsonl, config.yaml and (by default) checkpoints go."""
    jsonl: bool = True
    """Write one JSON line of metrics per logged step to <run_dir>/metrics.jsonl."""
    peak_tflops: Optional[float] = None
    """Peak TFLOP/s per device used for MFU; None = measured with a matmul at start-up."""
    profile_steps: str = ""
    """Steps FIRST-LAST to profile into <run_dir>/breakdown/rank<r>.json (`dist-llm bench`); empty = off."""
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class LaunchConfig:
    nproc_per_node: int = 1
    """Processes per node that `dist-llm train` starts through torchrun."""
    nnodes: int = 1
    """Number of nodes (for validation of batch divisibility before launch)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.run_dir, "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def where(self, key: str, default: str = "config") -> str:
        """File:line (or override) that set `key`, for error messages. A key inside a list item
        (`data.sources[1].weight`) falls back to its item, then to the list (set by one override)."""
        sources = getattr(self, "_sources", {})
        while key not in sources and "[" in key:
            key = key.rsplit(".", 1)[0] if key.rfind(".") > key.rfind("]") else key[: key.rindex("[")]
        return sources.get(key, default)

    def validate(self, world_size: int | None = None, origin: str = "config") -> None:
        """Cross-field checks; `world_size` defaults to launch.nproc_per_node * launch.nnodes."""
        world = world_size or self.launch.nproc_per_node * self.launch.nnodes
        t = self.train

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{self.where(key, origin)}: {message}")

        positive = {
            "train.max_steps": t.max_steps,
            "train.global_batch_size": t.global_batch_size,
            "train.micro_batch_size": t.micro_batch_size,
            "data.seq_len": self.data.seq_len,
            "launch.nproc_per_node": self.launch.nproc_per_node,
            "launch.nnodes": self.launch.nnodes,
            "train.log_interval": t.log_interval,
            "train.eval_batches": t.eval_batches,
            "train.max_bad_steps": t.max_bad_steps,
        }
        for key, value in positive.items():
            if value <= 0:
                fail(key, f"{key}={value} must be > 0")
        non_negative = {
            "train.eval_interval": t.eval_interval,
            "optim.warmup_steps": self.optim.warmup_steps,
            "checkpoint.interval": self.checkpoint.interval,
            "train.exit_at_step": t.exit_at_step,
            "checkpoint.keep_every": self.checkpoint.keep_every,
        }
        for key, value in non_negative.items():
            if value < 0:
                fail(key, f"{key}={value} must be >= 0")
        try:
            self.model.validate(require_vocab=False)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None
        self._validate_parallelism(world, fail)
        self._validate_data(fail)
        self._validate_distill(fail)
        dp = self.engine.dims(world).dp
        if t.global_batch_size % (t.micro_batch_size * dp) != 0:
            fail(
                "train.global_batch_size",
                f"train.global_batch_size={t.global_batch_size} is not divisible by "
                f"train.micro_batch_size={t.micro_batch_size} x {dp} data-parallel ranks; "
                f"pick a global batch that is a multiple of {t.micro_batch_size * dp}",
            )
        if self.data.seq_len > self.model.max_seq_len:
            fail(
                "data.seq_len",
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
            )
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            fail("optim.min_lr_ratio", f"optim.min_lr_ratio={self.optim.min_lr_ratio} must be in [0, 1]")
        if self.checkpoint.keep_last < 1:
            fail(
                "checkpoint.keep_last",
                f"checkpoint.keep_last={self.checkpoint.keep_last} must be >= 1 "
                "(the newest committed checkpoint is always kept)",
            )
        if self.train.precision == "fp16" and not _cuda_available():
            fail("train.precision", "train.precision=fp16 needs CUDA (fp16 loss scaling); use bf16 on CPU")

    def _validate_distill(self, fail: Callable[[str, str], None]) -> None:
        d = self.distill
        if not d.temperature > 0:
            fail("distill.temperature", f"distill.temperature={d.temperature} must be > 0")
        if not 0.0 <= d.alpha <= 1.0:
            fail("distill.alpha", f"distill.alpha={d.alpha} must be in [0, 1]")
        if not d.teacher:
            return
        if self.engine.tp > 1 or self.engine.pp > 1:
            fail(
                "distill.teacher",
                "distillation runs on data-parallel layouts (FSDP2, replication, DeepSpeed ZeRO); "
                "set engine.tp=1 and engine.pp=1",
            )
        if d.teacher_shard and self.engine.type != "deepspeed":
            fail(
                "distill.teacher_shard",
                "distill.teacher_shard=true partitions the teacher with "
                "DeepSpeed ZeRO-3; set engine.type=deepspeed",
            )
        if d.teacher_offload and not d.teacher_shard:
            fail(
                "distill.teacher_offload",
                "distill.teacher_offload=true offloads the teacher's ZeRO-3 "
                "partitions; set distill.teacher_shard=true too",
            )

    def _validate_data(self, fail: Callable[[str, str], None]) -> None:
        d = self.data
        if d.prefetch_steps < 0:
            fail("data.prefetch_steps", f"data.prefetch_steps={d.prefetch_steps} must be >= 0")
        if d.download_workers < 1:
            fail("data.download_workers", f"data.download_workers={d.download_workers} must be >= 1")
        objective = OBJECTIVES[self.model.arch]
        if d.objective != objective:
            fail(
                "data.objective",
                f"data.objective={d.objective!r} does not train model.arch="
                f"{self.model.arch!r}; set data.objective={objective}",
            )
        for key in ("mask_prob", "noise_density"):
            if not 0.0 < getattr(d, key) < 1.0:
                fail(f"data.{key}", f"data.{key}={getattr(d, key)} must be in (0, 1)")
        if d.mean_span_length < 1.0:
            fail("data.mean_span_length", f"data.mean_span_length={d.mean_span_length} must be >= 1")
        seen: dict[str, int] = {}
        for i, source in enumerate(d.source_list() if d.sources else []):
            key = f"data.sources[{i}]"
            if not source.path:
                fail(f"{key}.path", f"{key}.path is empty; give the dataset directory or URI")
            if not (source.weight > 0 and math.isfinite(source.weight)):
                fail(f"{key}.weight", f"{key}.weight={source.weight} must be a finite number > 0")
            if not _SOURCE_NAME.fullmatch(source.name):
                fail(
                    f"{key}.name",
                    f"{key}.name={source.name!r} must be letters, digits, '_', '-' or '.' "
                    "(it becomes a metric key); set name: explicitly",
                )
            if source.name in seen:
                fail(
                    f"{key}.name",
                    f"{key}.name={source.name!r} is also the name of "
                    f"data.sources[{seen[source.name]}]; names must be unique "
                    "(set name: explicitly when two paths end alike)",
                )
            seen[source.name] = i

    def _validate_parallelism(self, world: int, fail: Callable[[str, str], None]) -> None:
        e, m = self.engine, self.model
        if m.arch != "decoder" and (e.tp > 1 or e.pp > 1):
            fail(
                "engine.tp" if e.tp > 1 else "engine.pp",
                f"engine.tp={e.tp}, engine.pp={e.pp}: tensor and pipeline parallelism are implemented "
                f"for model.arch=decoder only, not {m.arch!r}; use data parallelism (engine.dp_shard, "
                "engine.dp_replicate, or DeepSpeed ZeRO) for encoder and encoder-decoder models",
            )
        if e.type == "deepspeed":
            self._validate_deepspeed(fail)
            return
        try:
            dims = e.dims(world)
        except ValueError as exc:
            key = next(
                (f"engine.{k}" for k in ("dp_shard", "dp_replicate", "tp", "pp") if getattr(e, k) == -1),
                "engine.dp_shard",
            )
            fail(
                key,
                f"engine.pp={e.pp} x dp_replicate={e.dp_replicate} x dp_shard={e.dp_shard} x tp={e.tp} "
                f"on {world} ranks: {exc}",
            )
        if e.tp > 1:
            for key, value in {
                "model.n_heads": m.n_heads,
                "model.n_kv_heads": m.kv_heads,
                "model.vocab_size": m.vocab_size,
                "data.seq_len": self.data.seq_len,
            }.items():
                if value % e.tp:
                    fail(
                        "engine.tp",
                        f"engine.tp={e.tp} must divide {key}={value}: TP splits attention by "
                        "heads, the embedding and head by vocabulary rows, and (sequence "
                        "parallelism) the tokens of each sample",
                    )
            if m.dropout > 0:
                fail(
                    "model.dropout",
                    f"model.dropout={m.dropout} with engine.tp={e.tp}: replicated "
                    "activations would get different dropout masks per TP rank; set "
                    "model.dropout=0",
                )
        if e.pp > m.n_layers:
            fail(
                "engine.pp",
                f"engine.pp={e.pp} exceeds model.n_layers={m.n_layers}: every pipeline stage "
                "needs at least one layer",
            )
        if self.train.precision == "fp16" and (e.tp > 1 or e.pp > 1):
            fail(
                "train.precision",
                f"train.precision=fp16 with engine.tp={e.tp}, engine.pp={e.pp} is not "
                "supported (no sharded loss scaler); use train.precision=bf16",
            )
        if e.cpu_offload and dims.dp == 1:
            fail(
                "engine.cpu_offload",
                "engine.cpu_offload=true offloads FSDP2's shards, which need "
                "data-parallel ranks (dp_shard or dp_replicate > 1); on one rank use "
                "engine.type=deepspeed with offload_optimizer/offload_params",
            )
        for key in ("offload_optimizer", "offload_params"):
            if getattr(e, key) != "none":
                fail(
                    f"engine.{key}",
                    f"engine.{key}={getattr(e, key)} needs engine.type=deepspeed (the "
                    "torch engine offloads with engine.cpu_offload=true)",
                )
        if e.deepspeed_config:
            fail("engine.deepspeed_config", "engine.deepspeed_config is set but engine.type=torch")

    def _validate_deepspeed(self, fail: Callable[[str, str], None]) -> None:
        e = self.engine
        if e.pp > 1 or e.tp > 1:
            fail(
                "engine.type",
                f"engine.type=deepspeed with engine.tp={e.tp}, engine.pp={e.pp}: the "
                "DeepSpeed engine runs ZeRO data parallelism only; tensor and pipeline "
                "parallelism, alone or with sharded data parallelism, run on engine.type=torch",
            )
        if e.dp_replicate != 1 or e.dp_shard not in (-1,):
            fail(
                "engine.dp_shard",
                "engine.dp_shard/dp_replicate lay out the torch engine; DeepSpeed shards "
                "over every rank (ZeRO): leave them at their defaults (-1, 1)",
            )
        if e.cpu_offload:
            fail(
                "engine.cpu_offload",
                "engine.cpu_offload is the torch engine's; with DeepSpeed set "
                "engine.offload_optimizer/offload_params",
            )
        if not 0 <= e.zero_stage <= 3:
            fail("engine.zero_stage", f"engine.zero_stage={e.zero_stage} must be 0, 1, 2 or 3")
        if e.offload_params != "none" and e.zero_stage != 3:
            fail(
                "engine.offload_params", f"engine.offload_params={e.offload_params} needs engine.zero_stage=3"
            )
        if e.offload_optimizer != "none" and e.zero_stage == 0:
            fail("engine.offload_optimizer", "engine.offload_optimizer needs engine.zero_stage >= 1")
        if "nvme" in (e.offload_optimizer, e.offload_params) and not e.nvme_path:
            fail("engine.nvme_path", "NVMe offload needs engine.nvme_path (a fast local directory)")


_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Loading: YAML with line numbers, `base:` inheritance, dotted overrides, strict typing.


class _Source:
    """Where a value came from, for error messages: 'configs/x.yaml:12' or 'override a.b=1'."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def get(self, key: str, default: str) -> str:
        return self.where.get(key, default)


def _node_to_python(node: yaml.Node, path: str, prefix: str, source: _Source) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            source.where[dotted] = f"{path}:{key_node.start_mark.line + 1}"
            out[key] = _node_to_python(value_node, path, dotted, source)
        return out
    if isinstance(node, yaml.SequenceNode) and any(isinstance(n, yaml.MappingNode) for n in node.value):
        # Lists of sections (data.sources): positions of keys inside items, for error messages.
        items = []
        for index, item_node in enumerate(node.value):
            dotted = f"{prefix}[{index}]"
            source.where[dotted] = f"{path}:{item_node.start_mark.line + 1}"
            items.append(_node_to_python(item_node, path, dotted, source))
        return items
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: str, source: _Source) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.compose(f, Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: top level must be a mapping of sections (model:, train:, ...)")
    return _node_to_python(node, path, "", source)


def _load_with_bases(path: str, source: _Source, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if os.path.abspath(path) in seen:
        raise ConfigError(f"{path}: circular `base:` chain: {' -> '.join(seen)}")
    own = _Source()
    raw = _read_yaml(path, own)
    bases = raw.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        _deep_merge(merged, _load_with_bases(base_path, source, seen + (os.path.abspath(path),)))
    _deep_merge(merged, raw)
    # This file's positions win over its bases', so errors point at the file that set the value.
    source.where.update(own.where)
    return merged


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


def _apply_override(raw: dict[str, Any], override: str, source: _Source) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. train.max_steps=20")
    key, text = override.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = value
    source.where[key] = f"override {override!r}"


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {key}={value!r} is not one of {list(choices)}")
        return value
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise ConfigError(f"{where}: {key} has unsupported type {tp}")
    if not ok and tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept any text Python reads as a float.
        try:
            return float(value)
        except ValueError:
            pass
    if not ok:
        raise ConfigError(f"{where}: {key}={value!r} should be {tp.__name__}, got {type(value).__name__}")
    return float(value) if tp is float else value


def _build(cls: type, raw: dict[str, Any], prefix: str, source: _Source, default_where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else key
        where = source.get(dotted, default_where)
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {dotted}{hint}; valid keys: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} must be a mapping, got {value!r}")
            kwargs[key] = _build(tp, value, dotted, source, default_where)
        elif typing.get_origin(tp) is list:
            kwargs[key] = _build_list(typing.get_args(tp)[0], value, dotted, source, where)
        else:
            kwargs[key] = _check_type(value, tp, dotted, where)
    return cls(**kwargs)


def _build_list(item_cls: type, value: Any, dotted: str, source: _Source, where: str) -> list[Any]:
    """A list of sections: each item is built like a section, its keys named `key[i].field`."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(
            f"{where}: {dotted} must be a list of mappings "
            f"({', '.join(f.name for f in dataclasses.fields(item_cls))}), got {value!r}"
        )
    return [
        _build(item_cls, item, f"{dotted}[{i}]", source, source.get(f"{dotted}[{i}]", where))
        for i, item in enumerate(value)
    ]


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, override and type-check a config (cross-field checks are `Config.validate`)."""
    source = _Source()
    raw = _load_with_bases(path, source) if path else {}
    for override in overrides:
        _apply_override(raw, override, source)
    cfg = _build(Config, raw, "", source, path or "config")
    cfg._sources = dict(source.where)  # not a field: positions are for messages, never saved
    return cfg


def config_from_dict(raw: dict[str, Any], origin: str = "checkpoint config") -> Config:
    """Rebuild a Config saved with `Config.to_dict()` (e.g. from a checkpoint)."""
    return _build(Config, raw, "", _Source(), origin)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
