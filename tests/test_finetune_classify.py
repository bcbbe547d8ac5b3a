"""``avssl classify``: rows equal the classifier's own scores, bad files are recorded, runs resume, labels survive CSV."""

from __future__ import annotations

import csv
import io
import json
import os
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



NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff.wav")  # two bytes that are not UTF-8: Python holds them as U+DCE9, U+DCFF
SEPARATORS = ["b\u2028x.wav", "c\u2029x.wav", "d\x85x.wav", "e\rx.wav", "f\nx.wav"]  # str.splitlines breaks at each


def _clips(folder: Path, names: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(names):
        encode_audio(folder / name, tone(list(CLASSES.values())[k % 3], 0.4 + 0.1 * k, 50 + k), SR)
    return folder


@pytest.fixture(scope="module")
def separated(tmp_path_factory) -> Path:
    """Short clips whose names hold characters that ``str.splitlines`` breaks at (``\\n`` too)."""
    return _clips(tmp_path_factory.mktemp("separators"), ["a.wav", *SEPARATORS, "z.wav"])


def _classify(model, folder, out) -> list[dict]:
    return classify_collection(model, [folder], out, top_k=3, workers=0, progress=False)


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
def test_a_name_that_is_not_utf8_costs_nothing_and_is_written_escaped(model, tmp_path, fmt):
    folder = _clips(tmp_path / "in", ["a.wav", NOT_UTF8, "z.wav"])
    out = tmp_path / f"labels{fmt}"
    rows = _classify(model, folder, out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    data = out.read_bytes()
    escaped = str(folder / "caf\\udce9 \\udcff.wav")  # the text index.jsonl (json.dumps) holds too
    if fmt == ".csv":
        names = [r["input"] for r in csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))]
    else:
        names = [json.loads(line)["input"] for line in data.decode("utf-8").split("\n")[:-1]]
        assert escaped.encode() in data and json.dumps(str(folder / NOT_UTF8)).encode() in data
    assert names == [str(folder / "a.wav"), str(folder / NOT_UTF8) if fmt == ".jsonl" else escaped,
                     str(folder / "z.wav")]
    assert _classify(model, folder, out) == [] and out.read_bytes() == data  # every row recognised as done


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
def test_names_with_line_separators_resume_without_duplicates(model, separated, tmp_path, fmt):
    out = tmp_path / f"labels{fmt}"
    _classify(model, separated, out)
    data = out.read_bytes()
    if fmt == ".csv":
        names = [r["input"] for r in csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))]
        assert names == [str(separated / n) for n in ["a.wav", *SEPARATORS, "z.wav"]]
    assert _classify(model, separated, out) == [] and out.read_bytes() == data
    cut = data.index(b"f\nx.wav" if fmt == ".csv" else b"f\\nx.wav") + 2  # inside the row, after its (quoted) \n
    out.write_bytes(data[:cut])
    redone = _classify(model, separated, out)
    assert [Path(r["input"]).name for r in redone] == ["f\nx.wav", "z.wav"] and out.read_bytes() == data


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
def test_an_output_cut_inside_a_multibyte_character_resumes(model, inputs, tmp_path, fmt):
    out = tmp_path / f"labels{fmt}"
    _classify(model, inputs, out)
    data = out.read_bytes()
    note = "♪".encode()  # three bytes; a kill or a full disk cuts bytes: here after the first, in the last row
    out.write_bytes(data[: data.rindex(note) + 1])
    redone = _classify(model, inputs, out)
    assert [Path(r["input"]).name for r in redone] == ["clip, nº2 ♪.wav"] and out.read_bytes() == data


def test_onnx_pads_a_short_clip_as_predict_does(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from avssl.export import export_onnx

    clf = load_classifier(model, device="cpu")
    path = export_onnx(clf, tmp_path / "clf.onnx")  # its own check compares with predict, half a window too
    x = np.stack([tone(f, clf.window_seconds / 2, 7) for f in CLASSES.values()])  # half a window each
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"audio": x})[0]
    np.testing.assert_allclose(got, clf.predict(x, SR), atol=1e-4, rtol=0)
