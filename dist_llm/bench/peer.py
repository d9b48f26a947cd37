"""`dist-llm bench peer`: our training against nanoGPT's, same machine, same run, same batches.

Ours is the real training path (`Trainer(cfg, world).fit()`, what `dist-llm train` runs on one
rank). nanoGPT (`dist_llm/bench/nanogpt.py`, or a user's checkout) gets the same model size
(n_layer, n_head, n_embd, block_size = data.seq_len, the dataset's vocab) and hyperparameters, and
reads its batches through a second loader built like the trainer's, so step k of both sees the
same tokens. The two alternate step by step in one process with one thread count: load from
other processes on a shared machine hits both alike, which back-to-back runs would not promise.
Step times cover the same work on both sides: fetch the batch, forward/backward over the
micro-batches, clip, optimizer step.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.bench import nanogpt
from dist_llm.callbacks import Callback
from dist_llm.data.sources import train_batches
from dist_llm.distributed import init_distributed
from dist_llm.errors import ConfigError
from dist_llm.launch.preflight import check_training
from dist_llm.metrics.peak import measured_peaks
from dist_llm.models import dense_flops_per_token, flops_per_token
from dist_llm.seeding import derive_seed

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

LOSS_TOLERANCE = 0.02
"""Nats: our final loss counts as equal or better when it is at most nanoGPT's plus this."""
FINAL_STEPS = 10
"""The final loss is the mean over this many last steps (a single step's loss is noisy)."""
GOAL_RATIO = 2.5
"""The issue's target for ours / nanoGPT tokens/s on the tiny preset."""


@dataclass
class PeerRun:
    name: str
    precision: str
    """What the matmuls ran in (nanoGPT on CPU: fp32, since its train.py autocasts only on CUDA)."""
    params: int
    """Unique parameters (a tied embedding counted once)."""
    tokens_per_s: float
    """Median over the steps after warmup; tokens = global batch x seq_len per step."""
    step_ms: float
    """Median over the steps after warmup."""
    final_loss: float
    """Mean training loss of the last FINAL_STEPS steps."""
    losses: list[float]
    """Training loss of every step (mean over its micro-batches)."""
    step_times_ms: list[float]
    """Every step's time, warmup included: how much the machine's load moved them."""
    flops_per_token: float
    """6N + 12LHQT with N the matmul parameters (LM head included, embeddings and positions not)."""
    achieved_tflops: float
    """tokens_per_s x flops_per_token: the model FLOP/s this run sustained."""


@dataclass
class PeerBenchResult:
    ours: PeerRun
    nanogpt: PeerRun
    threads: int
    device: str
    steps: int
    warmup: int
    ratio: float
    """ours / nanoGPT tokens/s (the goal on the tiny preset: >= 2.5)."""
    loss_tolerance: float
    loss_equal_or_better: bool
    """ours.final_loss <= nanogpt.final_loss + loss_tolerance."""
    peaks_tflops: dict[str, float]
    """Best square-matmul TFLOP/s per dtype, measured after the runs on the same threads."""
    goal_tflops: float
    """Model FLOP/s our model would need for GOAL_RATIO x nanoGPT's tokens/s."""
    goal_vs_peak: float
    """goal_tflops / the best measured peak: above 1, the goal is out of this device's reach."""


class NanoGPTPeer(Callback):
    """After each of our optimizer steps, nanoGPT takes its own step on the same global batch."""

    def __init__(self, source: ModuleType) -> None:
        self.source = source
        self.step_s: list[float] = []
        self.losses: list[float] = []
        self.params = 0
        self.flops_per_token = 0.0

    def on_train_start(self, trainer: "Trainer") -> None:
        cfg, device = trainer.cfg, trainer.world.device
        gpt_cfg = self.source.GPTConfig(
            block_size=cfg.data.seq_len,
            vocab_size=cfg.model.vocab_size,
            n_layer=cfg.model.n_layers,
            n_head=cfg.model.n_heads,
            n_embd=cfg.model.d_model,
            dropout=0.0,
            bias=False,
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(cfg.train.seed, "init"))
            self.model = self.source.GPT(gpt_cfg).to(device)
        self.params = sum(p.numel() for p in self.model.parameters())
        # The same 6N + 12LHQT count as ours, N = the Linear weights (the tied head once): token
        # and position tables are lookups, and a user's checkout may name its modules otherwise.
        matmul_params = sum(m.weight.numel() for m in self.model.modules() if isinstance(m, torch.nn.Linear))
        self.flops_per_token = dense_flops_per_token(
            matmul_params, cfg.model.n_layers, cfg.model.d_model, cfg.data.seq_len
        )
        o = cfg.optim
        self.optimizer = self.model.configure_optimizers(
            o.weight_decay, o.lr, (o.beta1, o.beta2), device.type
        )
        self.batches = train_batches(cfg, trainer.data, 0, 1)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        cfg = trainer.cfg
        start = time.perf_counter()
        micro_batches = self.batches.next_step()
        lr = nanogpt.get_lr(
            trainer.step - 1,
            cfg.optim.lr,
            cfg.optim.lr * cfg.optim.min_lr_ratio,
            cfg.optim.warmup_steps,
            cfg.train.max_steps,
        )
        loss = nanogpt.train_step(
            self.model, self.optimizer, micro_batches, lr, cfg.optim.grad_clip, trainer.world.device
        )
        self.step_s.append(time.perf_counter() - start)
        self.losses.append(loss)


def _peer_run(
    name: str,
    precision: str,
    params: int,
    flops: float,
    tokens: int,
    step_s: list[float],
    losses: list[float],
    warmup: int,
) -> PeerRun:
    median_s = statistics.median(step_s[warmup:])
    return PeerRun(
        name=name,
        precision=precision,
        params=params,
        tokens_per_s=tokens / median_s,
        step_ms=1e3 * median_s,
        final_loss=statistics.fmean(losses[-FINAL_STEPS:]),
        losses=losses,
        step_times_ms=[1e3 * s for s in step_s],
        flops_per_token=flops,
        achieved_tflops=tokens / median_s * flops / 1e12,
    )


def bench_peer(
    config: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    precision: str = "fp32",
    threads: int | None = None,
    nanogpt_dir: str | None = None,
) -> PeerBenchResult:
    """Train ours and nanoGPT for `steps` steps side by side on `threads` threads (default: every
    usable core) and compare tokens/s and loss."""
    from dist_llm.trainer import Trainer  # imports every engine: only when a benchmark runs

    if warmup >= steps:
        raise ConfigError(f"--warmup {warmup} must be below --steps {steps}")
    threads = threads or len(os.sched_getaffinity(0))
    source = nanogpt.load_checkout(nanogpt_dir) if nanogpt_dir else nanogpt
    peer = NanoGPTPeer(source)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = check_training(
                config,
                [
                    *overrides,
                    f"train.precision={precision}",
                    "launch.nproc_per_node=1",
                    f"train.max_steps={steps}",
                    "train.exit_at_step=0",
                    "train.log_interval=1",
                    "train.eval_interval=0",
                    "eval.tasks=[]",
                    "train.eval_batches=1",
                    "checkpoint.interval=0",
                    "checkpoint.resume=none",
                    f"checkpoint.dir={tmp}/checkpoints",
                    f"logging.run_dir={tmp}",
                    "logging.wandb.enabled=false",
                    "logging.tensorboard.enabled=false",
                ],
                1,
            )
            trainer = Trainer(cfg, init_distributed(cfg.engine.backend), callbacks=[peer])
            records = [r for r in trainer.fit() if "tokens_per_s" in r]
        # Measured here, on the same threads: the ceiling both sides' matmuls share.
        peaks = measured_peaks(trainer.world.device, cfg.train.precision)
    finally:
        torch.set_num_threads(previous_threads)
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    device = trainer.world.device
    ours_params = sum(p.numel() for p in trainer.engine.model.parameters())
    ours = _peer_run(
        "dist_llm",
        cfg.train.precision,
        ours_params,
        flops_per_token(cfg.model, cfg.data.seq_len),
        tokens,
        [r["step_time_s"] for r in records],
        [r["loss"] for r in records],
        warmup,
    )
    theirs = _peer_run(
        f"nanoGPT ({nanogpt_dir or 'built-in'})",
        "fp32" if device.type == "cpu" else "bf16 autocast",
        peer.params,
        peer.flops_per_token,
        tokens,
        peer.step_s,
        peer.losses,
        warmup,
    )
    goal = GOAL_RATIO * theirs.tokens_per_s * ours.flops_per_token / 1e12
    return PeerBenchResult(
        ours=ours,
        nanogpt=theirs,
        threads=threads,
        device=str(device),
        steps=steps,
        warmup=warmup,
        ratio=ours.tokens_per_s / theirs.tokens_per_s,
        loss_tolerance=LOSS_TOLERANCE,
        loss_equal_or_better=ours.final_loss <= theirs.final_loss + LOSS_TOLERANCE,
        peaks_tflops=peaks,
        goal_tflops=goal,
        goal_vs_peak=goal / max(peaks.values()),
    )


def _loss_steps(steps: int) -> list[int]:
    """A few 1-based steps to show losses at: first, quarters, last."""
    return sorted({1, *(max(1, round(steps * q)) for q in (0.25, 0.5, 0.75)), steps})


def format_table(results: list[PeerBenchResult]) -> str:
    lines = []
    for r in results:
        shown = _loss_steps(r.steps)
        lines += [
            f"device {r.device}, {r.threads} threads for both, {r.steps} steps (medians over steps "
            f"{r.warmup + 1}..{r.steps}); nanoGPT as its train.py runs it: bias=False, dropout 0, "
            "no torch.compile (its CPU instructions)",
            "run | precision | params | tokens/s | ms/step | model GFLOP/s | "
            + " | ".join(f"loss@{s}" for s in shown)
            + f" | final loss (mean last {min(FINAL_STEPS, r.steps)})",
            "---|---|---|---|---|---|" + "---|" * len(shown) + "---",
        ]
        for run in (r.ours, r.nanogpt):
            lines.append(
                f"{run.name} | {run.precision} | {run.params:,} | {run.tokens_per_s:,.0f} | "
                f"{run.step_ms:.1f} | {1e3 * run.achieved_tflops:,.1f} | "
                + " | ".join(f"{run.losses[s - 1]:.4f}" for s in shown)
                + f" | {run.final_loss:.4f}"
            )
        verdict = "yes" if r.loss_equal_or_better else "no"
        peaks = ", ".join(f"{name} {1e3 * v:,.1f}" for name, v in sorted(r.peaks_tflops.items()))
        reach = (
            "out of reach on this device: it exceeds the best matmul peak"
            if r.goal_vs_peak > 1
            else "within the best matmul peak"
        )
        lines += [
            f"ours / nanoGPT tokens/s: {r.ratio:.2f}x (goal >= {GOAL_RATIO}x); ours per step "
            f"{r.ours.step_ms:.1f} ms vs {r.nanogpt.step_ms:.1f} ms",
            f"loss per step equal or better (ours final <= nanoGPT final + {r.loss_tolerance} nats): "
            f"{verdict} ({r.ours.final_loss:.4f} vs {r.nanogpt.final_loss:.4f})",
            f"matmul peak measured here, GFLOP/s on {r.threads} threads: {peaks}; "
            f"{GOAL_RATIO}x nanoGPT needs {1e3 * r.goal_tflops:,.1f} GFLOP/s of model FLOPs = "
            f"{r.goal_vs_peak:.2f}x that peak, {reach}",
        ]
    return "\n".join(lines)
