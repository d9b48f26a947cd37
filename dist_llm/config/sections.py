"""The config sections, each a typed dataclass with one-line docs per field and a `validate(fail, ...)`
that checks its own fields (plus what it needs to know of other sections, passed in). `fail(key,
message)` raises a ConfigError naming the file:line (or override) that set `key`.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from dist_llm.distributed.dims import ParallelDims
from dist_llm.models.config import ModelConfig

Fail = Callable[[str, str], None]
OBJECTIVES = {"decoder": "causal", "encoder": "mlm", "encoder_decoder": "span_corruption"}
"""model.arch -> the data.objective that pretrains it."""
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    """Local cache for remote data, shared by the ranks of a node (one subdirectory per dataset
    URI); empty = $XDG_CACHE_HOME/dist_llm/data or ~/.cache/dist_llm/data. Use a node-local disk."""
    cache_max_gb: float = 100.0
    """Remote data: the cache holds at most this many GB (1e9 bytes) on disk; past it, the least
    recently read ranges and files are deleted."""
    prefetch_steps: int = 8
    """Remote data: fetch in background threads the byte ranges the next N steps will read (0 =
    only the current step's, still in parallel)."""
    download_workers: int = 4
    """Remote data: parallel downloads per process."""
    max_open_shards: int = 64
    """Shards kept memory-mapped at once per split of each source (least recently read closed first)."""

    def source_list(self) -> list[SourceConfig]:
        """The sources to train on, names filled in; `path` alone is one unnamed source."""
        if not self.sources:
            return [SourceConfig(path=self.path, weight=1.0, name="")]
        return [
            SourceConfig(path=s.path, weight=s.weight, name=s.name or _last_component(s.path))
            for s in self.sources
        ]

    def validate(self, fail: Fail, arch: str) -> None:
        """Checks of this section; `arch` (model.arch) picks the objective that must be set."""
        d = self
        if d.seq_len <= 0:
            fail("data.seq_len", f"data.seq_len={d.seq_len} must be > 0")
        if d.prefetch_steps < 0:
            fail("data.prefetch_steps", f"data.prefetch_steps={d.prefetch_steps} must be >= 0")
        if not (d.cache_max_gb > 0 and math.isfinite(d.cache_max_gb)):
            fail("data.cache_max_gb", f"data.cache_max_gb={d.cache_max_gb} must be a finite number > 0")
        if d.download_workers < 1:
            fail("data.download_workers", f"data.download_workers={d.download_workers} must be >= 1")
        if d.max_open_shards < 1:
            fail("data.max_open_shards", f"data.max_open_shards={d.max_open_shards} must be >= 1")
        objective = OBJECTIVES[arch]
        if d.objective != objective:
            fail(
                "data.objective",
                f"data.objective={d.objective!r} does not train model.arch="
                f"{arch!r}; set data.objective={objective}",
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

    def validate(self, fail: Fail) -> None:
        if self.warmup_steps < 0:
            fail("optim.warmup_steps", f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            fail("optim.min_lr_ratio", f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


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
    hang_timeout_s: Optional[float] = None
    """A rank that leaves no phase (data, forward, backward, optimizer, eval batch, checkpoint) for
    this long is hung: stacks dumped, stalled ranks named, exit 124. null = max(300, 10 x the
    slowest of the last 100 steps), 1800 before the first step; 0 = off (e.g. under a debugger)."""
    straggler_interval: int = 100
    """Every N steps, gather each rank's step and phase times over the last few steps and name
    ranks slower than the median (`straggler_threshold`); 0 = off."""
    straggler_threshold: float = 0.2
    """A rank whose time outside communication exceeds the median over ranks by more than this
    fraction is reported as a straggler."""

    def validate(self, fail: Fail) -> None:
        positive = (
            "max_steps",
            "global_batch_size",
            "micro_batch_size",
            "log_interval",
            "eval_batches",
            "max_bad_steps",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                fail(f"train.{key}", f"train.{key}={getattr(self, key)} must be > 0")
        for key in ("eval_interval", "exit_at_step", "straggler_interval"):
            if getattr(self, key) < 0:
                fail(f"train.{key}", f"train.{key}={getattr(self, key)} must be >= 0")
        hang = self.hang_timeout_s
        if hang is not None and not (hang == 0 or 1 <= hang < math.inf):
            fail(
                "train.hang_timeout_s",
                f"train.hang_timeout_s={hang}: give seconds >= 1, 0 to turn the watchdog off, "
                "or null to size it from the measured step times",
            )
        if not 0 < self.straggler_threshold < math.inf:
            fail(
                "train.straggler_threshold",
                f"train.straggler_threshold={self.straggler_threshold} must be > 0 (a fraction "
                "of the median: 0.2 = 20% slower)",
            )
        if self.precision == "fp16" and not _cuda_available():
            fail("train.precision", "train.precision=fp16 needs CUDA (fp16 loss scaling); use bf16 on CPU")


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    """Downstream task files (JSONL of multiple-choice or completion examples, see the README) scored
    in the loop by log-likelihood. A path names the task after its file (`bench/arc.jsonl` -> arc); a
    bare name (no '/', no .jsonl) is the file <data.path>/tasks/<name>.jsonl, where `dist-llm prep`
    and `dist-llm tasks make` write (the first source's path for a mixture)."""
    tasks_interval: int = 0
    """Score the tasks every N steps (and at step 0 and at the end); 0 = only at the end."""
    tasks_max_examples: int = 0
    """Score only the first N examples of each task file; 0 = all of them."""

    def task_names(self) -> list[str]:
        """Each task's label in metrics (task/NAME/acc): a bare name itself, else the file's name
        without directory and `.jsonl`."""
        return [_last_component(t).removesuffix(".jsonl") for t in self.tasks]

    def validate(self, fail: Fail, arch: str) -> None:
        """Checks of this section; `arch` (model.arch) says whether continuations can be scored. The
        task files themselves are read by the preflight check (`tasks.files.check_task_files`)."""
        for key in ("tasks_interval", "tasks_max_examples"):
            if getattr(self, key) < 0:
                fail(f"eval.{key}", f"eval.{key}={getattr(self, key)} must be >= 0")
        if self.tasks and arch != "decoder":
            fail(
                "eval.tasks",
                f"eval.tasks scores each continuation by its log-likelihood under a causal language "
                f"model; model.arch={arch!r} is not one (BERT predicts masked tokens, T5 decodes from "
                "an encoder and is not supported yet): remove eval.tasks for this model",
            )
        seen: dict[str, int] = {}
        for i, (path, name) in enumerate(zip(self.tasks, self.task_names())):
            if not _SOURCE_NAME.fullmatch(name):
                fail(
                    "eval.tasks",
                    f"eval.tasks[{i}]={path!r}: the task name {name!r} (the file name) must be "
                    "letters, digits, '_', '-' or '.' (it becomes a metric key); rename the file",
                )
            if name in seen:
                fail(
                    "eval.tasks",
                    f"eval.tasks[{i}]={path!r} has the same name {name!r} as eval.tasks[{seen[name]}]; "
                    "task names (file names without .jsonl) must be unique: rename one file",
                )
            seen[name] = i


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

    def validate(self, fail: Fail, engine: "EngineConfig") -> None:
        """Checks of this section; distillation needs a data-parallel `engine` layout."""
        d = self
        if not d.temperature > 0:
            fail("distill.temperature", f"distill.temperature={d.temperature} must be > 0")
        if not 0.0 <= d.alpha <= 1.0:
            fail("distill.alpha", f"distill.alpha={d.alpha} must be in [0, 1]")
        if not d.teacher:
            return
        if engine.tp > 1 or engine.pp > 1:
            fail(
                "distill.teacher",
                "distillation runs on data-parallel layouts (FSDP2, replication, DeepSpeed ZeRO); "
                "set engine.tp=1 and engine.pp=1",
            )
        if d.teacher_shard and engine.type != "deepspeed":
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

    def validate(self, fail: Fail, world: int, model: ModelConfig, seq_len: int, precision: str) -> None:
        """Checks of the layout on `world` ranks for this model, sample length and precision."""
        e, m = self, model
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
                "data.seq_len": seq_len,
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
        if precision == "fp16" and (e.tp > 1 or e.pp > 1):
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

    def _validate_deepspeed(self, fail: Fail) -> None:
        e = self
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

    def validate(self, fail: Fail) -> None:
        for key in ("interval", "keep_every"):
            if getattr(self, key) < 0:
                fail(f"checkpoint.{key}", f"checkpoint.{key}={getattr(self, key)} must be >= 0")
        if self.keep_last < 1:
            fail(
                "checkpoint.keep_last",
                f"checkpoint.keep_last={self.keep_last} must be >= 1 "
                "(the newest committed checkpoint is always kept)",
            )


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
class TensorBoardConfig:
    enabled: bool = False
    """Write rank 0's metric records as TensorBoard scalars under <run_dir>/tensorboard."""

    def validate(self, fail: Fail) -> None:
        if self.enabled and importlib.util.find_spec("tensorboard") is None:
            fail(
                "logging.tensorboard.enabled",
                "logging.tensorboard.enabled=true needs the tensorboard package: "
                "`pip install tensorboard`, or set logging.tensorboard.enabled=false",
            )


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
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)


@dataclass
class LaunchConfig:
    nproc_per_node: int = 1
    """Processes per node that `dist-llm train` starts through torchrun."""
    nnodes: int = 1
    """Number of nodes (for validation of batch divisibility before launch)."""
    check_fit: bool = True
    """`dist-llm train`/`launch`: before spawning, refuse a layout whose predicted per-rank memory
    (the planner's, as `dist-llm plan` prints it) exceeds this node's device memory (a CUDA GPU's,
    else host memory / ranks per node); false = launch without the check."""

    def validate(self, fail: Fail) -> None:
        for key in ("nproc_per_node", "nnodes"):
            if getattr(self, key) <= 0:
                fail(f"launch.{key}", f"launch.{key}={getattr(self, key)} must be > 0")
