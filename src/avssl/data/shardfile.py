"""Opening a shard file for :func:`avssl.data.shards.iter_samples`: memory-mapped where that is safe, else read.

A memory map turns a read error into SIGBUS, which no Python code can catch: the process dies (a DataLoader
worker, and with it the run). So a local shard is mapped (zero-copy members: the shuffle buffer holds views,
page cache rather than memory) only where mapping is safe, and read with ordinary reads elsewhere:

- a file on a network or FUSE file system (:data:`NON_LOCAL_FS`, or any ``fuse.*`` type, as named for the
  file's mount in ``/proc/mounts``) is read, never mapped: a page the server cannot deliver would be SIGBUS;
- where the file-system type is unknown (no ``/proc/mounts``: not Linux), or ``mmap`` is refused, it is read;
- a mapped file that shrinks (truncated while a run reads it) is checked before pages are touched: each read
  of the tar stream compares its end with the file's current size, and a sample's views carry the file and
  the end offset of the sample (``__mapped__``, :class:`MappedSpan`), which :func:`check_mapped` compares with
  the current size before a decoder touches them. Either way a truncated shard is an error (a warning and a
  skip in the loader), not SIGBUS. What is left: a truncation in the microseconds between that check and the
  decode of the same sample.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import tarfile
from pathlib import Path
from typing import IO, Any, NamedTuple

log = logging.getLogger(__name__)

# file-system types (as in /proc/mounts) whose pages may fail to load: network and FUSE file systems
NON_LOCAL_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs", "lustre", "gpfs", "afs",
    "ncpfs", "fuse", "fuseblk", "sshfs", "davfs",
})  # fmt: skip
MOUNTS = "/proc/mounts"
_told: set[str] = set()  # reasons already logged (once per process)


def mount_fs_type(path: str | Path, mounts: str | Path = MOUNTS) -> str | None:
    """The file-system type of the mount that holds ``path`` (the longest mount point containing its real path;
    of mounts stacked on one point, the last listed), or None when ``mounts`` cannot be read."""
    real = os.path.realpath(path)
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 is a space
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def map_unsafe(path: str | Path) -> str | None:
    """Why ``path`` must not be memory-mapped (its file system, or an unknown one), or None where mapping is safe."""
    kind = mount_fs_type(path)
    if kind is None:
        return f"the file-system type is unknown ({MOUNTS} unreadable)"
    if kind in NON_LOCAL_FS or kind.startswith("fuse."):
        return f"on a {kind} file system, where a page error would kill the process"
    return None


class MappedSpan(NamedTuple):
    """Where a sample's memory-mapped views point: the file (path and identity) and the end of its last member."""

    path: str
    dev: int
    ino: int
    end: int


class MappedShard:
    """A local shard file, memory-mapped and read like a stream: ``read`` returns zero-copy memoryview slices,
    after checking that the file still holds them (a read past its current end raises ``tarfile.ReadError``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb")
        try:
            st = os.fstat(self._file.fileno())
            self.view = memoryview(mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ))
        except BaseException:
            self._file.close()
            raise
        self.dev, self.ino = st.st_dev, st.st_ino
        self.pos = 0

    def read(self, n: int) -> memoryview:
        end = min(self.pos + n, len(self.view))
        size = os.fstat(self._file.fileno()).st_size
        if end > size:
            raise tarfile.ReadError(f"truncated while being read: the file shrank from {len(self.view)} to {size} "
                                    f"bytes (bytes {self.pos}-{end} are gone); re-ingest or restore the shard")
        out = self.view[self.pos : end]
        self.pos = end
        return out

    def span(self) -> MappedSpan:
        """The span of the views read so far (to :func:`check_mapped` before they are touched)."""
        return MappedSpan(self.path, self.dev, self.ino, self.pos)

    def __enter__(self) -> "MappedShard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()  # the map, and the views handed out, stay valid


def open_local(path: str) -> MappedShard | IO[bytes]:
    """``path`` memory-mapped (:class:`MappedShard`) where that is safe (see the module docstring), else opened
    for ordinary reads (members are then ``bytes``); either is a context manager with ``read(n)``."""
    why = map_unsafe(path)
    if why is None:
        try:
            return MappedShard(path)
        except (OSError, ValueError) as e:  # mmap refused (a file system without mmap, a special file)
            why = f"mmap refused ({type(e).__name__}: {e})"
    if why not in _told:
        _told.add(why)
        log.info("%s: %s; shards there are read with ordinary reads, not memory-mapped", path, why)
    return open(path, "rb")


def check_mapped(sample: dict[str, Any]) -> None:
    """Raise ``OSError`` if the file behind a sample's memory-mapped views (``sample["__mapped__"]``) has shrunk
    below them: touching them would be SIGBUS. A file replaced (renamed over) or removed since is fine: the map
    keeps the old one. Samples read without a map pass."""
    span: MappedSpan | None = sample.get("__mapped__")
    if span is None:
        return
    try:
        st = os.stat(span.path)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == (span.dev, span.ino) and st.st_size < span.end:
        raise OSError(f"{span.path}: truncated to {st.st_size} bytes after sample {sample.get('__key__')!r} "
                      f"(ending at byte {span.end}) was read; re-ingest or restore the shard")
