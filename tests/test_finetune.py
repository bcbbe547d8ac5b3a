"""``avssl finetune``: it learns, its model file round-trips, kills and signals resume exactly, bad input is clear.

The task: three classes of tones (class names with a comma, spaces and non-ASCII letters), 8 clips each of
0.6-2.6 s, one folder per class (5-fold cross-validation; fold1 is fine-tuned). ``random-init:tiny`` towers."""

from __future__ import annotations

import json
import logging
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avssl.finetune.classifier import load_classifier
from avssl.cli import main as cli_main
from avssl.config import ConfigError
from avssl.embed.embedder import load_model
from avssl.finetune.run import finetune
from avssl.evaluate.tasks import load_task
from avssl.evaluate.tasks_base import TaskDataError
from avssl.media.video import encode_audio
from conftest import sigkill_when

SR = 16000
CLASSES = {"low, hum": 220.0, "mid tone": 880.0, "höch ♪": 3520.0}
FAST = ["finetune.epochs=4", "finetune.max_steps=0", "finetune.min_epoch_steps=8", "finetune.batch_size=8",
        "finetune.warmup_epochs=0.5"]


def tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * rng.standard_normal()) * t)
            + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write_tone_task(root: Path, per_class: int, seconds: float, step: float) -> Path:
    """One folder per class of :data:`CLASSES`, ``per_class`` tones each, ``seconds + i * step`` long."""
    for c, (name, freq) in enumerate(CLASSES.items()):
        (root / name).mkdir()
        for i in range(per_class):
            encode_audio(root / name / f"clip {i}.wav", tone(freq, seconds + step * i, 100 * c + i), SR)
    return root


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_tone_task(tmp_path_factory.mktemp("tones"), 8, 0.6, 0.25)


def run(task_dir: Path, out: Path, *extra: str, start: str = "random-init:tiny", seed: int = 0) -> dict:
    return finetune(start, f"folder:{task_dir}", out, sets=FAST + list(extra), seed=seed, progress=False)


@pytest.fixture(scope="module")
def full_run(task_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ft") / "full"
    torch.set_num_threads(1)  # as every test (conftest), which module fixtures run before: equal float sums
    return out, run(task_dir, out)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_learns_and_the_model_file_round_trips(task_dir, full_run):
    out, res = full_run
    assert res["test"] >= 0.8, res  # three tones an octave or two apart; chance is 1/3
    assert res["num_train"] + res["num_valid"] + res["num_test"] == 24 and res["num_valid"] > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all("valid_accuracy" in r for r in rows)
    assert res["best_epoch"] == 1 + int(np.argmax([r["valid_accuracy"] for r in rows]))  # first best epoch kept
    import avssl

    clf = avssl.load_classifier(out / "model.pt", device="cpu")
    assert clf.labels == sorted(CLASSES) and not clf.multilabel and clf.info["test"] == res["test"]
    task = load_task(f"folder:{task_dir}")
    test = [ex for ex in task.examples if ex.split == "fold1"]
    from avssl.media.audio import load_audio

    scores = clf.predict([load_audio(ex.path, SR) for ex in test], SR)
    assert np.allclose(scores.sum(1), 1, atol=1e-5)
    acc = np.mean([clf.labels[k] == ex.labels[0] for k, ex in zip(scores.argmax(1), test)])
    assert acc == pytest.approx(res["test"])  # the file predicts what the run measured
    # the same file is a checkpoint for embeddings: avssl embed reads the fine-tuned tower
    emb = load_model(out / "model.pt", device="cpu")
    x = torch.from_numpy(tone(880.0, 1.0, 7))[None]
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(emb.embed(x, SR)), clf.embedder.tower(x))


def test_windows_scores_and_their_mean(full_run):
    clf = load_classifier(full_run[0] / "model.pt", device="cpu")
    long, short = tone(220.0, 3.3, 1), tone(3520.0, 0.4, 2)
    (w,) = clf.predict_windows(long, SR)
    assert np.allclose(w.start, [0.0, 0.5, 1.0, 1.5, 2.0, 2.3]) and np.allclose(w.end, w.start + 1.0)  # 1 s windows
    np.testing.assert_allclose(clf.predict(long, SR)[0], w.scores.mean(0), atol=1e-6)
    (s,) = clf.predict_windows(short, SR)
    assert np.allclose(s.start, [0.0]) and np.allclose(s.end, [0.4])  # end capped at the clip's duration
    both = clf.predict([long, short], SR)  # batch invariant
    np.testing.assert_allclose(both, np.concatenate([clf.predict(long, SR), clf.predict(short, SR)]), atol=1e-6)
    assert clf.top_k(both[1], 2)[0][0] == "höch ♪"


def test_sigterm_mid_epoch_saves_and_resume_equals_uninterrupted(task_dir, full_run, tmp_path, monkeypatch):
    from avssl.finetune.finetuner import Finetuner

    step = Finetuner.step

    def step_then_signal(self, i, x, y):  # a preemption during step 11 (of 32; epochs are 8 steps)
        if i == 10:
            signal.raise_signal(signal.SIGTERM)
        return step(self, i, x, y)

    out = tmp_path / "term"
    monkeypatch.setattr(Finetuner, "step", step_then_signal)
    res = run(task_dir, out)
    monkeypatch.setattr(Finetuner, "step", step)
    assert res == {"stopped": "SIGTERM", "step": 11} and not (out / "model.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    res = finetune("random-init:tiny", f"folder:{task_dir}", out, sets=FAST, seed=0, progress=False, resume=True)
    assert res["test"] == full_run[1]["test"] and res["best_epoch"] == full_run[1]["best_epoch"]
    a, b = _weights(out / "model.pt"), _weights(full_run[0] / "model.pt")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_sigkill_then_resume_equals_uninterrupted(task_dir, full_run, tmp_path):
    """``avssl finetune`` in a subprocess, SIGKILLed once a checkpoint of a seeded random epoch exists."""
    out, kill_at = tmp_path / "killed", random.Random(0).randint(1, 2) * 8  # epochs are 8 steps; 4 in all
    args = ["finetune", "random-init:tiny", "--task", f"folder:{task_dir}", "--out", str(out), "--no-progress",
            "--seed", "0", *[a for kv in FAST for a in ("--set", kv)]]
    def ready() -> bool:
        try:
            return load_checkpoint(out / "checkpoint.pt")["book"]["step"] >= kill_at
        except CheckpointError:  # not written yet
            return False

    returncode = sigkill_when(args, tmp_path / "log.txt", ready)
    assert returncode == -signal.SIGKILL and not (out / "model.pt").exists()
    assert cli_main(args + ["--resume"]) == 0
    a, b = _weights(out / "model.pt"), _weights(full_run[0] / "model.pt")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    got = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (full_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert got == want


def test_onnx_export_scores_equal_torch(full_run, tmp_path):
    pytest.importorskip("onnxruntime")  # a third-party optional dependency
    from avssl.export import onnx_session

    assert cli_main(["export", str(full_run[0] / "model.pt"), "--onnx", str(tmp_path / "clf.onnx")]) == 0
    clf = load_classifier(full_run[0] / "model.pt", device="cpu")
    x = np.stack([tone(f, 1.0, 3) for f in CLASSES.values()])
    got = onnx_session(tmp_path / "clf.onnx").run(None, {"audio": x})[0]
    np.testing.assert_allclose(got, clf.predict(x, SR), atol=1e-4)  # one window each: predict is that window
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)  # softmax scores over the three labels


def test_few_labels_train_without_validation(task_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res = run(task_dir, tmp_path / "few", "finetune.labels_per_class=1")
    assert res["num_train"] == 3 and res["num_valid"] == 0 and res["valid"] is None  # one clip per class
    assert "no validation split" in caplog.text and res["best_epoch"] == 4  # the whole budget, the last epoch


def test_unreadable_files_are_skipped_and_recorded(task_dir, tmp_path):
    import shutil

    bad = tmp_path / "task"
    shutil.copytree(task_dir, bad)
    (bad / "mid tone" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    res = run(bad, tmp_path / "out", "finetune.epochs=1")
    skipped = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in skipped] == ["broken.wav"] and skipped[0]["reason"]
    assert res["skipped"] == 1 and res["num_train"] + res["num_valid"] + res["num_test"] == 24


def test_bad_input_is_a_clear_error(task_dir, full_run, tmp_path):
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for i in range(5):
        encode_audio(one / "only" / f"{i}.wav", tone(440.0, 0.5, i), SR)
    with pytest.raises(TaskDataError, match="one class"):
        run(one, tmp_path / "a")
    with pytest.raises(ConfigError, match="only finetune"):
        run(task_dir, tmp_path / "b", "model.width=2")
    with pytest.raises(ConfigError, match="finetune.batch_size"):
        run(task_dir, tmp_path / "c", "finetune.batch_size=1")
    with pytest.raises(CheckpointError, match="finished run"):
        run(task_dir, full_run[0])
    pretrain_ckpt = tmp_path / "pretrain.pt"
    save_checkpoint(load_checkpoint(full_run[0] / "model.pt") | {"kind": None}, pretrain_ckpt)
    with pytest.raises(CheckpointError, match="not a classifier model file"):
        load_classifier(pretrain_ckpt)
    newer = tmp_path / "newer.pt"
    save_checkpoint(load_checkpoint(full_run[0] / "model.pt") | {"classifier_version": 99}, newer)
    with pytest.raises(CheckpointError, match="upgrade avssl"):
        load_classifier(newer)
