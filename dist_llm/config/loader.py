"""Loading the config tree: YAML with line numbers, `base:` inheritance, dotted `key=value` overrides,
strict typing. Cross-field checks are `Config.validate`; every error names the file, line and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Literal

import yaml

from dist_llm.config.tree import Config
from dist_llm.errors import ConfigError


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
    """A list of sections (each item built like a section, its keys named `key[i].field`) or of
    plain values (each item type-checked)."""
    if not dataclasses.is_dataclass(item_cls):
        if not isinstance(value, list):
            raise ConfigError(
                f"{where}: {dotted} must be a list, e.g. {dotted}=[a, b] or one item per line "
                f"as `- a` in YAML; got {value!r}"
            )
        return [_check_type(item, item_cls, f"{dotted}[{i}]", where) for i, item in enumerate(value)]
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
