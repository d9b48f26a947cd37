"""From `DataConfig` to opened sources: manifests checked against each other, splits mapped or cached.

`check_sources` reads only the manifests (a JSON header and a columnar shard table each, local or
remote), so the launcher can run it before any rank is spawned; `open_sources` then opens the splits
in each rank. Remote data goes through one `DataCache` per process (`data_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_prep import store
from data_prep.manifest import Manifest, read_header, read_manifest
from dist_llm.config import Config, DataConfig, SourceConfig
from dist_llm.data.batch import Collator
from dist_llm.data.cache import DataCache
from dist_llm.data.collate import build_collator
from dist_llm.data.loader import TrainBatches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from dist_llm.seeding import derive_seed
from dist_llm.uri import join

SPLITS = ("train", "validation")


def _label(source: SourceConfig) -> str:
    return f"data.sources {source.name!r} ({source.path})" if source.name else f"data.path {source.path}"


def data_cache(cfg: DataConfig) -> DataCache:
    """The node's cache of remote data as configured (`data.cache_dir`, `data.cache_max_gb`,
    `data.download_workers`)."""
    return DataCache(cfg.cache_dir, int(cfg.cache_max_gb * 1e9), cfg.download_workers)


def check_sources(cfg: DataConfig, cache: DataCache | None = None) -> tuple[list[Manifest], Collator]:
    """Every source's manifest (in config order) and the objective's collator (built from the shared
    tokenizer's ids), after checking that all share one tokenizer and that each split holds at least
    one sample of `data.seq_len`. Raises DataError naming paths."""
    sources = cfg.source_list()
    cache = cache or data_cache(cfg)
    manifests = [read_manifest(s.path, cache) for s in sources]
    first, first_sha = sources[0], manifests[0].tokenizer["sha256"]
    collator = build_collator(cfg, manifests[0].tokenizer)
    window = collator.window(cfg.seq_len)
    for source, manifest in zip(sources, manifests):
        if manifest.tokenizer["sha256"] != first_sha:
            raise DataError(
                f"{source.path} and {first.path} were tokenized with different tokenizers "
                f"(sha256 {manifest.tokenizer['sha256'][:12]}... vs "
                f"{first_sha[:12]}...); a mixture needs one token "
                "vocabulary: re-run `dist-llm prep --tokenizer <one tokenizer>` for "
                f"{source.path}"
            )
        for split in SPLITS:
            tokens = manifest.header["splits"][split]["tokens"]
            if tokens < window.length:
                raise DataError(
                    f"{_label(source)}: split {split!r} has {tokens} tokens, fewer than one "
                    f"sample of data.seq_len={cfg.seq_len} needs ({window.length}); lower "
                    "data.seq_len or add data"
                )
    return manifests, collator


def open_sources(
    cfg: DataConfig,
    collator: Collator,
    split: str,
    cache: DataCache | None = None,
    manifests: list[Manifest] | None = None,
) -> list[Source]:
    """One `Source` per configured source over `split`; remote data is read through `cache`."""
    configs = cfg.source_list()
    cache = cache or data_cache(cfg)
    manifests = manifests or [read_manifest(s.path, cache) for s in configs]
    window = collator.window(cfg.seq_len)
    return [
        Source(
            name=s.name,
            weight=s.weight,
            samples=PackedSamples(
                TokenShards(s.path, split, manifest, cache, cfg.max_open_shards),
                cfg.seq_len,
                window,
            ),
        )
        for s, manifest in zip(configs, manifests)
    ]


@dataclass
class TrainingData:
    """What a training process reads: both splits of every source and the one data cache."""

    train: list[Source]
    validation: list[Source]
    manifest: Manifest
    """The first source's manifest (all sources share its tokenizer)."""
    collator: Collator
    cache: DataCache

    def close(self) -> None:
        self.cache.close()


def open_training_data(cfg: DataConfig) -> TrainingData:
    cache = data_cache(cfg)
    manifests, collator = check_sources(cfg, cache)
    return TrainingData(
        train=open_sources(cfg, collator, "train", cache, manifests),
        validation=open_sources(cfg, collator, "validation", cache, manifests),
        manifest=manifests[0],
        collator=collator,
        cache=cache,
    )


def train_batches(cfg: Config, data: TrainingData, dp_rank: int, dp: int) -> TrainBatches:
    """The loader of data-parallel rank `dp_rank` of `dp`, as the trainer (and its benchmark) runs it."""
    t = cfg.train
    return TrainBatches(
        data.train,
        data.collator,
        derive_seed(t.seed, "data"),
        t.global_batch_size,
        t.micro_batch_size,
        dp_rank,
        dp,
        cfg.data.prefetch_steps,
        t.max_steps * t.global_batch_size,
    )


def tokenizer_path(data_path: str) -> str:
    """A local path of the dataset's tokenizer (downloaded to a temp dir if the data is remote)."""
    return store.local_copy(join(data_path, read_header(data_path)["tokenizer"]["path"]))
