"""Knowledge distillation: a frozen teacher's soft targets added to the student's loss.

`attach_teacher` swaps the student's `forward` for a `DistillationForward` on the *instance*. The
student stays the same nn.Module with the same parameters, so its state_dict keys, the optimizer's
param groups, DDP/DeepSpeed wrapping, checkpoints and export are exactly those of a run without a
teacher; the teacher is held by a plain object, not registered as a submodule, so it is invisible
to all of them (never saved, never optimized, never moved or sharded by the student's engine).

While the student trains, its loss is (Hinton et al., 2015)

    alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with the KL averaged over the positions the labels score (label != -100), both terms in fp32. The
T^2 keeps the soft term's gradient scale independent of T. In eval mode the student returns its
plain loss, so val_loss means the same with and without a teacher.

Where the teacher lives:
- replicated (default): a full frozen copy on every rank;
- distill.teacher_shard (engine.type=deepspeed): ZeRO-3 inference, each rank holds 1/world of
  the teacher's weights and all-gathers a layer's weights just before that layer runs;
- distill.teacher_offload: those partitions live in CPU memory (ZeRO-3 parameter offload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.config import Config
from dist_llm.distributed import World, ensure_process_group
from dist_llm.errors import ConfigError
from dist_llm.log import get_logger
from dist_llm.models import ModelConfig
from dist_llm.pretrained import check_pretrained, instantiate, load_pretrained

log = get_logger("distill")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * hard CE + (1 - alpha) * T^2 * KL(teacher_T || student_T) over positions with
    label != -100. Logits [B, T, V], labels [B, T]; computed in fp32 even under bf16 autocast."""
    student = student_logits.float().flatten(0, 1)
    # Same call as the models' own LM loss, so alpha=1 gives exactly the loss a plain run trains on.
    hard = F.cross_entropy(student, labels.flatten(), ignore_index=-100)
    scored = labels.flatten() != -100
    log_p_student = F.log_softmax(student[scored] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float().flatten(0, 1)[scored] / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") / scored.sum()
    return alpha * hard + (1.0 - alpha) * temperature**2 * kl


@dataclass
class PlacedTeacher:
    """The frozen teacher as the student calls it, and what it costs each rank."""

    forward: Callable[..., torch.Tensor]
    """The teacher module (replicated) or its DeepSpeed ZeRO-3 engine: inputs -> logits."""
    bytes_per_rank: int
    """Teacher parameter bytes this rank holds (its partition when sharded)."""
    mode: str
    """replicated | zero3 | zero3+cpu offload"""


class DistillationForward:
    """The student's `forward` while a teacher is attached (see the module docstring for why it is an
    instance attribute and not a wrapper module)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: PlacedTeacher,
        temperature: float,
        alpha: float,
        decoder_inputs: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.student = student
        self.student_forward = student.forward  # the class's bound forward, captured before the swap
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        # Encoder-decoder: logits need decoder inputs, which the model would otherwise derive from labels.
        self.decoder_inputs = decoder_inputs

    def __call__(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Engines pass batches by keyword (`model(**batch)`): labels are found by name."""
        labels = inputs.get("labels")
        if labels is None or not self.student.training:
            return self.student_forward(*args, **inputs)  # logits, or the plain loss for validation
        inputs = {key: value for key, value in inputs.items() if key != "labels"}
        if self.decoder_inputs is not None and "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = self.decoder_inputs(labels)
        with torch.no_grad():
            teacher_logits = self.teacher.forward(*args, **inputs)
        student_logits = self.student_forward(*args, **inputs)
        return distillation_loss(student_logits, teacher_logits, labels, self.temperature, self.alpha)


def attach_teacher(student: nn.Module, cfg: Config, world: World) -> None:
    """Load `distill.teacher` (frozen, eval mode, replicated or ZeRO-3 sharded) and make
    `student(**batch)` return the distillation loss while the student trains."""
    d = cfg.distill
    if cfg.model.arch == "encoder" and cfg.data.sentence_task != "none":
        # Without labels the encoder returns MLM logits only: its sentence loss would silently vanish.
        raise ConfigError(
            f"distill.teacher={d.teacher} with data.sentence_task={cfg.data.sentence_task}: "
            "distillation covers the masked-LM logits only; set data.sentence_task=none"
        )
    check_pretrained(d.teacher, "distill.teacher")
    teacher_cfg, state = load_pretrained(d.teacher)
    _check_compatible(teacher_cfg, cfg, d.teacher)
    # A sharded teacher is built in host memory: only its partitions go to the device.
    device = torch.device("cpu") if d.teacher_shard else world.device
    teacher = instantiate(teacher_cfg, state, device).requires_grad_(False)
    del state  # the loaded copy; gone before ZeRO-3 partitions the teacher's own
    n_params = sum(p.numel() for p in teacher.parameters())
    if d.teacher_shard:
        placed = _shard_teacher(teacher, cfg, teacher_cfg.d_model, world.device)
    else:
        placed = PlacedTeacher(
            teacher, sum(p.numel() * p.element_size() for p in teacher.parameters()), "replicated"
        )
    log.info(
        "teacher: %s params, %.2f MB per rank (%s), T=%g, alpha=%g, from %s",
        f"{n_params:,}",
        placed.bytes_per_rank / 2**20,
        placed.mode,
        d.temperature,
        d.alpha,
        d.teacher,
    )
    # Not an nn.Module, so nn.Module.__setattr__ stores it as a plain instance attribute.
    student.forward = DistillationForward(
        student, placed, d.temperature, d.alpha, _decoder_inputs(cfg.model.arch)
    )


def _check_compatible(teacher_cfg: ModelConfig, cfg: Config, path: str) -> None:
    """Soft targets compare distributions over the same token ids for the same inputs."""
    if teacher_cfg.arch != cfg.model.arch:
        raise ConfigError(
            f"distill.teacher={path} is a {teacher_cfg.arch!r} model but the student is "
            f"model.arch={cfg.model.arch!r}; distill from a teacher of the same family"
        )
    if teacher_cfg.vocab_size != cfg.model.vocab_size:
        raise ConfigError(
            f"distill.teacher={path} has vocab_size={teacher_cfg.vocab_size} but the student "
            f"has model.vocab_size={cfg.model.vocab_size}; teacher and student must share "
            "one tokenizer (prepare the data with the teacher's)"
        )
    if cfg.data.seq_len > teacher_cfg.max_seq_len:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds distill.teacher={path}'s "
            f"{teacher_cfg.max_seq_len} positions; lower data.seq_len"
        )


def _decoder_inputs(arch: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if arch != "encoder_decoder":
        return None
    from dist_llm.models.encoder_decoder import shift_right

    return shift_right


def _shard_teacher(teacher: nn.Module, cfg: Config, d_model: int, device: torch.device) -> PlacedTeacher:
    """ZeRO-3 inference: DeepSpeed without an optimizer only partitions the parameters and gathers
    each module's weights around its forward (DeepSpeedZeRoOffload). `teacher` is in host memory."""
    import deepspeed

    ensure_process_group()
    zero: dict[str, Any] = {
        "stage": 3,
        # DeepSpeed keeps parameters up to this size whole on every rank after their first use (default
        # 1e5 elements, which would leave a small teacher unsharded). d_model keeps just the norm gains
        # and d_model-sized biases whole: negligible memory, and no all-gather per norm.
        "stage3_param_persistence_threshold": d_model,
    }
    if cfg.distill.teacher_offload:
        # Pinned host memory needs CUDA; on a CPU-only host pinning fails.
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
    }
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    if dtype is not None:
        ds_config[cfg.train.precision] = {"enabled": True}
        for param in teacher.parameters():  # weights only, as DeepSpeed casts: buffers (RoPE) stay fp32
            param.data = param.data.to(dtype)
    # Partition before `initialize`: given a plain module it would first move the whole teacher to the
    # device. zero.Init moves one parameter at a time, keeps this rank's slice (on the device, or in
    # CPU memory with offload) and frees the rest, so no rank ever holds the full teacher on the device.
    deepspeed.zero.Init(module=teacher, config_dict_or_path=ds_config)
    for module in teacher.modules():  # buffers are not partitioned and would stay behind
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.to(device))
    engine, _, _, _ = deepspeed.initialize(model=teacher, config=ds_config, dist_init_required=False)
    engine.eval()
    # This rank's partitions, plus the full copy each persistent parameter keeps once gathered.
    per_rank = sum(
        (p.ds_tensor.numel() + (p.ds_numel if p.ds_persist else 0)) * p.ds_tensor.element_size()
        for p in teacher.parameters()
    )
    return PlacedTeacher(engine, per_rank, "zero3+cpu offload" if cfg.distill.teacher_offload else "zero3")
