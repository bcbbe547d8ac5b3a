"""Finding media for ingest: files, folders, list files and AudioSet/VGGSound segment CSVs.

:func:`collect_items` turns the inputs into sorted *items* (a file, or a segment of one), each with a
video id that is unique and safe as a WebDataset key prefix: only ``[A-Za-z0-9_-]`` (dots and slashes
would split WebDataset keys), at most ``MAX_ID_CHARS`` characters (longer ones keep their start and
gain a hash of the full name), so any file name and folder depth works.

Only regular files become items. Anything else named as an input, listed, or found in a folder with
a media suffix (a FIFO, which would block the reader forever; a device such as ``/dev/zero``, which
never ends; a socket; a broken symbolic link) is a skip record (reason ``unreadable``, the detail says
what it is), found with ``stat`` alone: it is never opened.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from avssl.media.audio import LIST_SUFFIXES, MEDIA_SUFFIXES

VGGSOUND_SEGMENT_SECONDS = 10.0  # vggsound.csv rows give only a start; segments are 10 s long
# Every tar member name ``{id}-{clip:04d}.{ext}`` then fits the 100 bytes of a plain ustar header.
MAX_ID_CHARS = 90
_HASH_CHARS = 8


@dataclass(frozen=True)
class Item:
    """One unit of work: a media file, or the segment ``[start, start + duration)`` of it."""

    video_id: str
    path: str
    start: float = 0.0
    duration: float | None = None
    labels: tuple[str, ...] = ()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:_HASH_CHARS]


def _with_suffix(vid: str, suffix: str) -> str:
    """``{vid}_{suffix}``, ``vid`` cut so that the result has at most ``MAX_ID_CHARS`` characters."""
    return f"{vid[: MAX_ID_CHARS - len(suffix) - 1]}_{suffix}"


def _sanitize(text: str) -> str:
    """A WebDataset-safe id of at most ``MAX_ID_CHARS`` characters: only ``[A-Za-z0-9_-]`` (dots and slashes
    split keys); a longer one keeps its start plus a hash of ``text``."""
    vid = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"
    return vid if len(vid) <= MAX_ID_CHARS else _with_suffix(vid, _digest(text))


def media_entries(folder: Path) -> list[Path]:
    """Everything under ``folder`` (recursively) with a media suffix that is not a folder, sorted; hidden
    names (``.name``, e.g. macOS ``._clip.wav`` resource forks) are skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in MEDIA_SUFFIXES and not p.name.startswith(".") and not p.is_dir())


def media_files(folder: Path) -> list[Path]:
    """Media files under ``folder`` (recursively, by suffix; regular files only), sorted; hidden files
    (``.name``, e.g. macOS ``._clip.wav`` resource forks) are skipped."""
    return [p for p in media_entries(folder) if p.is_file()]


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))  # fmt: skip


def not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be read as a media file without opening it (``stat`` only: a FIFO would block
    ``open`` forever), e.g. ``"not a regular file: fifo"``; None for a regular file (or a link to one)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"broken symbolic link to {os.readlink(path)}" if path.is_symlink() else "no such file or directory"
    except OSError as e:
        return str(e)
    if stat.S_ISREG(mode):
        return None
    return "not a regular file: " + next((kind for test, kind in _KINDS if test(mode)), f"mode {mode:o}")


def list_file_entries(path: Path) -> list[tuple[str, Path]]:
    """A list file's entries, ``(line, path)`` for each line that is not blank or a ``#`` comment; relative
    paths are relative to the list file, non-UTF-8 bytes survive (surrogateescape). Raises ``OSError``."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line, Path(line) if Path(line).is_absolute() else path.parent / line))
    return out


def read_segments(csv_path: str | Path) -> list[tuple[str, float, float, tuple[str, ...]]]:
    """Rows ``(video_id, start_s, end_s, labels)`` of an AudioSet- or VGGSound-style CSV.

    AudioSet: ``YTID, start_seconds, end_seconds, "label1,label2"`` with ``#`` comment lines.
    VGGSound: ``YTID,start,label,split`` (no end: segments are 10 s). Header rows are skipped.
    """
    rows = []
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#") or len(row) < 2:
                continue
            try:
                start = float(row[1])
            except ValueError:
                if line_no == 1:
                    continue  # header
                raise ValueError(f"{csv_path}:{line_no}: start {row[1]!r} is not a number") from None
            try:
                end = float(row[2]) if len(row) > 2 else start + VGGSOUND_SEGMENT_SECONDS
                labels = row[3] if len(row) > 3 else ""
            except ValueError:  # VGGSound: the third column is the label
                end, labels = start + VGGSOUND_SEGMENT_SECONDS, row[2]
            label_list = tuple(x.strip() for x in labels.split(",") if x.strip())
            rows.append((row[0].strip(), start, end, label_list))
    return rows


def _segment_items(csv_path: Path, pool: list[Path]) -> tuple[list[Item], list[dict[str, str]]]:
    """Map segment rows to local files: ``ID.ext`` (full video: cut the segment) or an already cut
    ``ID_STARTMS_ENDMS.ext`` / ``ID_START_END.ext`` (VGGSound/AudioSet download names: whole file)."""
    by_stem: dict[str, Path] = {}
    for p in pool:
        by_stem.setdefault(p.stem, p)
    items, skipped = [], []
    for vid, start, end, labels in read_segments(csv_path):
        seg_id = f"{vid}_{int(round(start * 1000))}_{int(round(end * 1000))}"
        precut = [seg_id, f"{vid}_{int(start)}_{int(end)}", f"{vid}_{start:.3f}_{end:.3f}"]
        if vid in by_stem:
            items.append(Item(_sanitize(seg_id), str(by_stem[vid]), start, end - start, labels))
        elif found := next((by_stem[s] for s in precut if s in by_stem), None):
            items.append(Item(_sanitize(seg_id), str(found), 0.0, end - start, labels))
        else:
            skipped.append({"path": f"{csv_path}:{vid}", "reason": "not-found", "detail": f"no file named {vid}.* or {seg_id}.*"})
    return items, skipped


def collect_items(inputs: list[str | Path]) -> tuple[list[Item], list[dict[str, str]]]:
    """Inputs -> sorted, de-duplicated items with unique ids, plus unreadable inputs as skip records.

    With a segment CSV among the inputs, the other inputs (and the CSV's folder) are only where its
    videos are looked up; only the listed segments are ingested.
    """
    files: list[tuple[str, Path]] = []  # (id stem, path)
    csvs: list[Path] = []
    skipped: list[dict[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in media_entries(p):
                if why := not_regular(f):
                    skipped.append({"path": str(f), "reason": "unreadable", "detail": why})
                else:
                    files.append((str(f.relative_to(p).with_suffix("")), f))
        elif why := not_regular(p):  # before the suffix: a list file or CSV may be a FIFO too
            skipped.append({"path": str(p), "reason": "unreadable", "detail": why})
        elif p.suffix.lower() == ".csv":
            csvs.append(p)
        elif p.suffix.lower() in LIST_SUFFIXES:
            try:
                entries = list_file_entries(p)
            except OSError as e:
                skipped.append({"path": str(p), "reason": "unreadable", "detail": f"list file: {e}"})
                entries = []
            for line, f in entries:
                if why := not_regular(f):
                    skipped.append({"path": str(f), "reason": "unreadable", "detail": f"listed in {p}: {why}"})
                else:
                    files.append((str(Path(line).with_suffix("")), f))
        else:
            files.append((p.stem, p))
    items: list[Item] = []
    if csvs:
        pool = sorted({f for _, f in files} | {f for c in csvs for f in media_files(c.parent)})
        for c in csvs:
            found, missing = _segment_items(c, pool)
            items += found
            skipped += missing
    else:
        seen = set()
        for stem, f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                items.append(Item(_sanitize(stem), str(f)))
    items = sorted(set(items), key=lambda it: (it.video_id, it.path, it.start))
    counts = Counter(it.video_id for it in items)
    items = [
        it if counts[it.video_id] == 1 else
        Item(_with_suffix(it.video_id, _digest(f"{it.path}@{it.start}")), it.path, it.start, it.duration, it.labels)
        for it in items
    ]  # fmt: skip
    return sorted(items, key=lambda it: it.video_id), skipped


