"""What defines a fine-tuning run, stored in each of its checkpoints (:func:`run_identity`), and the check that
``--resume`` continues that same run (:func:`check_resume`): a resume never changes the experiment.

A run is defined by its resolved config (the checkpoint's architecture and front-end, the ``finetune`` and ``embed``
sections: seed, ``labels_per_class``, budget, recipe, read-out), its starting point (a checkpoint, identified by its
file's SHA-1 so that a moved file still matches, or ``random-init``), the task, the fold, and the clips of the split
those carve (the SHA-1 of their paths, segments and labels, so that a changed dataset is caught too). A different
seed re-carves the split, so a mismatch is refused, naming every differing setting with its stored and given value.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from avssl.checkpoint import CheckpointError, file_sha1
from avssl.config import Config, ConfigError
from avssl.evaluate.tasks_base import Task
from avssl.finetune.data import Split

IDENTITY_VERSION = 1
RANDOM_INIT = "random-init:"


def _task_name(name: str) -> str:
    """A task name with the path of ``folder:PATH`` / ``csv:PATH`` made absolute (the same data, however named)."""
    for prefix in ("folder:", "csv:"):
        if name.startswith(prefix):
            return prefix + os.path.abspath(name[len(prefix):])
    return name


def split_sha1(task: Task, split: Split) -> str:
    """SHA-1 of the training, validation and test clips (absolute path, segment, labels), in order."""
    def clip(i: int) -> list:
        ex = task.examples[int(i)]
        return [os.path.abspath(ex.path), ex.start, ex.duration, list(ex.labels)]

    parts = [[clip(i) for i in part] for part in (split.train, split.valid, split.test)]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def run_identity(start: str, task: Task, fold: str, split: Split) -> dict[str, Any]:
    """The settings that define a run besides its config (which checkpoints store whole): the starting point, the
    task, the fold's name, and the SHA-1 and sizes of the split (before unreadable clips are skipped)."""
    return {"version": IDENTITY_VERSION, "start": start,
            "start_sha1": None if start.startswith(RANDOM_INIT) else file_sha1(start),
            "task": _task_name(task.name), "fold": fold, "split_sha1": split_sha1(task, split),
            "clips": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "weights":  # loss.weights is one setting (a mapping)
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(stored: dict[str, Any], given: dict[str, Any], stored_config: dict[str, Any], config: Config
                ) -> list[str]:
    """``"setting: stored X, given Y"`` for every identity field and config setting that differ."""
    out = []
    same_start = (stored["start_sha1"] == given["start_sha1"] if given["start_sha1"] is not None
                  else stored["start"] == given["start"])
    if not same_start:
        def where(ident: dict) -> str:
            return repr(ident["start"]) + (f" (sha1 {ident['start_sha1'][:12]})" if ident["start_sha1"] else "")
        out.append(f"start checkpoint: stored {where(stored)}, given {where(given)}")
    for key, name in (("task", "--task"), ("fold", "--fold")):
        if stored[key] != given[key]:
            out.append(f"{name}: stored {stored[key]!r}, given {given[key]!r}")
    a, b = _flat(stored_config), _flat(config.to_dict())
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            flag = " (--seed)" if key == "finetune.seed" else ""
            out.append(f"{key}{flag}: stored {a.get(key)!r}, given {b.get(key)!r}")
    if not out and stored["split_sha1"] != given["split_sha1"]:
        out.append(f"the task's clips: stored a split of {stored['clips']}, the same settings now give "
                   f"{given['clips']} (files added, removed or relabelled)")
    return out


def check_resume(state: dict[str, Any], identity: dict[str, Any], config: Config, where: str) -> None:
    """Refuse (:class:`ConfigError`) to resume the checkpoint ``state`` of the run folder ``where`` with settings
    other than its own; a checkpoint without a stored identity (avssl before issue 26) is refused too
    (:class:`CheckpointError`), as its run cannot be checked and its budget was counted otherwise."""
    stored = state.get("identity")
    if stored is None or stored.get("version") != IDENTITY_VERSION:
        raise CheckpointError(
            f"{where}: its checkpoint was written by an older avssl and does not record what defines the run (start "
            "checkpoint, task, fold, split), so --resume cannot check that it continues the same experiment; start "
            "a new run with another --out (or finish this one with the avssl version that started it)")
    diff = differences(stored, identity, state["config"], config)
    if diff:
        raise ConfigError(
            f"{where}: --resume with settings that differ from the run it continues: " + "; ".join(diff) + ". A "
            "resume never changes the experiment (the seed, task, fold and labels decide the split and the kept "
            "epoch): resume with the stored settings, or start a new run with another --out")
