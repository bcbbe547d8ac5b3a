"""Atomic writes: the target appears whole or not at all, and a failed write leaves nothing behind."""

from __future__ import annotations

import pytest

from avssl.atomic import write_text, write_with


def test_write_text_replaces_whole(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.bin"
    write_with(path, lambda f: f.write(b"good"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_with(path, broken)
    assert path.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
