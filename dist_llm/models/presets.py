"""Model size presets: the YAML files in the repo's top-level `configs/models/`.

`configs/` is not inside the `dist_llm` package (users edit it and point runs at it), so
importlib.resources cannot find it; it is resolved relative to the package's parent directory,
which works for the editable install the project uses. `python -m dist_llm.models.presets`
prints the table.
"""

import dataclasses
from pathlib import Path

import yaml

import dist_llm
from dist_llm.errors import ConfigError
from dist_llm.models import count_params
from dist_llm.models.config import ModelConfig


def presets_dir() -> Path:
    """The `configs/models/` directory next to the `dist_llm` package."""
    path = Path(dist_llm.__file__).resolve().parent.parent / "configs" / "models"
    if not path.is_dir():
        raise ConfigError(
            f"model presets directory {path} not found; presets ship with the source tree, so "
            "install dist_llm from a checkout (pip install -e .) or pass a YAML path instead"
        )
    return path


def list_presets() -> dict[str, str]:
    """Preset name (file stem, e.g. "125m") -> YAML path, sorted by name."""
    return {p.stem: str(p) for p in sorted(presets_dir().glob("*.yaml"))}


def load_preset(name_or_path: str) -> ModelConfig:
    """ModelConfig from a preset name or a YAML file with a `model:` mapping; validated."""
    presets = list_presets()
    path = presets.get(name_or_path, name_or_path)
    if not Path(path).is_file():
        raise ConfigError(f"model preset {name_or_path!r} not found; known presets: {sorted(presets)}")
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    section = doc.get("model")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a top-level 'model:' mapping")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in section:
        if key not in known:
            raise ConfigError(f"{path}: unknown key model.{key}; known keys: {sorted(known)}")
    cfg = ModelConfig(**section)
    cfg.validate()
    return cfg


def preset_table() -> list[tuple[str, int, int]]:
    """(name, params, non_embedding_params) per preset, smallest first. A preset with
    vocab_size 0 (vocab from the tokenizer) reports its non-embedding count as params."""
    rows = []
    for name in list_presets():
        cfg = load_preset(name)
        rows.append((name, count_params(cfg), count_params(cfg, non_embedding=True)))
    return sorted(rows, key=lambda row: row[1])


if __name__ == "__main__":
    print(f"{'preset':<8} {'params':>16} {'non-embedding':>16}")
    for preset, params, non_embedding in preset_table():
        print(f"{preset:<8} {params:>16,} {non_embedding:>16,}")
