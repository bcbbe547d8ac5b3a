"""Config values from text: ``--set section.key=value`` strings -> nested dicts, and values coerced to the
types the config dataclasses annotate (:mod:`avssl.config` owns the dataclasses and applies both)."""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the message names it and what is valid."""


def coerce(where: str, tp: Any, value: Any) -> Any:
    """Coerce ``value`` (as YAML parsed it) to the annotated type ``tp`` or raise :class:`ConfigError` naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(f"{where}[{i}]", item, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): coerce(f"{where}.{k}", vt, v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in configs")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"model.width": 0.5, "train.seed": 1}`` -> ``{"model": {"width": 0.5}, "train": {"seed": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).strip().split(".")
        if not all(parts):
            raise ConfigError(f"config key {key!r} is malformed; use section.key")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["model.width=0.5", "loss.pairs=[spec-wave]"]`` -> nested dict (values parsed as YAML)."""
    flat: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        flat[key] = yaml.safe_load(raw) if raw.strip() else ""
    return nest(flat)
