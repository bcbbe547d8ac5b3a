"""Downstream tasks: a registry of loaders for the published dataset layouts, and their splits.

A :class:`Task` is a list of :class:`Example` (audio file, optional segment, labels, split name)
plus the :class:`Fold` s that say which splits train, validate and test a probe (the data model and the
generic ``folder:`` / ``csv:`` loaders: :mod:`avssl.evaluate.tasks_base`; the published layouts:
:mod:`avssl.evaluate.tasks_published`). This module holds the registry (:data:`TASKS`, :func:`load_task`) and the
loaders of the shared data. Loaders only read metadata; decoding audio and embedding it is
:mod:`avssl.evaluate.run`'s job. Every split is written down in ``docs/evaluation.md``.

Task names: ``fsdd-digits``, ``fsdd-speakers``, ``instruments``, ``avepm``, ``avepm-groups`` (the
real data in ``../shared/data``), ``esc50``, ``esc10``, ``speech-commands-v1-12``, ``speech-commands-v1-30``,
``speech-commands-v2-12``, ``speech-commands-v2-35``, ``voxceleb1``, ``voxforge``, ``nsynth``,
``audioset``, and the generic ``folder:PATH`` (one folder per class) and ``csv:PATH``
(``path,label[,split]``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from avssl.evaluate.tasks_base import (
    Example,
    Fold,
    Task,
    TaskDataError,
    _audio_files,
    _class_order,
    _keep_existing,
    load_csv,
    load_folder,
)
from avssl.evaluate.tasks_published import (
    _audioset,
    _esc,
    _nsynth,
    _speech_commands,
    _voxceleb1,
    _voxforge,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: where its data lives below the data root and how to read it."""

    loader: Callable[[Path], Task]
    folders: tuple[str, ...]  # candidate folders below the data root ("" = the root itself)
    marker: str  # a file or folder, relative to the dataset folder, that identifies the layout
    shared: bool = False  # part of ``--suite shared`` (data in ../shared/data)


# ---------------------------------------------------------------------------------------- shared data


_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def _fsdd(root: Path, target: str) -> Task:
    examples = []
    for p in _audio_files(root / "recordings"):
        m = _FSDD_NAME.match(p.stem)
        if not m:
            log.warning("fsdd: skipping %s (name is not {digit}_{speaker}_{index})", p)
            continue
        digit, speaker, index = m.group(1), m.group(2), int(m.group(3))
        examples.append(Example(p, (digit if target == "digit" else speaker,), "test" if index < 5 else "train"))
    return Task(
        f"fsdd-{target}s",
        examples,
        _class_order(ex.labels[0] for ex in examples),
        [Fold("official", ("train",), ("test",))],
        description=f"Free Spoken Digit Dataset, {target} ID; official split: recording index 0-4 test, 5-49 train",
        split_order=["train", "test"],
        audio_id="fsdd",
    )


def _instruments(root: Path) -> Task:
    task = load_folder(root, "instruments")
    task.description = f"20 instruments, single notes; {task.description}"
    return task


def _avepm(root: Path, column: str) -> Task:
    """AVE-PM (``labels.csv``: ``path,label,group,class_id,split``): the soundtracks of real phone videos,
    86 event classes (``label``) or 8 coarse groups (``group``), with the fixed 3 train / 2 test clips per
    class. The probe's validation set is carved from the train split."""
    csv_path = root / "labels.csv"
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"path", column, "split"} - set(rows[0] if rows else ())
    if missing:
        raise TaskDataError(f"{csv_path}: needs columns path, {column}, split; missing {sorted(missing)}")
    examples = [Example(root / r["path"], (r[column],), r["split"].strip()) for r in rows]
    bad = sorted({ex.split for ex in examples} - {"train", "test"})
    if bad:
        raise TaskDataError(f"{csv_path}: split values {bad}; use train or test")
    name = "avepm" if column == "label" else "avepm-groups"
    return Task(name, _keep_existing(name, examples, root), _class_order(ex.labels[0] for ex in examples),
                [Fold("official", ("train",), ("test",))],
                description=f"AVE-PM soundtracks, {'86 event classes' if column == 'label' else '8 event groups'}; "
                "fixed split: 3 train / 2 test clips per class (pretrain only on avepm/pretrain.txt)",
                split_order=["train", "test"], audio_id="avepm")


# ---------------------------------------------------------------------------------------- registry


TASKS: dict[str, TaskSpec] = {
    "fsdd-digits": TaskSpec(lambda r: _fsdd(r, "digit"), ("fsdd",), "recordings", shared=True),
    "fsdd-speakers": TaskSpec(lambda r: _fsdd(r, "speaker"), ("fsdd",), "recordings", shared=True),
    "instruments": TaskSpec(_instruments, ("instruments",), "", shared=True),
    "avepm": TaskSpec(lambda r: _avepm(r, "label"), ("avepm",), "labels.csv", shared=True),
    "avepm-groups": TaskSpec(lambda r: _avepm(r, "group"), ("avepm",), "labels.csv", shared=True),
    "esc50": TaskSpec(lambda r: _esc(r, False), ("ESC-50-master", "ESC-50", "esc50"), "meta/esc50.csv"),
    "esc10": TaskSpec(lambda r: _esc(r, True), ("ESC-50-master", "ESC-50", "esc50"), "meta/esc50.csv"),
    "speech-commands-v1-12": TaskSpec(lambda r: _speech_commands(r, 1, True),
                                      ("speech_commands_v0.01", "speech-commands-v1"), "validation_list.txt"),
    "speech-commands-v1-30": TaskSpec(lambda r: _speech_commands(r, 1, False),
                                      ("speech_commands_v0.01", "speech-commands-v1"), "validation_list.txt"),
    "speech-commands-v2-12": TaskSpec(lambda r: _speech_commands(r, 2, True),
                                      ("speech_commands_v0.02", "speech-commands-v2"), "validation_list.txt"),
    "speech-commands-v2-35": TaskSpec(lambda r: _speech_commands(r, 2, False),
                                      ("speech_commands_v0.02", "speech-commands-v2"), "validation_list.txt"),
    "voxceleb1": TaskSpec(_voxceleb1, ("VoxCeleb1", "voxceleb1", "vox1"), "iden_split.txt"),
    "voxforge": TaskSpec(_voxforge, ("voxforge", "VoxForge"), "voxforge.csv"),
    "nsynth": TaskSpec(_nsynth, ("nsynth", "NSynth"), "nsynth-test/examples.json"),
    "audioset": TaskSpec(_audioset, ("audioset", "AudioSet"), "eval_segments.csv"),
}


def task_folder(name: str, data_root: str | Path) -> Path | None:
    """The dataset folder of registered task ``name`` below ``data_root`` (or ``data_root``
    itself), identified by the task's marker file; ``None`` when absent."""
    spec = TASKS[name]
    data_root = Path(data_root)
    for folder in spec.folders if not spec.marker else ("", *spec.folders):
        cand = data_root / folder
        if (cand / spec.marker).exists() if spec.marker else cand.is_dir():
            return cand
    return None


def load_task(name: str, data_root: str | Path | None = None) -> Task:
    """Load a registered task (found below ``data_root``) or ``folder:PATH`` / ``csv:PATH``."""
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]), name)
    if name.startswith("csv:"):
        return load_csv(Path(name[len("csv:"):]), name)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}, folder:PATH, csv:PATH")
    if data_root is None:
        raise TaskDataError(f"task {name} needs --data-root (the folder that holds its dataset)")
    folder = task_folder(name, data_root)
    if folder is None:
        spec = TASKS[name]
        where = ", ".join(str(Path(data_root) / f / spec.marker) for f in spec.folders)
        raise TaskDataError(f"task {name}: data not found; looked for {where}")
    log.info("task %s: reading %s", name, folder)
    return TASKS[name].loader(folder)


def shared_tasks(data_root: str | Path) -> list[str]:
    """The ``--suite shared`` tasks whose data is present below ``data_root``."""
    return [n for n, spec in TASKS.items() if spec.shared and task_folder(n, data_root) is not None]


def default_data_root() -> Path:
    """``$AVSSL_SHARED_DATA``, else ``../shared/data`` beside the repository root."""
    env = os.environ.get("AVSSL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data"
