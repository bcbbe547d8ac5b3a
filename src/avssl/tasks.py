"""Downstream tasks: a registry of loaders for the published dataset layouts, and their splits.

A :class:`Task` is a list of :class:`Example` (audio file, optional segment, labels, split name)
plus the :class:`Fold` s that say which splits train, validate and test a probe. Loaders only read
metadata; decoding audio and embedding it is :mod:`avssl.evaluate`'s job. Every split is written
down in ``docs/evaluation.md``.

Task names: ``fsdd-digits``, ``fsdd-speakers``, ``instruments``, ``avepm``, ``avepm-groups`` (the
real data in ``../shared/data``), ``esc50``, ``esc10``, ``speech-commands-v1-12``, ``speech-commands-v1-30``,
``speech-commands-v2-12``, ``speech-commands-v2-35``, ``voxceleb1``, ``voxforge``, ``nsynth``,
``audioset``, and the generic ``folder:PATH`` (one folder per class) and ``csv:PATH``
(``path,label[,split]``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .audio import MEDIA_SUFFIXES

log = logging.getLogger(__name__)

CV_FOLDS = 5
CV_SEED = 0  # fixed: the folds of a cross-validated task never change between runs or models
SPEECH_COMMANDS_12 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


class TaskDataError(FileNotFoundError):
    """A task's data is missing or not in the expected layout; the message says where and what."""


@dataclass(frozen=True)
class Example:
    """One clip: ``path`` (any audio or video file), ``labels`` (one for single-label tasks),
    ``split`` (a name such as ``train`` or ``fold3``), and an optional segment ``start`` /
    ``duration`` in seconds (``duration=None``: to the end of the file). ``group`` (optional):
    clips that belong together (e.g. cut from one source recording); a validation split carved
    from training data keeps each group whole (``avssl.evaluate.probe``)."""

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

    ``valid`` empty: the validation set is carved from ``train`` (see ``avssl.evaluate.probe``)."""

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


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: where its data lives below the data root and how to read it."""

    loader: Callable[[Path], Task]
    folders: tuple[str, ...]  # candidate folders below the data root ("" = the root itself)
    marker: str  # a file or folder, relative to the dataset folder, that identifies the layout
    shared: bool = False  # part of ``--suite shared`` (data in ../shared/data)


# ---------------------------------------------------------------------------------------- helpers


def _audio_files(folder: Path) -> list[Path]:
    """Audio/video files below ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in MEDIA_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


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


# ---------------------------------------------------------------------------------------- published layouts


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


def _voxforge(root: Path) -> Task:
    task = load_csv(root / "voxforge.csv", "voxforge", audio_root=root)
    task.description = "VoxForge language ID, EVAR-style metadata voxforge.csv (file_name,label,split)"
    return task


def _esc(root: Path, esc10: bool) -> Task:
    name = "esc10" if esc10 else "esc50"
    with (root / "meta" / "esc50.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if not esc10 or r["esc10"].strip().lower() == "true"]
    # clips cut from one source recording (file names {fold}-{src_file}-{take}-{target}.wav) form a group
    examples = _keep_existing(
        name, [Example(root / "audio" / r["filename"], (r["category"],), f"fold{int(r['fold'])}",
                       group=(r.get("src_file") or r["filename"].split("-")[1]).strip()) for r in rows], root
    )
    return Task(name, examples, _class_order(r["category"] for r in rows), cv_folds(5),
                description=f"{name.upper()}: the 5 official folds of meta/esc50.csv (test on one, train on four; "
                "validation carved by source recording)",
                split_order=[f"fold{k}" for k in range(1, 6)])


def _speech_commands(root: Path, version: int, twelve: bool) -> Task:
    words = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("_"))
    expected = 30 if version == 1 else 35
    if len(words) != expected:
        log.warning("speech commands v%d at %s: %d word folders (the release has %d)",
                    version, root, len(words), expected)

    def listed(name: str) -> set[str]:
        return set((root / name).read_text().split()) if (root / name).is_file() else set()

    valid, test = listed("validation_list.txt"), listed("testing_list.txt")
    examples = []
    for word in words:
        label = word if not twelve or word in SPEECH_COMMANDS_12 else "_unknown_"
        for p in _audio_files(root / word):
            rel = p.relative_to(root).as_posix()
            examples.append(Example(p, (label,), "test" if rel in test else "valid" if rel in valid else "train"))
    classes = [*SPEECH_COMMANDS_12, "_unknown_", "_silence_"] if twelve else words
    if twelve:
        examples += _silence_examples(root, examples)
    n = "12" if twelve else str(expected)
    return Task(f"speech-commands-v{version}-{n}", examples, classes,
                [Fold("official", ("train",), ("test",), ("valid",))],
                description=f"Speech Commands v{version}, {n} classes; "
                "validation_list.txt / testing_list.txt, the rest train"
                + ("; _unknown_ = the other words; _silence_ = 1 s cuts of _background_noise_ (10% of each split)"
                   if twelve else ""),
                split_order=["train", "valid", "test"])


def _silence_examples(root: Path, examples: list[Example], share: float = 0.1, seed: int = 0) -> list[Example]:
    """``_silence_`` clips: 1 s windows from ``_background_noise_/*.wav``. Each noise file's
    first 80% feeds train, the next 10% valid, the last 10% test (so no noise is shared across
    splits); the count per split is ``share`` of that split's word examples (TensorFlow's default)."""
    import soundfile as sf

    noise = _audio_files(root / "_background_noise_") if (root / "_background_noise_").is_dir() else []
    if not noise:
        log.warning("speech commands at %s: no _background_noise_ folder; the _silence_ class is empty", root)
        return []
    lengths = [sf.info(str(p)).duration for p in noise]
    regions = {"train": (0.0, 0.8), "valid": (0.8, 0.9), "test": (0.9, 1.0)}
    rng = np.random.default_rng(seed)
    out = []
    for split, (lo, hi) in regions.items():
        count = math.ceil(share * sum(ex.split == split for ex in examples))
        for _ in range(count):
            k = int(rng.integers(len(noise)))
            start, end = lo * lengths[k], hi * lengths[k]
            dur = min(1.0, end - start)
            out.append(Example(noise[k], ("_silence_",), split, float(start + rng.uniform(0, end - start - dur)), dur))
    return out


def _voxceleb1(root: Path) -> Task:
    wav = root / "wav" if (root / "wav").is_dir() else root
    code = {"1": "train", "2": "valid", "3": "test"}
    examples = []
    for n, line in enumerate((root / "iden_split.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in code:
            raise TaskDataError(f"{root / 'iden_split.txt'} line {n}: {line!r} is not '<1|2|3> id/video/utt.wav'")
        examples.append(Example(wav / parts[1], (parts[1].split("/")[0],), code[parts[0]]))
    examples = _keep_existing("voxceleb1", examples, wav)
    return Task("voxceleb1", examples, _class_order(ex.labels[0] for ex in examples),
                [Fold("official", ("train",), ("test",), ("valid",))],
                description="VoxCeleb1 speaker identification, iden_split.txt (1 train, 2 valid, 3 test)",
                split_order=["train", "valid", "test"])


def _nsynth(root: Path) -> Task:
    examples = []
    for split in ("train", "valid", "test"):
        folder = root / f"nsynth-{split}"
        meta = folder / "examples.json"
        if not meta.is_file():
            raise TaskDataError(f"nsynth: {meta} is missing (expected nsynth-train/, nsynth-valid/, nsynth-test/)")
        for key, info in sorted(json.loads(meta.read_text()).items()):
            examples.append(Example(folder / "audio" / f"{key}.wav", (info["instrument_family_str"],), split))
    examples = _keep_existing("nsynth", examples, root)
    return Task("nsynth", examples, _class_order(ex.labels[0] for ex in examples),
                [Fold("official", ("train",), ("test",), ("valid",))],
                description="NSynth instrument family (11 classes), the official nsynth-train/valid/test",
                split_order=["train", "valid", "test"])


def _read_segments(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """AudioSet segment CSV: ``# comment`` lines, then ``YTID, start, end, "mid1,mid2"``."""
    rows = []
    with path.open(newline="") as f:
        for row in csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True):
            if row:
                rows.append((row[0], float(row[1]), float(row[2]), [m.strip() for m in row[3].split(",") if m.strip()]))
    return rows


def _audioset(root: Path) -> Task:
    """Balanced train (validation carved from it) vs. eval; clips are found by YouTube ID in any
    file name of the forms ``ID.ext``, ``YID.ext`` or ``ID_start[_end].ext`` anywhere below root."""
    names: dict[str, str] = {}
    if (root / "class_labels_indices.csv").is_file():
        with (root / "class_labels_indices.csv").open(newline="") as f:
            names = {r["mid"]: r["display_name"] for r in csv.DictReader(f)}
    index: dict[str, Path] = {}
    for p in _audio_files(root):
        stem = p.stem
        for cand in (stem, stem[1:] if stem.startswith("Y") and len(stem) == 12 else None,
                     stem[:11] if len(stem) > 11 and stem[11] == "_" else None):
            if cand:
                index.setdefault(cand, p)
    examples = []
    for csv_name, split in (("balanced_train_segments.csv", "train"), ("eval_segments.csv", "test")):
        if not (root / csv_name).is_file():
            raise TaskDataError(f"audioset: {root / csv_name} is missing")
        for ytid, _start, _end, mids in _read_segments(root / csv_name):
            path = index.get(ytid, root / f"{ytid}.missing")
            examples.append(Example(path, tuple(names.get(m, m) for m in mids), split))
    examples = _keep_existing("audioset", examples, root)
    classes = list(names.values()) if names else _class_order(lab for ex in examples for lab in ex.labels)
    return Task("audioset", examples, classes, [Fold("official", ("train",), ("test",))], multilabel=True,
                description="AudioSet, balanced_train_segments.csv (validation carved) vs eval_segments.csv; "
                "527 labels",
                split_order=["train", "test"])


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
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
