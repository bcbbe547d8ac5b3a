"""Validation carved from training data keeps groups whole (ESC-50: clips of one source recording)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import avssl.evaluate.probe as probe
from avssl.evaluate.tasks import load_task


def _no_straddle(groups: np.ndarray, tr: np.ndarray, va: np.ndarray) -> bool:
    return not set(groups[tr]) & set(groups[va])


@pytest.mark.parametrize("seed", range(4))
def test_carve_keeps_groups_whole_and_stratifies(seed):
    y = np.repeat(np.arange(4), 15)  # 4 classes x 5 groups x 3 clips
    groups = np.array([f"src{i // 3}" for i in range(60)])
    tr, va = probe._carve(y, 0.2, seed, groups)
    assert sorted(np.r_[tr, va].tolist()) == list(range(60))
    assert _no_straddle(groups, tr, va)
    assert len(va) == 12 and np.bincount(y[va], minlength=4).tolist() == [3, 3, 3, 3]
    multi = np.eye(4, dtype=np.float32)[y]  # multi-label targets: group shuffle split
    tr, va = probe._carve(multi, 0.2, seed, groups)
    assert _no_straddle(groups, tr, va) and 0 < len(va) < 60
    plain_tr, plain_va = probe._carve(y, 0.2, seed)  # without groups: the old stratified carving
    assert sorted(np.r_[plain_tr, plain_va].tolist()) == list(range(60))
    assert np.bincount(y[plain_va], minlength=4).tolist() == [3, 3, 3, 3]


def _esc_layout(root: Path) -> Path:
    """ESC-50's published layout: 5 folds x 2 classes x 2 source recordings x 3 takes."""
    rows = []
    (root / "audio").mkdir(parents=True)
    for fold in range(1, 6):
        for target, cat in ((0, "dog"), (1, "rain")):
            for src in range(2):
                src_file = f"{100000 + 10 * fold + 2 * target + src}"
                for take in "ABC":
                    name = f"{fold}-{src_file}-{take}-{target}.wav"
                    sf.write(root / "audio" / name, np.zeros(800, np.float32), 8000)
                    rows.append([name, fold, target, cat, "False", src_file, take])
    (root / "meta").mkdir()
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def test_esc50_probe_carves_validation_by_source_recording(tmp_path, monkeypatch):
    task = load_task("esc50", _esc_layout(tmp_path / "ESC-50-master"))
    assert all(ex.group == ex.path.name.split("-")[1] for ex in task.examples)
    carved = []

    def spy(y, share, seed, groups=None):
        out = carve(y, share, seed, groups)
        carved.append((groups, *out))
        return out

    carve = probe._carve
    monkeypatch.setattr(probe, "_carve", spy)
    x = np.random.default_rng(0).standard_normal((len(task.examples), 4)).astype(np.float32)
    summary, _ = probe.run_probes(task, x, seeds=2)
    assert len(carved) == 5 * 2 and all(r["num_valid"] > 0 for r in summary["runs"])
    for groups, tr, va in carved:
        assert groups is not None and len(groups) == 48  # the 4 training folds
        assert _no_straddle(groups, tr, va)
        assert all(np.sum(groups[va] == g) == 3 for g in set(groups[va]))  # every take of a recording


@pytest.mark.parametrize("seed", range(6))
def test_carve_with_few_clips_per_class_loses_no_class(seed):
    """AVE-PM's shape: 86 classes x 3 training clips. More classes than a 20 % validation split holds, so a
    plain stratified split is impossible; an unstratified shuffle left some classes with no training clip."""
    y = np.repeat(np.arange(86), 3)
    tr, va = probe._carve(y, 0.2, seed)
    assert sorted(np.r_[tr, va].tolist()) == list(range(len(y)))
    assert np.bincount(y[tr], minlength=86).min() >= 2  # every class keeps at least 2 of its 3 clips
    assert 0.1 * len(y) < len(va) < 0.3 * len(y)  # about the share asked for
    again_tr, again_va = probe._carve(y, 0.2, seed)
    assert again_va.tolist() == va.tolist()  # seeded
    uneven = np.r_[np.repeat(np.arange(40), 2), np.repeat(np.arange(40, 50), 9)]
    tr, va = probe._carve(uneven, 0.2, seed)
    assert np.bincount(uneven[tr], minlength=50).min() >= 1
    assert (np.bincount(uneven[va], minlength=50)[40:] >= 1).all()  # large classes give floor(0.2 * 9) = 1 or more
    tiny = np.repeat(np.arange(3), 2)  # 3 classes x 2 clips: the draws may all miss; the split is never empty
    tr, va = probe._carve(tiny, 0.2, seed)
    assert len(va) >= 1 and np.bincount(tiny[tr], minlength=3).min() >= 1
