"""An ingest that survives any file: a worker that dies (abort, segfault, SIGKILL) or an input that stalls
past ``ingest.file_timeout`` costs only that input; a re-run does not try it again, ``--retry-failed`` does;
inputs that are not regular files (FIFO, device, broken link) are skipped with a reason, never opened.

Faults are injected by monkeypatching ``avssl.ingest.run.process_item``: the workers are forked, so they run
the patched function. Each faulty call appends a line to a file, so attempts are counted across processes.
"""

import ctypes
import faulthandler
import json
import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import avssl.ingest.run as ingest_mod
from avssl.cli import main as cli_main
from avssl.config import ConfigError, load_config
from avssl.ingest.run import ingest
from avssl.ingest.progress import NodeShards
from avssl.data.shards import read_manifest
from avssl.media.video import encode_video

RATE, FPS = 16000, 10
SETTINGS = {"video.size": 16, "ingest.clip_seconds": 1.0, "ingest.min_seconds": 0.5, "ingest.samples_per_shard": 2}
GOOD = ["a", "b", "c", "d"]  # 1 s each: one clip; "bad" (a good video too) sorts between b and c
STALL_TIMEOUT_S = 2.0
_real_process_item = ingest_mod.process_item


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_corpus")
    for i, name in enumerate(GOOD + ["bad"]):
        frames = np.full((10, 16, 16, 3), 40 * i, np.uint8)
        audio = (0.3 * np.random.default_rng(i).standard_normal(RATE)).astype(np.float32)
        encode_video(root / f"{name}.mp4", frames, FPS, audio, RATE)
    return root


def _cfg(**ingest_overrides):
    ov = dict(SETTINGS, **{f"ingest.{k}": v for k, v in ingest_overrides.items()})
    return load_config(None, [f"{k}={v}" for k, v in ov.items()])


def _tars(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def without_bad(corpus, tmp_path_factory):
    """Shards of a run that never saw the bad file."""
    out = tmp_path_factory.mktemp("without_bad")
    ingest([corpus / f"{n}.mp4" for n in GOOD], out, _cfg(), workers=1, progress=False)
    return _tars(out)


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    """A run with the bad file and no fault."""
    out = tmp_path_factory.mktemp("clean")
    ingest([corpus], out, _cfg(), workers=1, progress=False)
    return out


def _inject(monkeypatch, fault, attempts):
    """Make ``process_item`` commit ``fault`` on the input named bad (in whatever process runs it)."""
    real = ingest_mod.process_item

    def process_item(item, *args):
        if item.video_id == "bad":
            with open(attempts, "a") as f:
                f.write(f"{os.getpid()}\n")
            faulthandler.disable()  # pytest's: no traceback dump on the intended crash
            if fault == "abort":
                os.abort()
            elif fault == "segfault":
                ctypes.string_at(0)
            elif fault == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "stall":
                threading.Event().wait()
        return real(item, *args)

    monkeypatch.setattr(ingest_mod, "process_item", process_item)


def _count(attempts):
    return len(attempts.read_text().splitlines()) if attempts.exists() else 0


def _bad_record(summary, corpus):
    return next(e for e in summary["skipped"] if e["path"] == str(corpus / "bad.mp4"))


SIGNALS = {"abort": "SIGABRT", "segfault": "SIGSEGV", "sigkill": "SIGKILL"}


@pytest.mark.parametrize("workers,fault", [(1, "abort"), (3, "abort"), (1, "segfault"), (2, "sigkill")])
def test_crash_costs_only_its_input(corpus, without_bad, clean, tmp_path, monkeypatch, workers, fault):
    out, attempts = tmp_path / "out", tmp_path / "attempts"
    cfg = _cfg(file_timeout=0)  # no time limit: the crash alone must be caught
    _inject(monkeypatch, fault, attempts)
    m = ingest([corpus], out, cfg, workers=workers, progress=False)
    assert _bad_record(m, corpus)["reason"] == "crashed"
    assert SIGNALS[fault] in _bad_record(m, corpus)["detail"]
    assert m["skipped_by_reason"] == {"crashed": 1} and m["total_samples"] == 4
    assert _tars(out) == without_bad  # every other input, in input order, byte for byte
    assert _count(attempts) == 1 and multiprocessing.active_children() == []

    ingest([corpus], out, cfg, workers=workers, progress=False)  # a re-run does not try it again
    assert _count(attempts) == 1 and _tars(out) == without_bad

    m = ingest([corpus], out, cfg, workers=workers, progress=False, retry_failed=True)  # asked: tried, crashes
    assert _count(attempts) == 2 and _bad_record(m, corpus)["reason"] == "crashed" and _tars(out) == without_bad

    monkeypatch.setattr(ingest_mod, "process_item", _real_process_item)  # the fault is gone (a fixed FFmpeg)
    sets = [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
    assert cli_main(["ingest", str(corpus), "--out", str(out), "--no-progress", "--workers", str(workers),
                     "--retry-failed", *sets]) == 0  # fmt: skip
    assert _tars(out) == _tars(clean) and read_manifest(out) == read_manifest(clean)
    assert not list(out.glob("*.tmp")) and not list((out / ".ingest").glob("spool-*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_stall_times_out(corpus, without_bad, clean, tmp_path, monkeypatch, workers):
    out, attempts = tmp_path / "out", tmp_path / "attempts"
    cfg = _cfg(file_timeout=STALL_TIMEOUT_S)
    _inject(monkeypatch, "stall", attempts)
    m = ingest([corpus], out, cfg, workers=workers, progress=False)
    assert _bad_record(m, corpus) == {"path": str(corpus / "bad.mp4"), "reason": "timeout",
                                      "detail": f"no result within {STALL_TIMEOUT_S:g} s; the worker was killed "
                                                "(ingest.file_timeout)"}  # fmt: skip
    assert m["total_samples"] == 4 and _tars(out) == without_bad
    ingest([corpus], out, cfg, workers=workers, progress=False)
    assert _count(attempts) == 1
    monkeypatch.setattr(ingest_mod, "process_item", _real_process_item)
    ingest([corpus], out, cfg, workers=workers, progress=False, retry_failed=True)
    assert _tars(out) == _tars(clean) and read_manifest(out) == read_manifest(clean)


def test_interrupted_run_keeps_the_crash_record(corpus, without_bad, tmp_path, monkeypatch):
    """Killed after the bad input crashed but before a shard recorded it: the progress file already lists
    it as failed, so the resumed run does not try it again (it lies after the last finished shard)."""
    out, attempts = tmp_path / "out", tmp_path / "attempts"
    _inject(monkeypatch, "abort", attempts)
    real_add = NodeShards.add_item

    def interrupted(self, idx, *args):
        if idx == 4:  # a, b fill shard 0; bad crashed; c is in the open shard
            raise KeyboardInterrupt
        return real_add(self, idx, *args)

    monkeypatch.setattr(NodeShards, "add_item", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest([corpus], out, _cfg(), workers=2, progress=False)
    assert multiprocessing.active_children() == []  # the pool ended with the error
    state = json.loads((out / ".ingest" / "node-0000-of-0001.json").read_text())
    assert [s["next"] for s in state["shards"]] == [[2, 0]] and list(state["failed"]) == ["2"]
    assert state["failed"]["2"]["reason"] == "crashed"

    monkeypatch.setattr(NodeShards, "add_item", real_add)
    m = ingest([corpus], out, _cfg(), workers=2, progress=False)
    assert _count(attempts) == 1  # not tried again
    assert _tars(out) == without_bad and m["skipped_by_reason"] == {"crashed": 1}


@pytest.mark.parametrize("value", ["-1", ".nan"])
def test_file_timeout_checked_at_load(value):
    with pytest.raises(ConfigError, match="ingest.file_timeout=.*must be >= 0"):
        load_config(None, [f"ingest.file_timeout={value}"])
    assert load_config(None, ["ingest.file_timeout=0"]).ingest.file_timeout == 0.0  # no limit


@contextmanager
def _alarm(seconds):
    """Fail instead of hanging forever if something opens a FIFO."""

    def fail(*_):
        raise TimeoutError("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_not_regular_files_are_skipped_never_opened(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes((corpus / "a.mp4").read_bytes())
    os.mkfifo(folder / "pipe.mp4")
    (folder / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    os.mkfifo(tmp_path / "list.txt")  # a list file that is a FIFO
    (tmp_path / "more.txt").write_text("in/pipe.mp4\n")
    with _alarm(120):
        m = ingest([folder, "/dev/zero", tmp_path / "list.txt", tmp_path / "more.txt"], tmp_path / "out", _cfg(),
                   workers=1, progress=False)  # fmt: skip
    assert m["total_samples"] == 1 and m["ingested_inputs"] == 1
    details = sorted((e["path"], e["reason"], e["detail"]) for e in m["skipped"])
    assert details == sorted([
        (str(folder / "pipe.mp4"), "unreadable", "not a regular file: fifo"),
        (str(folder / "gone.mp4"), "unreadable", f"broken symbolic link to {tmp_path / 'nowhere.mp4'}"),
        ("/dev/zero", "unreadable", "not a regular file: character device"),
        (str(tmp_path / "list.txt"), "unreadable", "not a regular file: fifo"),
        (str(folder / "pipe.mp4"), "unreadable", f"listed in {tmp_path / 'more.txt'}: not a regular file: fifo"),
    ])  # fmt: skip
