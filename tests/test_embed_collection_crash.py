"""``avssl embed`` and ``avssl classify`` over collections survive any file: a decoder that aborts or stalls past
``--file-timeout`` costs only its file (recorded as skipped, ``crashed`` / ``timeout``), and inputs that are not
regular files (a FIFO, a broken link) are skipped with their reason without being opened; every other file's
output equals a run without the bad ones.

Faults are injected by monkeypatching ``avssl.embed.collection.load_audio``: the decoding workers are forked, so they
run the patched function."""

from __future__ import annotations

import faulthandler
import os
import time
from pathlib import Path

import numpy as np
import pytest

import avssl.embed.collection as collection
from avssl.finetune.classify import classify_collection
from avssl.embed.collection import embed_collection
from avssl.media.video import encode_audio
from test_finetune_classify import model  # noqa: F401  # pyflakes: ignore  (a fixture: a fine-tuned classifier)
from test_embed import make_checkpoint

_real_load_audio = collection.load_audio


def _faulty(path, sample_rate):
    if "abort" in Path(path).name:
        faulthandler.disable()  # no traceback dump from the dying worker
        os.abort()
    if "stall" in Path(path).name:
        time.sleep(3600)  # the worker is killed at the file timeout
    return _real_load_audio(path, sample_rate)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b abort.wav", "c.wav", "d stall.wav", "e.wav"):
        encode_audio(root / name, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    os.mkfifo(root / "f fifo.wav")  # would block any reader forever
    (root / "g link.wav").symlink_to(root / "gone.wav")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_embed_survives_crashing_and_stalling_decoders(folder, tmp_path, monkeypatch, workers):
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    clean = tmp_path / "clean"
    good = [folder / n for n in ("a.wav", "c.wav", "e.wav")]
    embed_collection(ckpt, good, clean, workers=workers, progress=False)
    monkeypatch.setattr(collection, "load_audio", _faulty)
    rows = embed_collection(ckpt, [folder], tmp_path / "out", workers=workers, progress=False, file_timeout=2.0)
    by_name = {Path(r["input"]).name: r for r in rows}
    assert by_name["b abort.wav"]["reason"].startswith("crashed: ") and "SIGABRT" in by_name["b abort.wav"]["reason"]
    assert by_name["d stall.wav"]["reason"].startswith("timeout")
    assert by_name["f fifo.wav"]["reason"] == "not a regular file: fifo"
    assert by_name["g link.wav"]["reason"].startswith("broken symbolic link")
    assert [n for n, r in sorted(by_name.items()) if r["status"] == "ok"] == ["a.wav", "c.wav", "e.wav"]
    for p in good:
        with np.load(tmp_path / "out" / by_name[p.name]["output"]) as got, \
                np.load(clean / "embeddings" / f"{p.name}.npz") as want:
            np.testing.assert_array_equal(got["embedding"], want["embedding"])


def test_classify_survives_crashing_and_stalling_decoders(folder, model, tmp_path, monkeypatch):  # noqa: F811
    good = [folder / n for n in ("a.wav", "c.wav", "e.wav")]
    classify_collection(model, good, tmp_path / "clean.jsonl", workers=1, progress=False)
    monkeypatch.setattr(collection, "load_audio", _faulty)
    rows = classify_collection(model, [folder], tmp_path / "out.jsonl", workers=1, file_timeout=2.0, progress=False)
    by_name = {Path(r["input"]).name: r for r in rows}
    assert by_name["b abort.wav"]["reason"].startswith("crashed: ") and by_name["d stall.wav"]["reason"].startswith(
        "timeout") and by_name["f fifo.wav"]["reason"] == "not a regular file: fifo"
    clean = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert [line for line in (tmp_path / "out.jsonl").read_text().splitlines() if '"ok"' in line] == clean
