"""Everything `dist-llm train` checks before it spawns a rank, shared by every way of launching a
run (train, launch, slurm submit): a bad key, a missing dataset or an impossible layout fails here
in one process with a clear message, not in N ranks or an hour later in a scheduler queue."""

from __future__ import annotations

import copy

from dist_llm.config import Config, load_config


def check_training(
    config: str, overrides: list[str], world_size: int | None = None, check_fit: bool = False
) -> Config:
    """The loaded and validated config for `world_size` ranks (default: launch.nproc_per_node x
    launch.nnodes); raises ConfigError/DataError naming the file, line or override at fault.
    `check_fit` (before spawning on the node that runs the ranks): also refuse a layout the planner
    predicts does not fit this node's devices (`launch.check_fit=false` skips it)."""
    from dist_llm.data.sources import check_sources
    from dist_llm.pretrained import check_pretrained
    from dist_llm.tasks.files import check_task_files

    cfg = load_config(config, overrides)
    cfg.validate(world_size=world_size, origin=config)
    world = world_size or cfg.launch.nproc_per_node * cfg.launch.nnodes
    if cfg.engine.type == "deepspeed":  # imports deepspeed (~5 s), so only when it is used
        from dist_llm.engine.deepspeed_config import validate_deepspeed_config

        validate_deepspeed_config(cfg, world)
    # Missing datasets, mixed tokenizers, too-short splits fail here, not in N spawned ranks.
    check_sources(cfg.data)
    # A malformed task file fails here naming its line, not in every rank after the model is built.
    check_task_files(cfg.eval, cfg.data.source_list()[0].path)
    for key, path in (("model.init_from", cfg.model.init_from), ("distill.teacher", cfg.distill.teacher)):
        if path:
            check_pretrained(path, key)
    if check_fit:
        from dist_llm.plan.fit import check_fit as check_memory

        check_memory(copy.deepcopy(cfg), world, cfg.launch.nproc_per_node)
    return cfg
