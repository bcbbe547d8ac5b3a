"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a dict with at least ``format_version``, ``config`` (the full resolved config as
a nested dict) and ``model`` (the unwrapped model's state dict). The trainer adds optimizer,
scheduler, step and RNG states. Inference code needs only this module and ``avssl.models``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's bytes (read in 1 MiB blocks), e.g. to identify a checkpoint."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {e}); the file is truncated or corrupt, "
            "use an earlier checkpoint"
        ) from e
    if not isinstance(state, dict) or "format_version" not in state or "config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not an avssl checkpoint (missing format_version/config/model)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} is newer than this avssl supports "
            f"({FORMAT_VERSION}); upgrade avssl"
        )
    return state


CHECKPOINT = "checkpoint.pt"  # a run folder's latest checkpoint
PREVIOUS = "checkpoint-prev.pt"  # the one before it, kept until the next save


def save_rotating(folder: str | Path, state: dict[str, Any]) -> Path:
    """Save ``state`` as ``folder/checkpoint.pt`` atomically, keeping the current one as ``checkpoint-prev.pt``
    (hard link, else copy), so a crash while saving never leaves the run without a good checkpoint."""
    folder = Path(folder)
    path, prev = folder / CHECKPOINT, folder / PREVIOUS
    if path.exists():
        _link_or_copy(path, prev)
    return save_checkpoint(state, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` (replaced if there) the same file as ``src``: a hard link, else a copy. Checkpoints are
    replaced by rename (:func:`save_checkpoint`), so ``dst`` keeps what ``src`` holds now."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def snapshot_name(step: int) -> str:
    """File name of the kept copy of the checkpoint at ``step`` (``train.keep_every``)."""
    return f"checkpoint-step{step:07d}.pt"


def keep_snapshot(folder: str | Path, step: int) -> Path:
    """Keep the run's current ``checkpoint.pt`` as ``folder/checkpoint-stepNNNNNNN.pt`` (hard link, else copy);
    later saves replace ``checkpoint.pt`` by rename, so the snapshot keeps this step's weights."""
    snap = Path(folder) / snapshot_name(step)
    _link_or_copy(Path(folder) / CHECKPOINT, snap)  # a run resumed from an earlier checkpoint replaces it
    return snap


def load_for_resume(folder: str | Path) -> dict[str, Any] | None:
    """The run folder's latest checkpoint, ``None`` when it has none; a bad one raises
    :class:`CheckpointError` that names the previous good checkpoint to fall back on."""
    folder = Path(folder)
    path = folder / CHECKPOINT
    if not path.exists():
        log.info("%s: no checkpoint to resume from; starting from step 0", folder)
        return None
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        prev = folder / PREVIOUS
        hint = f"; the previous good checkpoint is kept at {prev}: move it to {path} to resume from it" if prev.exists() else ""
        raise CheckpointError(f"{e}{hint}") from e


def config_of(path: str | Path):
    """The resolved :class:`avssl.config.Config` stored in a checkpoint."""
    from avssl.config import Config

    return Config.from_dict(load_checkpoint(path)["config"])


def tower_state(state: dict[str, Any], view: str) -> dict[str, torch.Tensor]:
    """The ``view`` tower's weights from a checkpoint's (or a classifier model file's) ``model`` state dict."""
    prefix = f"towers.{view}."
    return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}


def architecture_config(target: str | Path):
    """The :class:`avssl.config.Config` of a checkpoint file, or of a preset name / YAML file (``random-init:TARGET``
    builds this architecture untrained)."""
    from avssl.config import load_config

    is_ckpt = Path(target).is_file() and Path(target).suffix.lower() not in (".yaml", ".yml")
    return config_of(target) if is_ckpt else load_config(target)


def random_model(cfg, seed: int = 0, views: list[str] | None = None):
    """The :class:`avssl.models.AVModel` of ``cfg`` (only ``views`` towers if given), untrained, initialised
    from ``seed`` without touching the global RNG; eval mode."""
    from dataclasses import replace

    from avssl.models import build_model

    if views is not None:
        cfg = replace(cfg, model=replace(cfg.model, views=list(views)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg).eval()


def model_from_checkpoint(path: str | Path, views: list[str] | None = None):
    """``(model, cfg)``: a checkpoint's :class:`avssl.models.AVModel` (only ``views`` towers and their heads
    if given) with its trained weights, eval mode, on the CPU. Needs no other input than the file."""
    from avssl.config import Config

    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"])
    model = random_model(cfg, 0, views)
    keep = tuple(f"{part}.{v}." for v in model.views for part in ("towers", "heads"))
    model.load_state_dict({k: v for k, v in state["model"].items() if k.startswith(keep)})
    return model, cfg


# -- classifier model files (``avssl finetune`` writes them, ``avssl.finetune.classifier`` reads them) ---------------------
CLASSIFIER_KIND = "avssl-classifier"
CLASSIFIER_VERSION = 1


def save_classifier(path: str | Path, *, config: dict[str, Any], view: str, tower: dict[str, torch.Tensor],
                    head: dict[str, torch.Tensor], labels: list[str], multilabel: bool,
                    info: dict[str, Any] | None = None) -> Path:
    """Write a self-contained classifier model file atomically: the resolved ``config`` (front-end, architecture,
    embedding window), the ``view`` tower's and the head's weights, the label names in output order and whether
    the task is multi-label. The tower's weights sit under ``towers.VIEW.`` as in a pretraining checkpoint, so
    :func:`avssl.embed.embedder.load_model` reads the fine-tuned tower from the same file."""
    from avssl import __version__

    model = {**{f"towers.{view}.{k}": v for k, v in tower.items()}, **{f"head.{k}": v for k, v in head.items()}}
    return save_checkpoint({"kind": CLASSIFIER_KIND, "classifier_version": CLASSIFIER_VERSION, "config": config,
                            "model": model, "view": view, "labels": list(labels), "multilabel": bool(multilabel),
                            "avssl_version": __version__, "info": info or {}}, path)


def load_classifier_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a classifier model file (:func:`save_classifier`); a pretraining checkpoint or a file from a newer
    avssl is a :class:`CheckpointError` that says what to do."""
    state = load_checkpoint(path, map_location)
    if state.get("kind") != CLASSIFIER_KIND:
        raise CheckpointError(f"{path}: a pretraining checkpoint, not a classifier model file; make one with "
                              "`avssl finetune CHECKPOINT --task TASK --out DIR` (it writes DIR/model.pt)")
    if state.get("classifier_version", 0) > CLASSIFIER_VERSION:
        raise CheckpointError(f"{path}: classifier format {state['classifier_version']} (avssl "
                              f"{state.get('avssl_version', '?')}) is newer than this avssl reads "
                              f"({CLASSIFIER_VERSION}); upgrade avssl")
    missing = [k for k in ("view", "labels", "multilabel") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: classifier model file without {missing}; it is damaged, re-run avssl finetune")
    return state
