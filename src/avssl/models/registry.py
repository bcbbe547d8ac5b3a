"""A small tower registry: ``register_model(name)(factory)``, ``create_model(name, **overrides)``, ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``factory`` (called with keyword overrides) under ``name``; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered tower ``name``; ``overrides`` replace the preset's constructor arguments.

    Example: ``create_model("tsm-resnet18-tiny", input_size=112, width=0.5)``.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)


def list_models() -> list[str]:
    """Names of every registered tower, sorted."""
    return sorted(_REGISTRY)
