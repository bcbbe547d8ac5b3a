"""Planning a sweep: recipes, ``--grid`` axes, the cells they expand to, and the keys that identify
cells and pretraining runs (:mod:`avssl.sweep.run` runs them)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avssl.evaluate.baselines import BASELINES
from avssl.config import PRESET_DIR, Config, ConfigError, apply_overrides
from avssl.overrides import nest

RECIPE_DIR = PRESET_DIR / "recipes"


@dataclass
class Cell:
    """One unit of work: a training cell (``kind="train"``) or a baseline (``kind="baseline"``)."""

    name: str  # the variant's name (shared by its seeds)
    kind: str
    seed: int
    cfg: Config
    overrides: dict[str, Any] = field(default_factory=dict)
    model: str = ""  # baselines: logmel-stats | mfcc-stats | random-init
    data: str = ""  # training cells: the shards they pretrain on (part of the key: other data, other cell)

    @property
    def key(self) -> str:
        body = {"kind": self.kind, "model": self.model, "seed": self.seed, "config": _identity(self.cfg)}
        return _hash({**body, "data": self.data} if self.data else body)


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _identity(cfg: Config) -> dict[str, Any]:
    """The resolved config less ``finetune`` (which no cell reads), the validation settings ``data.val`` and
    ``train.val_every`` and the kept snapshots ``train.keep_every`` (they change what is measured or kept during
    pretraining, never the trained weights), so keys stay those of sweeps made before them and a finished run is
    reused whatever its validation."""
    d = cfg.to_dict()
    d.pop("finetune")
    d["data"].pop("val")
    for key in ("val_every", "keep_every"):
        d["train"].pop(key)
    return d


def train_key(cfg: Config, data: str) -> str:
    """The pretraining run's identity: the resolved config less ``embed`` (inference only), and the data."""
    d = _identity(cfg)
    d.pop("embed")
    return _hash({"config": d, "data": data})


# ------------------------------------------------------------------------------------ the grid


def split_values(text: str) -> list[Any]:
    """``"16,32,[a,b]"`` -> ``[16, 32, ["a", "b"]]``: commas inside brackets do not split; each value is YAML."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [yaml.safe_load(p) if p.strip() else "" for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["video.size=16,32", "augment.mix=none,mixup"]`` -> ``{"video.size": [16, 32], ...}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects section.key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        grid[key.strip()] = split_values(values)
    return grid


def _label(flat: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in flat.items()) or "base"


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe by name (``modality``, ``resolution``, ``batch-mixing``) or a YAML path.

    Keys: ``description``, ``set`` (flat ``section.key: value`` overrides of the base), ``cells``
    (a list of ``{name, set}``), ``grid`` (``section.key: [values]``). Unknown keys are an error.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise ConfigError(f"no recipe {name_or_path!r}; recipes: {', '.join(names)}, or a path to a .yaml file")
    recipe = yaml.safe_load(path.read_text()) or {}
    unknown = set(recipe) - {"description", "set", "cells", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {sorted(unknown)}; valid: description, set, cells, grid")
    return recipe


def expand(base: Config, recipe: dict[str, Any], grid: dict[str, list[Any]], seeds: int) -> list[tuple[str, dict]]:
    """The variants as ``(name, flat overrides)``: recipe cells x (recipe grid + ``--grid``) products."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    named = [(c["name"], dict(c.get("set", {}))) for c in recipe.get("cells", [])] or [("", {})]
    full_grid = {**recipe.get("grid", {}), **grid}
    keys = list(full_grid)
    variants = []
    for name, over in named:
        for values in itertools.product(*(full_grid[k] for k in keys)):
            flat = {**over, **dict(zip(keys, values))}
            grid_part = _label(dict(zip(keys, values))) if keys else ""
            label = "; ".join(x for x in (name, grid_part) if x) or "base"
            apply_overrides(base, nest(flat))  # fail now, naming the key, not after hours of training
            variants.append((label, flat))
    return variants


def plan(base: Config, variants: list[tuple[str, dict]], seeds: int, data: str = "") -> list[Cell]:
    """The cells, seed by seed so that a partial sweep already covers every variant: ``logmel-stats`` and
    ``mfcc-stats`` first, then for each seed a random-init of every distinct evaluated architecture
    among the variants (:func:`_audio_arch`) and the training cells (variant x seed)."""
    cells = [Cell(b, "baseline", 0, base, model=b) for b in BASELINES]
    archs: dict[str, tuple[str, dict]] = {}
    for name, flat in variants:
        cfg = apply_overrides(base, nest(flat))
        rel = {k: v for k, v in flat.items() if k.split(".")[0] in ("audio", "embed") or k == "data.crop_seconds"
               or (k.startswith("model.") and k not in ("model.views", "model.video_depth", "model.embed_dim"))}
        archs.setdefault(_audio_arch(cfg), (f"random-init ({_label(rel)})" if rel else "random-init", flat))
    for seed in range(seeds):
        for label, flat in archs.values():
            cfg = apply_overrides(base, nest({**flat, "train.seed": seed}))
            cells.append(Cell(label, "baseline", seed, cfg, flat, model="random-init"))
        for name, flat in variants:
            cfg = apply_overrides(base, nest({**flat, "train.seed": seed}))
            cells.append(Cell(name, "train", seed, cfg, flat, data=data))
    seen: dict[str, str] = {}
    for c in cells:
        if c.kind == "train" and c.key in seen:
            raise ConfigError(f"variants {seen[c.key]!r} and {c.name!r} resolve to the same config (one cell): "
                              "drop one, or make them differ")
        seen[c.key] = c.name
    return cells


def _audio_arch(cfg: Config) -> str:
    """Identity of the evaluated (spec) tower and how it embeds: what a random-init baseline depends on."""
    d = cfg.to_dict()
    model = {k: v for k, v in d["model"].items() if k not in ("views", "video_depth", "embed_dim")}
    return _hash({"model": model, "audio": d["audio"], "embed": d["embed"], "window": d["data"]["crop_seconds"]})
