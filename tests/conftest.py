"""Shared fixtures. Tests generate their own data; real-data tests skip when ../shared/data is absent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$AVSSL_SHARED_DATA``, else ``../shared/data`` beside the repository root."""
    return Path(os.environ.get("AVSSL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "README.md").is_file():
        pytest.skip(f"real data not found at {root} (set AVSSL_SHARED_DATA to use it)")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process: the suite runs under pytest-xdist with a worker per core,
    and oversubscribed threads spin (measured 10x slower steps on a loaded 2-core machine)."""
    torch.set_num_threads(1)
    yield


def sigkill_when(args: list[str], log_path: Path, ready: Callable[[], bool]) -> int:
    """Run ``python -m avssl ARGS`` (one torch thread, its own process group), SIGKILL the whole group as soon as
    ``ready()`` holds (polled every 20 ms, bounded; the test fails if the run ends first) and return its exit code."""
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "avssl", *args], stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            for _ in range(20000):  # bounded poll (wait() returns early if the run ends)
                if ready():
                    break
                with pytest.raises(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.02)
            else:
                pytest.fail("the run never reached the point to kill it at")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
