"""``avssl classify``: rows equal the classifier's own scores, bad files are recorded, runs resume, labels survive CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avssl.finetune.classifier import load_classifier
from avssl.finetune.classify import classify_collection
from avssl.cli import main as cli_main
from avssl.finetune.run import finetune
from avssl.media.video import encode_audio
from test_finetune import CLASSES, FAST, SR, tone, write_tone_task


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = write_tone_task(tmp_path_factory.mktemp("task"), 6, 0.8, 0.3)
    out = tmp_path_factory.mktemp("ft") / "run"
    torch.set_num_threads(1)
    finetune("random-init:tiny", f"folder:{root}", out, sets=FAST + ["finetune.epochs=2"], progress=False)
    return out / "model.pt"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for k, freq in enumerate(CLASSES.values()):
        encode_audio(folder / f"clip, nº{k} ♪.wav", tone(freq, 0.7 + 0.8 * k, 900 + k), SR)
    (folder / "broken.wav").write_bytes(b"RIFF, but not a wave file")
    return folder


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_rows_are_the_classifier_scores_and_bad_files_are_recorded(model, inputs, tmp_path):
    out = tmp_path / "labels.csv"
    assert cli_main(["classify", str(model), str(inputs), str(tmp_path / "missing.wav"), "--out", str(out),
                     "--top-k", "2", "--workers", "2", "--no-progress"]) == 0
    rows = {Path(r["input"]).name: r for r in read_csv(out)}
    assert sorted(rows) == sorted(["broken.wav", "missing.wav"] + [f"clip, nº{k} ♪.wav" for k in range(3)])
    for name in ("broken.wav", "missing.wav"):
        assert rows[name]["status"] == "skipped" and rows[name]["reason"] and not rows[name]["label_1"]
    clf = load_classifier(model, device="cpu")
    for k in range(3):
        r = rows[f"clip, nº{k} ♪.wav"]
        scores = clf.predict_file(inputs / f"clip, nº{k} ♪.wav")
        best = np.argsort(-scores, kind="stable")[:2]
        assert r["status"] == "ok" and [r["label_1"], r["label_2"]] == [clf.labels[i] for i in best]
        assert [float(r["score_1"]), float(r["score_2"])] == pytest.approx(scores[best], abs=1e-6)
        assert float(r["seconds"]) == pytest.approx(0.7 + 0.8 * k, abs=1e-3)
    assert set(CLASSES) >= {r["label_1"] for r in rows.values() if r["label_1"]}  # "low, hum" survives the CSV


def test_a_cut_run_resumes_to_the_same_file(model, inputs, tmp_path):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    classify_collection(model, [inputs], full, workers=0, progress=False)
    text = full.read_text(encoding="utf-8")
    cut.write_text(text[: len(text) - 25], encoding="utf-8")  # a kill in the middle of the last row
    (tmp_path / "cut.jsonl.settings.json").write_text((tmp_path / "full.jsonl.settings.json").read_text())
    redone = classify_collection(model, [inputs], cut, workers=0, progress=False)
    assert cut.read_text(encoding="utf-8") == text
    assert [r["input"] for r in redone] == [json.loads(text.splitlines()[-1])["input"]]  # only the cut row's input
    assert classify_collection(model, [inputs], cut, workers=0, progress=False) == []  # finished: nothing redone
    assert cut.read_text(encoding="utf-8") == text


def test_timestamps_threshold_and_hop(model, inputs, tmp_path):
    out = tmp_path / "windows.jsonl"
    clip = inputs / "clip, nº2 ♪.wav"  # 2.3 s
    classify_collection(model, [clip], out, timestamps=True, hop=0.25, threshold=0.2, top_k=3, progress=False)
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    clf = load_classifier(model, device="cpu", overlap=0.75)  # 1 s windows every 0.25 s
    from avssl.media.audio import load_audio

    (w,) = clf.predict_windows(load_audio(clip, SR), SR)
    assert [r["start"] for r in rows] == pytest.approx(w.start) and [r["end"] for r in rows] == pytest.approx(w.end)
    assert np.allclose(w.start, [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.3])
    for r, s in zip(rows, w.scores):
        want = [(clf.labels[i], float(s[i])) for i in np.argsort(-s, kind="stable") if s[i] >= 0.2]
        assert [lab for lab, _ in r["top"]] == [lab for lab, _ in want]
        assert [x for _, x in r["top"]] == pytest.approx([x for _, x in want], abs=1e-6)


def test_bad_requests_are_clear_errors(model, inputs, tmp_path):
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        classify_collection(model, [inputs], tmp_path / "x.txt", progress=False)
    with pytest.raises(ValueError, match="--hop"):
        classify_collection(model, [inputs], tmp_path / "y.csv", hop=5.0, progress=False)
    out = tmp_path / "z.csv"
    classify_collection(model, [inputs], out, top_k=1, workers=0, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        classify_collection(model, [inputs], out, top_k=2, progress=False)
    (tmp_path / "mine.csv").write_text("my own,table\n")
    with pytest.raises(ValueError, match="not written by avssl classify"):
        classify_collection(model, [inputs], tmp_path / "mine.csv", progress=False)
    pretrain = tmp_path / "pretrain.pt"
    save_checkpoint(load_checkpoint(model) | {"kind": None}, pretrain)
    with pytest.raises(CheckpointError, match="avssl finetune"):
        classify_collection(pretrain, [inputs], tmp_path / "w.csv", progress=False)
