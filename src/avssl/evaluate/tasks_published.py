"""Loaders for the published dataset layouts: ESC-50 / ESC-10, Speech Commands v1 / v2, VoxCeleb1,
VoxForge (EVAR metadata), NSynth and AudioSet. Each takes the dataset folder and returns a
:class:`avssl.evaluate.tasks_base.Task`; the registry that finds the folder is :mod:`avssl.evaluate.tasks`. Every split
is written down in ``docs/evaluation.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np

from avssl.ingest.inputs import read_segments
from avssl.evaluate.tasks_base import (
    Example,
    Fold,
    Task,
    TaskDataError,
    _audio_files,
    _class_order,
    _keep_existing,
    cv_folds,
    load_csv,
)

log = logging.getLogger(__name__)

SPEECH_COMMANDS_12 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


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
        for ytid, _start, _end, mids in read_segments(root / csv_name):
            path = index.get(ytid, root / f"{ytid}.missing")
            examples.append(Example(path, tuple(names.get(m, m) for m in mids), split))
    examples = _keep_existing("audioset", examples, root)
    classes = list(names.values()) if names else _class_order(lab for ex in examples for lab in ex.labels)
    return Task("audioset", examples, classes, [Fold("official", ("train",), ("test",))], multilabel=True,
                description="AudioSet, balanced_train_segments.csv (validation carved) vs eval_segments.csv; "
                "527 labels",
                split_order=["train", "test"])
