"""``avssl embed`` killed with SIGKILL part-way and run again: nothing finished is lost or written twice, no
partial output looks finished, and the final embeddings equal an uninterrupted run's exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from avssl.media.video import encode_audio
from test_embed import make_checkpoint

FILES = 80


def _embed(ckpt: Path, inputs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "avssl", "embed", str(ckpt), str(inputs), "--out", str(out), "--timestamps",
            "--device", "cpu", "--threads", "1", "--workers", "1", "--no-progress"]


def _finished(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.npz"))}


def test_sigkill_then_resume_loses_nothing_and_matches_an_uninterrupted_run(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt", seed=5)
    media = tmp_path / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    for i in range(FILES):
        encode_audio(media / f"{i:03d}.wav", (rng.standard_normal(16000 * 2 + 97 * i) * 0.1).astype(np.float32), 16000)

    reference = tmp_path / "reference"
    subprocess.run(_embed(ckpt, media, reference), check=True, capture_output=True)

    out = tmp_path / "out"
    proc = subprocess.Popen(_embed(ckpt, media, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:  # bounded poll: kill once outputs exist
            if len(list((out / "embeddings").glob("media/*.npz"))) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed; give it more files"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _finished(out)
    assert 3 <= len(before) < FILES
    for name, data in before.items():  # every file under a final name is complete
        with np.load(out / name) as z:
            assert {"embedding", "timestamps", "timestamp_embeddings", "input", "seconds"} <= set(z.files)
    assert not (out / "index.jsonl").exists()  # the index is written at the end only
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert all(p.name.endswith(".tmp") for p in leftovers)  # a partial file never has a final name

    subprocess.run(_embed(ckpt, media, out), check=True, capture_output=True)
    after = _finished(out)
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    status = {r["output"]: r["status"] for r in rows}
    assert len(rows) == FILES and set(status.values()) <= {"ok", "done"}
    for name, data in before.items():  # kept byte for byte, reported as done, not recomputed
        assert after[name] == data and status[name] == "done"
    assert sum(s == "ok" for s in status.values()) == FILES - len(before)
    assert not [p for p in out.rglob("*.tmp")]  # leftovers of the killed run are gone
    expected = _finished(reference)
    assert sorted(after) == sorted(expected)
    for name in expected:
        with np.load(out / name) as got, np.load(reference / name) as ref:
            for key in ("embedding", "timestamps", "timestamp_embeddings", "seconds"):
                np.testing.assert_array_equal(got[key], ref[key])
