"""The benchmark scripts' own plumbing (the measurements themselves are not tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from avssl.embed.collection import collect_inputs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_speed_lists_files_of_a_relative_data_root(tmp_path, monkeypatch):
    """``benchmarks/speed.py --data-root ../shared/data`` (relative, as BENCHMARKS.md runs it) writes its list file
    in a temporary folder; the list must name files that exist from there (it resolves relative lines against its
    own folder), not one skipped file after another."""
    speed = _script("speed")
    berklee = tmp_path / "data" / "unlabeled_audio" / "berklee"
    berklee.mkdir(parents=True)
    for name in ("b.opus", "a.opus", "c.opus"):
        (berklee / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path / "data")
    files = speed.opus_files(Path("../data"), 2)
    assert files == [berklee / "a.opus", berklee / "b.opus"]
    (tmp_path / "elsewhere").mkdir()
    listing = speed.write_listing([Path("../data/unlabeled_audio/berklee/c.opus")], tmp_path / "elsewhere" / "x.txt")
    assert [p for p, _ in collect_inputs([listing])] == [berklee / "c.opus"]
