"""`dist-llm <command>`: thin argument parsing over the library. Errors print as one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys

from dist_llm.errors import DistLLMError


def _add_prep(sub: argparse._SubParsersAction) -> None:
    from data_prep.cli import add_arguments

    p = sub.add_parser(
        "prep",
        help="tokenize a corpus into Arrow shards + manifest (no inputs = the built-in default corpus)",
    )
    add_arguments(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a YAML config (dotted key=value overrides)")
    p.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
    p.add_argument("--resume", help="none | auto | checkpoint path (sets checkpoint.resume)")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help="start this many ranks through torchrun (sets launch.nproc_per_node)",
    )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="validation loss / perplexity of a checkpoint, run directory or "
        "Hugging Face model directory (e.g. an export), any model family",
    )
    p.add_argument("checkpoint", help="run dir, checkpoint root, step directory, or HF model directory")
    p.add_argument(
        "--data", help="dataset dir (default: the one the run trained on; required for an HF directory)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="default: the whole validation split")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("checkpoint", help="run dir, checkpoint root, or step directory")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="dataset dir whose tokenizer to use (default: the run's)")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that report ratios against a same-run baseline")
    kinds = p.add_subparsers(dest="kind", required=True)
    t = kinds.add_parser("train", help="training tokens/s on 1 rank (baseline) vs N ranks")
    t.add_argument("--ranks", default="1,2", help="comma-separated rank counts; the first is the baseline")
    e = kinds.add_parser("engines", help="tokens/s and per-rank memory of each engine, same config")
    e.add_argument(
        "--engines",
        default="dp,fsdp,zero1,zero2,zero3,zero3-offload,tp2,pp2",
        help="comma-separated; the first is the baseline",
    )
    e.add_argument("--ranks-per-variant", type=int, default=2)
    for k in (t, e):
        k.add_argument("--config", default="configs/tiny.yaml", help="the config every variant starts from")
        k.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
        k.add_argument("--steps", type=int, default=30)
        k.add_argument("--warmup", type=int, default=5, help="leading steps left out of the medians")
        k.add_argument("--json", help="also write the results to this JSON file")
    pr = kinds.add_parser(
        "prep", help="prep docs/s and tokens/s per worker count vs the bare tokenizer, and peak memory"
    )
    pr.add_argument("--mb", type=float, default=32.0, help="size of the generated JSONL corpus")
    pr.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    pr.add_argument("--tokenizer", help="tokenizer to use (default: train one on the default corpus)")
    pr.add_argument("--unit-mb", type=float, default=0.0, help="prep --unit-mb (0 = automatic)")
    pr.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the bare tokenizer (it holds all text in memory): for multi-GB memory runs",
    )
    pr.add_argument("--work-dir", help="keep the corpus and outputs here (default: a temp dir, removed)")
    pr.add_argument("--json", help="also write the results to this JSON file")
    dd = kinds.add_parser(
        "dedup", help="peak memory of prep's merge (exact dedup) as the document count grows"
    )
    dd.add_argument("--docs", default="100000,1000000", help="comma-separated document counts")
    dd.add_argument(
        "--piece-keys", default="65536,2097152", help="comma-separated --dedup-piece-keys to merge with"
    )
    dd.add_argument("--workers", type=int, default=2, help="prep workers (the merge measured runs one)")
    dd.add_argument("--unit-mb", type=float, default=1.0, help="prep --unit-mb, the same for every corpus")
    ld = kinds.add_parser("long-doc", help="peak memory of prep on one single-line document")
    ld.add_argument("--mb", type=float, default=100.0, help="size of the document")
    for k in (dd, ld):
        k.add_argument("--tokenizer", help="tokenizer to use (default: train one on the default corpus)")
        k.add_argument("--work-dir", help="keep the corpora and outputs here (default: a temp dir, removed)")
        k.add_argument("--json", help="also write the results to this JSON file")
    ds = kinds.add_parser(
        "data-scale",
        help="a training rank's data start-up on a synthetic manifest of the given size (no token "
        "data): memory, start, resume at a random step, next global batch's ids and shard ranges",
    )
    ds.add_argument("--tokens", default="1e9,1e11,1e13", help="comma-separated dataset sizes in tokens")
    ds.add_argument("--shards", default="1000000", help="comma-separated shard counts (both splits)")
    ds.add_argument("--seq-len", type=int, default=4096, help="data.seq_len")
    ds.add_argument("--world", type=int, default=512, help="data-parallel ranks")
    ds.add_argument("--global-batch", type=int, default=1024, help="sequences per optimizer step")
    ds.add_argument("--ranks", help="comma-separated ranks to measure (default: the first and the last)")
    ds.add_argument("--config", default="configs/tiny.yaml", help="training config for the other data keys")
    ds.add_argument("--seed", type=int, default=0, help="seeds the shard sizes and the resume steps")
    ds.add_argument("--work-dir", help="put each manifest here, removed once measured (default: a temp dir)")
    ds.add_argument("--json", help="also write the results to this JSON file")
    c = kinds.add_parser(
        "checkpoint",
        help="training time blocked per checkpoint (async vs synchronous "
        "save) and upload MB/s (our writer vs a plain put)",
    )
    c.add_argument("--uri", help="destination: local path or s3://bucket/prefix (default: a local temp dir)")
    c.add_argument("--size-mb", type=float, default=100.0, help="checkpoint size (weights + AdamW state)")
    c.add_argument("--repeats", type=int, default=3, help="saves per variant; medians are reported")
    c.add_argument("--json", help="also write the results to this JSON file")
    d = kinds.add_parser(
        "dataloader",
        help="ms per step spent getting the batch, alone and in a real "
        "training run, as a share of the step time (local, or s3), and bytes "
        "fetched from object storage per trained token",
    )
    d.add_argument("--config", default="configs/tiny.yaml", help="the training config to measure")
    d.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    d.add_argument(
        "--uri",
        action="append",
        default=[],
        help="also measure a copy of the dataset here, e.g. s3://bucket/data (repeatable)",
    )
    d.add_argument(
        "--s3",
        action="store_true",
        help="also start a local SeaweedFS (the `weed` binary) and measure the dataset uploaded there, "
        "read by byte range and, as the baseline, as whole shards (the format before range reads)",
    )
    d.add_argument("--steps", type=int, default=40)
    d.add_argument("--warmup", type=int, default=5, help="leading steps left out of the medians")
    d.add_argument("--json", help="also write the results to this JSON file")
    pe = kinds.add_parser(
        "peer",
        help="our training vs nanoGPT's on the same model size, batches and "
        "threads, step by step in one process: tokens/s ratio and loss",
    )
    pe.add_argument("--config", default="configs/tiny.yaml", help="the training config both follow")
    pe.add_argument("overrides", nargs="*", help="dotted overrides of the config")
    pe.add_argument("--steps", type=int, default=30, help="optimizer steps, for both")
    pe.add_argument("--warmup", type=int, default=5, help="leading steps left out of the medians")
    pe.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "auto", "bf16"],
        help="our train.precision (nanoGPT on CPU always runs fp32)",
    )
    pe.add_argument("--threads", type=int, help="torch threads for both (default: every usable core)")
    pe.add_argument(
        "--nanogpt-dir",
        help="import model.py (GPT, GPTConfig) from this nanoGPT checkout instead of the built-in one",
    )
    pe.add_argument("--json", help="also write the results to this JSON file")
    m = kinds.add_parser(
        "memory",
        help="per-rank peak host memory by phase (build, train, save, load) of "
        "real N-rank runs, against each rank's share of the training state",
    )
    m.add_argument("--config", default="configs/tiny.yaml", help="training config")
    m.add_argument("--ranks", default="2,4", help="comma-separated rank counts")
    m.add_argument("--steps", type=int, default=2, help="training steps before the save")
    m.add_argument("--work-dir", help="directory for the runs' checkpoints (default: system temp)")
    m.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.d_model=1024")
    m.add_argument("--json", help="also write the results to this JSON file")
    pl = kinds.add_parser(
        "plan",
        help="the planner against real CPU runs: predicted vs measured per-rank peak memory of "
        "each layout, and predicted vs measured tokens/s ranking",
    )
    pl.add_argument("--config", default="configs/tiny.yaml", help="training config")
    pl.add_argument(
        "--layouts", default="fsdp2,tp2,pp2", help="comma-separated: fsdp2, tp2, pp2, fsdp4, tp2-fsdp2"
    )
    pl.add_argument("--steps", type=int, default=4, help="training steps per run")
    pl.add_argument("--work-dir", help="directory for the runs (default: system temp)")
    pl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.d_model=1024")
    pl.add_argument("--json", help="also write the results to this JSON file")
    dr = kinds.add_parser(
        "dry-run",
        help="a real-scale layout on meta tensors with a fake process group: "
        "each rank's bytes of parameters, gradients, optimizer state and "
        "checkpoint shard, from the engine's own sharding code",
    )
    dr.add_argument("--model", default="70b", help="model preset name or YAML file")
    dr.add_argument("--world", type=int, default=512, help="ranks (GPUs) to lay out")
    dr.add_argument(
        "--ranks",
        default="corners",
        help="'corners' (first, middle and last rank of each "
        "pipeline stage), 'all', or comma-separated ranks",
    )
    dr.add_argument("overrides", nargs="*", help="engine/train keys, e.g. engine.tp=8 engine.pp=4")
    dr.add_argument("--json", help="also write the results to this JSON file")


def _run_bench(args: argparse.Namespace):
    """(the bench module, its results) for `dist-llm bench KIND`."""
    if args.kind == "dataloader":
        from dist_llm.bench import dataloader

        return dataloader, dataloader.bench_dataloader(
            args.config, args.overrides, args.uri, args.steps, args.warmup, args.s3
        )
    if args.kind == "prep":
        from dist_llm.bench import prep

        return prep, prep.bench_prep(
            args.mb,
            [int(w) for w in args.workers.split(",")],
            args.tokenizer,
            args.work_dir,
            args.unit_mb,
            baseline=not args.no_baseline,
        )
    if args.kind == "dedup":
        from dist_llm.bench import prep_scale

        return prep_scale, prep_scale.bench_dedup(
            [int(d) for d in args.docs.split(",")],
            [int(k) for k in args.piece_keys.split(",")],
            args.workers,
            args.tokenizer,
            args.work_dir,
            args.unit_mb,
        )
    if args.kind == "long-doc":
        from dist_llm.bench import prep_scale

        return prep_scale, prep_scale.bench_long_doc(args.mb, args.tokenizer, args.work_dir)
    if args.kind == "data-scale":
        from dist_llm.bench import data_scale

        return data_scale, data_scale.bench_data_scale(
            [int(float(t)) for t in args.tokens.split(",")],
            [int(float(n)) for n in args.shards.split(",")],
            args.seq_len,
            args.world,
            args.global_batch,
            [int(r) for r in args.ranks.split(",")] if args.ranks else None,
            args.config,
            args.work_dir,
            args.seed,
        )
    if args.kind == "checkpoint":
        from dist_llm.bench import checkpoint

        return checkpoint, [checkpoint.bench_checkpoint(args.uri, args.size_mb, args.repeats)]
    if args.kind == "memory":
        from dist_llm.bench import memory

        return memory, memory.bench_memory(
            args.config, args.overrides, [int(r) for r in args.ranks.split(",")], args.steps, args.work_dir
        )
    if args.kind == "plan":
        from dist_llm.bench import plan

        return plan, plan.bench_plan(
            args.config,
            args.overrides,
            args.layouts.split(","),
            args.steps,
            args.work_dir,
        )
    if args.kind == "dry-run":
        from dist_llm.bench import dry_run

        ranks = (
            None
            if args.ranks == "corners"
            else list(range(args.world))
            if args.ranks == "all"
            else [int(r) for r in args.ranks.split(",")]
        )
        return dry_run, [dry_run.dry_run(args.model, args.overrides, args.world, ranks)]
    if args.kind == "peer":
        from dist_llm.bench import peer

        return peer, [
            peer.bench_peer(
                args.config,
                args.overrides,
                args.steps,
                args.warmup,
                args.precision,
                args.threads,
                args.nanogpt_dir,
            )
        ]
    from dist_llm.bench import train

    if args.kind == "train":
        variants = train.rank_variants([int(r) for r in args.ranks.split(",")])
    else:
        variants = train.engine_variants(args.engines.split(","), args.ranks_per_variant)
    return train, train.bench_variants(args.config, args.overrides, variants, args.steps, args.warmup)


def _bench(args: argparse.Namespace) -> int:
    module, results = _run_bench(args)
    print(module.format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a checkpoint of any engine as consolidated safetensors or a Hugging Face model directory",
    )
    p.add_argument("checkpoint", help="run dir, checkpoint root, or step directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        choices=["safetensors", "hf"],
        default="safetensors",
        help="safetensors: our weights + config; hf: a transformers directory with tokenizer "
        "(LlamaForCausalLM, BertForPreTraining or T5ForConditionalGeneration by family)",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--max-shard-gb",
        type=float,
        default=5.0,
        help="largest safetensors file; bigger models are written as shards plus an index, "
        "as transformers does (peak memory: about one shard)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="(--format hf) dataset whose tokenizer to export; default: the run's training data",
    )


def _export(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from dist_llm.interop import export_hf

        print(export_hf(args.checkpoint, args.out, args.dtype, args.data, int(args.max_shard_gb * 1e9)))
        return 0
    from dist_llm.export import export_safetensors

    print(export_safetensors(args.checkpoint, args.out, args.dtype, int(args.max_shard_gb * 1e9)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dist_llm.config import dump_config
    from dist_llm.launch.preflight import check_training
    from dist_llm.launch.torchrun import in_torchrun, torchrun_command

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    if args.nproc_per_node:
        overrides.append(f"launch.nproc_per_node={args.nproc_per_node}")
    if in_torchrun():
        cfg = check_training(args.config, overrides, int(os.environ["WORLD_SIZE"]))
    else:  # before any rank is spawned: also the memory fit of the layout
        cfg = check_training(args.config, overrides, check_fit=True)
    if not in_torchrun() and cfg.launch.nproc_per_node > 1:
        argv = ["train", args.config, *overrides]
        return subprocess.call(torchrun_command(argv, cfg.launch.nproc_per_node))

    from dist_llm.callbacks.signals import EXIT_PREEMPTED
    from dist_llm.distributed import init_distributed, shutdown
    from dist_llm.trainer import Trainer

    dist_world = init_distributed(cfg.engine.backend)
    trainer = Trainer(cfg, dist_world)
    if dist_world.is_main:
        os.makedirs(cfg.logging.run_dir, exist_ok=True)
        with open(os.path.join(cfg.logging.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(dump_config(cfg))
    trainer.fit()
    # Only after success: on an error the ranks are not in step and torchrun tears the job down.
    shutdown()
    return EXIT_PREEMPTED if trainer.stop_requested else 0


def _eval(args: argparse.Namespace) -> int:
    from dist_llm.evaluate import evaluate_perplexity, load_trained_model

    result = evaluate_perplexity(
        load_trained_model(args.checkpoint), args.data, args.batch_size, args.max_batches
    )
    print(json.dumps(result))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from data_prep.tokenizer import load_tokenizer
    from dist_llm.data.sources import tokenizer_path
    from dist_llm.evaluate import load_trained_model
    from dist_llm.models import generate

    loaded = load_trained_model(args.checkpoint)
    tok = load_tokenizer(tokenizer_path(args.data or loaded.cfg.data.source_list()[0].path))
    # Training streams separate documents with EOS, so "after an EOS" is where a document starts.
    ids = [tok.eos_id, *tok.encode(args.prompt)]
    out = generate(
        loaded.model,
        torch.tensor([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=tok.eos_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    print(tok.decode(out[0, 1:].tolist()))
    return 0


def _prep(args: argparse.Namespace) -> int:
    from data_prep.cli import run

    return run(args)


def _delegated(module: str):
    """(add, run) for a command whose parser and body live in `module` (its add_parser(sub) and
    run(args)); imported only when that command is parsed or run, so `dist-llm --help` stays fast."""

    def add(sub: argparse._SubParsersAction) -> None:
        importlib.import_module(module).add_parser(sub)

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    return add, run


COMMANDS = {
    "prep": (_add_prep, _prep),
    "train": (_add_train, _train),
    "eval": (_add_eval, _eval),
    "generate": (_add_generate, _generate),
    "bench": (_add_bench, _bench),
    "export": (_add_export, _export),
    "finetune": _delegated("dist_llm.finetune.cli"),
    "launch": _delegated("dist_llm.launch.cli"),
    "plan": _delegated("dist_llm.plan.cli"),
    "slurm": _delegated("dist_llm.launch.slurm_cli"),
    "env": _delegated("dist_llm.envinfo.cli"),
    "report": _delegated("dist_llm.report.cli"),
    "tasks": _delegated("dist_llm.tasks.cli"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --resume auto a.b=1`), which argparse's
    # positional handling does not accept in one pass; collect the stragglers explicitly.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return COMMANDS[args.command][1](args)
    except DistLLMError as e:
        print(f"dist-llm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
