"""The task data model and what every dataset loader shares: :class:`Example`, :class:`Fold`, :class:`Task`,
fixed cross-validation folds, and the generic layouts ``folder:PATH`` (:func:`load_folder`, one folder
per class) and ``csv:PATH`` (:func:`load_csv`, ``path,label[,split]``).

The registry of named tasks is :mod:`avssl.evaluate.tasks`; the published dataset layouts are
:mod:`avssl.evaluate.tasks_published`. Loaders only read metadata; decoding and embedding is :mod:`avssl.evaluate.run`'s job.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avssl.ingest.inputs import media_files

log = logging.getLogger(__name__)

CV_FOLDS = 5
CV_SEED = 0  # fixed: the folds of a cross-validated task never change between runs or models


class TaskDataError(FileNotFoundError):
    """A task's data is missing or not in the expected layout; the message says where and what."""


@dataclass(frozen=True)
class Example:
    """One clip: ``path`` (any audio or video file), ``labels`` (one for single-label tasks),
    ``split`` (a name such as ``train`` or ``fold3``), and an optional segment ``start`` /
    ``duration`` in seconds (``duration=None``: to the end of the file). ``group`` (optional):
    clips that belong together (e.g. cut from one source recording); a validation split carved
    from training data keeps each group whole (``avssl.evaluate.probe.probe``)."""

    path: Path
    labels: tuple[str, ...]
    split: str
    start: float = 0.0
    duration: float | None = None
    group: str | None = None

    @property
    def key(self) -> str:
        """Identity of the clip for embedding caches."""
        return f"{self.path}|{self.start:.3f}|{'' if self.duration is None else f'{self.duration:.3f}'}"


@dataclass(frozen=True)
class Fold:
    """Which splits a probe trains on, tests on, and picks its regularisation on.

    ``valid`` empty: the validation set is carved from ``train`` (see ``avssl.evaluate.probe.probe``)."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    valid: tuple[str, ...] = ()


@dataclass
class Task:
    """A loaded task. ``classes`` fixes the label order; ``multilabel`` tasks use mAP."""

    name: str
    examples: list[Example]
    classes: list[str]
    folds: list[Fold]
    multilabel: bool = False
    description: str = ""
    split_order: list[str] = field(default_factory=list)
    audio_id: str = ""  # tasks over the same clips share embeddings (cache folder); default: the name

    def __post_init__(self) -> None:
        if not self.examples:
            raise TaskDataError(f"task {self.name}: no examples found")
        known = set(self.classes)
        for ex in self.examples:
            missing = [lab for lab in ex.labels if lab not in known]
            if missing or (not self.multilabel and len(ex.labels) != 1):
                raise ValueError(f"task {self.name}: {ex.path} has labels {ex.labels}; classes are {self.classes}")
        if not self.split_order:
            self.split_order = list(dict.fromkeys(ex.split for ex in self.examples))
        self.audio_id = self.audio_id or self.name
        for fold in self.folds:
            for s in (*fold.train, *fold.valid, *fold.test):
                if s not in self.split_order:
                    raise TaskDataError(f"task {self.name}: fold {fold.name} uses split {s!r}, which has no examples")

    @property
    def metric(self) -> str:
        """The headline metric: ``mAP`` for multi-label tasks, else ``accuracy``."""
        return "mAP" if self.multilabel else "accuracy"

    def indices(self, splits: tuple[str, ...] | list[str]) -> np.ndarray:
        """Indices (into ``examples``) of the examples in any of ``splits``, in order."""
        wanted = set(splits)
        return np.array([i for i, ex in enumerate(self.examples) if ex.split in wanted], dtype=np.int64)

    def targets(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Class indices ``int64[n]``, or multi-hot ``float32[n, num_classes]`` for multi-label tasks."""
        exs = self.examples if idx is None else [self.examples[i] for i in idx]
        pos = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([pos[ex.labels[0]] for ex in exs], dtype=np.int64)
        y = np.zeros((len(exs), len(self.classes)), dtype=np.float32)
        for row, ex in enumerate(exs):
            y[row, [pos[lab] for lab in ex.labels]] = 1.0
        return y


# ---------------------------------------------------------------------------------------- helpers


def _audio_files(folder: Path) -> list[Path]:
    """Audio/video files below ``folder`` (recursive, sorted, hidden files skipped)."""
    return [p for p in media_files(folder) if not p.name.startswith(".")]


def cv_splits(labels: list[str], folds: int = CV_FOLDS, seed: int = CV_SEED) -> list[str]:
    """Assign ``fold1..foldK`` by stratified K-fold (scikit-learn, shuffled with ``seed``).

    Labels must be in a deterministic order (loaders sort by path) so the folds are reproducible."""
    from sklearn.model_selection import StratifiedKFold

    counts = {lab: labels.count(lab) for lab in set(labels)}
    small = sorted(lab for lab, n in counts.items() if n < folds)
    if small:
        raise TaskDataError(
            f"classes {small} have fewer than {folds} examples; {folds}-fold cross-validation needs more"
        )
    out = [""] * len(labels)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(skf.split(np.zeros(len(labels)), labels)):
        for i in test:
            out[i] = f"fold{k + 1}"
    return out


def cv_folds(folds: int = CV_FOLDS) -> list[Fold]:
    """Fold k tests on ``foldk`` and trains on the others (validation carved from train)."""
    names = [f"fold{k + 1}" for k in range(folds)]
    return [Fold(n, tuple(m for m in names if m != n), (n,)) for n in names]


def _keep_existing(task_name: str, examples: list[Example], root: Path) -> list[Example]:
    """Drop examples whose file is missing (logged with a count); fail when none exist."""
    found = [ex for ex in examples if ex.path.is_file()]
    if not found:
        raise TaskDataError(f"task {task_name}: none of the {len(examples)} listed audio files exist below {root}")
    if len(found) < len(examples):
        log.warning("task %s: %d of %d listed files are missing below %s; evaluating the rest",
                    task_name, len(examples) - len(found), len(examples), root)
    return found


def _class_order(labels) -> list[str]:
    return sorted(set(labels))


# ---------------------------------------------------------------------------------------- generic layouts


def load_folder(root: Path, name: str | None = None) -> Task:
    """One sub-folder per class. With ``train/`` (``valid/``) ``test/`` sub-folders those are the
    splits; otherwise stratified 5-fold cross-validation with a fixed seed."""
    root = Path(root)
    if not root.is_dir():
        raise TaskDataError(f"{root}: no such folder (expected one sub-folder per class)")
    name = name or f"folder:{root}"
    split_dirs = [s for s in ("train", "valid", "test") if (root / s).is_dir()]
    if split_dirs:
        if "train" not in split_dirs or "test" not in split_dirs:
            raise TaskDataError(f"{root}: has {split_dirs} but needs both train/ and test/ (each with class folders)")
        examples = [
            Example(p, (cls.name,), split)
            for split in split_dirs
            for cls in sorted(d for d in (root / split).iterdir() if d.is_dir())
            for p in _audio_files(cls)
        ]
        valid = ("valid",) if "valid" in split_dirs else ()
        folds = [Fold("official", ("train",), ("test",), valid)]
        desc = f"folder per class with the splits {'/'.join(split_dirs)}"
    else:
        pairs = [(p, cls.name) for cls in sorted(d for d in root.iterdir() if d.is_dir()) for p in _audio_files(cls)]
        if not pairs:
            raise TaskDataError(f"{root}: no audio files in class sub-folders (expected {root}/<class>/<file>)")
        splits = cv_splits([lab for _, lab in pairs])
        examples = [Example(p, (lab,), s) for (p, lab), s in zip(pairs, splits)]
        folds = cv_folds()
        desc = (f"folder per class; stratified {CV_FOLDS}-fold cross-validation "
                f"(scikit-learn StratifiedKFold, seed {CV_SEED})")
    return Task(name, examples, _class_order(ex.labels[0] for ex in examples), folds, description=desc)


_PATH_COLUMNS = ("path", "file_name", "filename", "file")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                  "dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}


def load_csv(csv_path: Path, name: str | None = None, audio_root: Path | None = None) -> Task:
    """A CSV with a header ``path,label[,split]`` (``file_name``/``filename`` also accepted for
    ``path``, as in EVAR's metadata). Paths are relative to ``audio_root`` (default: the CSV's
    folder). ``split`` values train/valid/test (aliases: val, dev, eval); without a split column,
    stratified 5-fold cross-validation."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TaskDataError(f"{csv_path}: no such CSV file (expected columns path,label[,split])")
    audio_root = Path(audio_root) if audio_root is not None else csv_path.parent
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TaskDataError(f"{csv_path}: no rows")
    cols = rows[0].keys()
    path_col = next((c for c in _PATH_COLUMNS if c in cols), None)
    if path_col is None or "label" not in cols:
        raise TaskDataError(f"{csv_path}: needs columns path (or file_name) and label, has {list(cols)}")
    name = name or f"csv:{csv_path}"
    paths = [audio_root / r[path_col] for r in rows]
    labels = [str(r["label"]) for r in rows]
    if "split" in cols:
        splits = []
        for r in rows:
            s = _SPLIT_ALIASES.get(str(r["split"]).strip().lower())
            if s is None:
                raise TaskDataError(f"{csv_path}: split {r['split']!r} for {r[path_col]}; use train, valid or test")
            splits.append(s)
        present = set(splits)
        if not {"train", "test"} <= present:
            raise TaskDataError(f"{csv_path}: the split column needs both train and test rows, has {sorted(present)}")
        folds = [Fold("official", ("train",), ("test",), ("valid",) if "valid" in present else ())]
        desc = "CSV splits (train/valid/test as listed)"
    else:
        order = sorted(range(len(rows)), key=lambda i: str(paths[i]))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
        splits = cv_splits(labels)
        folds = cv_folds()
        desc = f"CSV without splits; stratified {CV_FOLDS}-fold cross-validation (seed {CV_SEED})"
    examples = _keep_existing(name, [Example(p, (lab,), s) for p, lab, s in zip(paths, labels, splits)], audio_root)
    return Task(name, examples, _class_order(labels), folds, description=desc)
