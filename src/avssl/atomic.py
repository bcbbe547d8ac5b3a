"""Atomic file writes: a reader never sees a half-written file, even if the writer is killed.

The content goes to a hidden temp file in the same folder (named with the writer's pid, so parallel
writers never share one), which is then renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` atomically from ``write(binary file)``; the temp file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Create ``path`` with ``text`` (UTF-8) atomically."""
    return write_with(path, lambda f: f.write(text.encode()))
