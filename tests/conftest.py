"""Shared fixtures. Tests generate their own data; real-data tests skip when ../shared/data is absent."""

from __future__ import annotations

import os
from pathlib import Path

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
