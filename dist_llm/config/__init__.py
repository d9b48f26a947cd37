"""The one typed config tree: model / data / optim / train / eval / engine / checkpoint / logging / launch.

`sections` holds the sections (each validates itself), `tree` the root `Config` (checks across
sections), `loader` the YAML loading (a file may name `base:` files it extends, dotted `key=value`
overrides), all run before any process is spawned.
"""

from dist_llm.config.loader import config_from_dict, dump_config, load_config
from dist_llm.config.sections import (
    OBJECTIVES,
    CheckpointConfig,
    DataConfig,
    DistillConfig,
    EngineConfig,
    EvalConfig,
    LaunchConfig,
    LoggingConfig,
    OptimConfig,
    SourceConfig,
    TensorBoardConfig,
    TrainConfig,
    WandbConfig,
)
from dist_llm.config.tree import Config

__all__ = [
    "OBJECTIVES",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EngineConfig",
    "EvalConfig",
    "LaunchConfig",
    "LoggingConfig",
    "OptimConfig",
    "SourceConfig",
    "TensorBoardConfig",
    "TrainConfig",
    "WandbConfig",
    "config_from_dict",
    "dump_config",
    "load_config",
]
