"""A real kill: ``avssl ingest`` in a subprocess gets SIGKILL at a seeded random moment, then runs again.

Nothing finished is lost or written twice, no partial file looks finished, and the final shards equal
those of an uninterrupted run byte for byte (so sample for sample). The only waiting is polling, with a
bounded loop, for the progress file to record the chosen number of finished shards.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from avssl.config import load_config
from avssl.ingest.run import ingest
from avssl.data.shards import read_manifest
from avssl.media.video import encode_video

RATE, FPS = 16000, 10
SETTINGS = {"video.size": 16, "ingest.clip_seconds": 1.0, "ingest.min_seconds": 0.5, "ingest.samples_per_shard": 2}
POLL_LIMIT_S = 300.0  # a bound on the polling loop only; nothing here asserts speed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 videos of 2.5 s (3 clips each: 36 shards of 2) plus two bad inputs."""
    root = tmp_path_factory.mktemp("kill_corpus")
    for i in range(24):
        frames = np.full((25, 16, 16, 3), (11 * i) % 256, np.uint8)
        audio = (0.3 * np.random.default_rng(i).standard_normal(int(2.5 * RATE))).astype(np.float32)
        encode_video(root / f"v{i:02d}.mp4", frames, FPS, audio, RATE)
    (root / "v05x_empty.mp4").write_bytes(b"")
    (root / "v17x_text.mp4").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill_reference")
    ingest([corpus], out, load_config(None, [f"{k}={v}" for k, v in SETTINGS.items()]), workers=1, progress=False)
    return out


def _command(corpus, out, workers):
    sets = [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "avssl", "ingest", str(corpus), "--out", str(out), "--no-progress",
            "--workers", str(workers), *sets]  # fmt: skip


def _finished(out):
    """Shards the progress file records as finished (it is replaced atomically, so it is whole when present)."""
    state = out / ".ingest" / "node-0000-of-0001.json"
    return json.loads(state.read_text())["shards"] if state.is_file() else []


def _run_and_kill(cmd, out, after_shards):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + POLL_LIMIT_S
    while len(_finished(out)) < after_shards and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # polling for the file, not timing
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"


def _tars(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.parametrize("workers,seed", [(1, 0), (2, 1)])
def test_sigkill_then_resume(corpus, reference, tmp_path, workers, seed):
    ref = _tars(reference)
    assert len(ref) == 36
    rng = np.random.default_rng(seed)
    out = tmp_path / "out"
    cmd = _command(corpus, out, workers)
    kept = {}
    for kill_after in sorted(rng.integers(1, 12, size=2)) + [None]:
        if kill_after is None:
            assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
            break
        _run_and_kill(cmd, out, len(kept) + kill_after)
        assert not (out / "manifest.json").exists()  # an interrupted run never looks finished
        # every file that looks like a shard is a whole, correct shard (partial ones are only *.tmp)
        assert all(data == ref[name] for name, data in _tars(out).items())
        finished = [s["name"] for s in _finished(out)]
        assert set(kept) <= set(finished) and set(finished) <= set(_tars(out))  # nothing finished is lost
        for name in kept:  # ... nor written again by the resumed run
            assert (out / name).stat().st_mtime_ns == kept[name]
        kept = {name: (out / name).stat().st_mtime_ns for name in finished}
    assert _tars(out) == ref
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())
    assert read_manifest(out) == read_manifest(reference)
    assert not list(out.glob("*.tmp")) and not list((out / ".ingest").glob("spool-*"))
