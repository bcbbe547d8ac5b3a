"""The shard schema: one WebDataset sample per clip, and the folder's ``manifest.json``.

A shard folder holds ``NNNNNN.tar`` files (WebDataset-compatible tar archives) and
``manifest.json``. A sample is a group of tar members sharing the key ``{video_id}-{clip:04d}``:

- audio, mono 16-bit at ``sample_rate``: ``<key>.flac`` (FLAC, the default) or ``<key>.pcm`` (raw
  int16, json ``audio_format: "pcm"``; no json field means FLAC)
- ``<key>.json``  metadata: source path, start and duration (seconds in the source), labels if
  any, plus the storage fields below
- frames, one member whose extension names the format (absent for audio-only samples):
  ``<key>.jpgs`` one baseline JPEG per frame, concatenated (byte lengths in json
  ``frame_bytes``); ``<key>.npy`` raw ``uint8[T, H, W, 3]``; ``<key>.mp4`` an H.264 stream.

The formats themselves (encoders, windowed decoders, what each costs) are :mod:`avssl.data.storage`.
This module is the only place that knows the member layout: use :func:`encode_sample` /
:func:`decode_sample` (and :func:`sample_info` to read a sample's lengths without decoding it),
:class:`ShardWriter` to write a shard sample by sample and :func:`iter_samples` to read shards.
``decode_sample`` takes the dict WebDataset yields without decoders (keys without the leading dot,
values ``bytes``). It can decode a time window only (the window's frames and audio samples) and
skip the frames entirely: a training crop of 3 s from a 10 s clip costs about a third of a full decode.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from avssl.data.storage import (AUDIO_FORMATS, AUDIO_MEMBER, FRAME_FORMATS, FRAME_MEMBER, StorageError, decode_audio,
                      decode_frames, encode_audio, encode_frames)  # fmt: skip
from avssl.data.shardfile import MappedShard, check_mapped, open_local

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A malformed sample or manifest; the message names what is wrong and what to do."""


@dataclass
class Clip:
    """One training example: aligned audio and low-resolution frames.

    key:    ``{video_id}-{clip:04d}``
    audio:  float32[N] mono at ``sample_rate`` Hz; sample j is at ``j / sample_rate`` s from the clip start
    frames: uint8[T, H, W, 3] RGB; frame i shows time ``i / fps`` s from the clip start (T = 0: audio only)
    meta:   ``source`` (path), ``start`` and ``duration`` (seconds in the source), ``labels`` if any, ...
    """

    key: str
    audio: np.ndarray
    sample_rate: int
    frames: np.ndarray
    fps: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds of audio in the clip."""
        return len(self.audio) / self.sample_rate


def encode_sample(
    clip: Clip, frame_format: str = "jpeg", jpeg_quality: int = 90, audio_format: str = "flac"
) -> dict[str, bytes]:
    """A :class:`Clip` as a WebDataset sample dict (``"__key__"`` plus member extension -> bytes).

    Audio is stored as 16-bit ``audio_format`` (``flac`` | ``pcm``; round trip within 1/32768, the same
    values either way); frames in ``frame_format`` (``jpeg`` | ``raw`` | ``h264``; see :mod:`avssl.data.storage`).
    Same clip, same bytes.
    """
    for name, value, valid in (("frame_format", frame_format, FRAME_FORMATS),
                               ("audio_format", audio_format, AUDIO_FORMATS)):
        if value not in valid:
            raise ShardError(f"unknown {name} {value!r}; use one of {', '.join(valid)}")
    if "." in clip.key or "/" in clip.key:
        raise ShardError(f"sample key {clip.key!r} must not contain '.' or '/' (WebDataset splits on them)")
    audio = np.asarray(clip.audio, dtype=np.float32)
    frames = np.asarray(clip.frames, dtype=np.uint8)
    if audio.ndim != 1:
        raise ShardError(f"{clip.key}: audio must be mono float32[N], got shape {audio.shape}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ShardError(f"{clip.key}: frames must be uint8[T, H, W, 3], got shape {frames.shape}")
    meta = dict(clip.meta)
    meta.update(
        key=clip.key,
        schema=SCHEMA_VERSION,
        sample_rate=int(clip.sample_rate),
        num_samples=int(len(audio)),
        fps=float(clip.fps),
        num_frames=int(len(frames)),
        frame_shape=[int(d) for d in frames.shape[1:]],
        frame_format=frame_format if len(frames) else None,
    )
    if audio_format != "flac":  # absent: FLAC (shards written before audio_format existed)
        meta["audio_format"] = audio_format
    sample = {"__key__": clip.key, AUDIO_MEMBER[audio_format]: encode_audio(audio, clip.sample_rate, audio_format)}
    if len(frames):
        sample[FRAME_MEMBER[frame_format]], extra = encode_frames(frames, frame_format, clip.fps, jpeg_quality)
        meta.update(extra)
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path.tmp``, fsynced, then renamed: readers see the old or the whole new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """One tar shard, written sample by sample to ``NAME.tmp``; :meth:`close` fsyncs it and renames it to ``NAME``.

    Members are ``{key}.{ext}`` in sorted extension order with fixed headers (mode 0444, no times
    or owners), so the same samples give the same bytes. Headers are plain ustar; a member name
    longer than ustar's 100 bytes gets a POSIX (pax) extended header, which tarfile and WebDataset read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0

    def add(self, sample: dict[str, bytes]) -> None:
        """Append one sample dict (``"__key__"`` plus member extension -> bytes)."""
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(sample[ext]), 0o444, 0
            self._tar.addfile(info, io.BytesIO(sample[ext]))
        self.samples += 1

    def close(self) -> None:
        """Finish the archive, fsync it and rename it to its final name."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)


def _tar_header(block: bytes) -> tuple[str, int, bytes]:
    """``(name, size, type flag)`` of a 512-byte ustar header (checksum checked; sizes in octal)."""
    try:
        checksum = int(block[148:156].rstrip(b"\0 ") or b"0", 8)
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        raise tarfile.ReadError("invalid tar header (a non-octal size or checksum)") from None
    if checksum != sum(block[:148]) + 256 + sum(block[156:]):
        raise tarfile.ReadError("tar header checksum mismatch")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape"), size, block[156:157]


def _open_shard(url: str):
    """A context manager giving a readable stream of the shard: for a local file, memory-mapped where that is safe,
    else ordinary reads (:func:`avssl.data.shardfile.open_local`); else WebDataset's ``gopen`` (URLs, ``pipe:``)."""
    from webdataset.gopen import gopen

    if "://" not in url and not url.startswith("pipe:") and os.path.isfile(url) and os.path.getsize(url) > 0:
        return open_local(url)
    return gopen(url, "rb")


def _tar_members(stream) -> Iterator[tuple[str, bytes | memoryview]]:
    """``(name, data)`` of each regular file in a tar stream, in order; each member's data in one read.

    Python's streaming ``tarfile`` (what WebDataset uses) reads members in 10 KiB blocks and parses
    every header field: ~1 ms per 1.4 MB raw-frame sample. Long names come from a preceding POSIX
    (pax) ``path`` record or a GNU long-name member; other non-file members are skipped.
    """
    long_name = None
    while True:
        block = bytes(stream.read(tarfile.BLOCKSIZE))
        if len(block) < tarfile.BLOCKSIZE or block.count(0) == tarfile.BLOCKSIZE:
            if block.count(0) != len(block):
                raise tarfile.ReadError(f"truncated tar header ({len(block)} bytes)")
            return  # end of archive
        name, size, kind = _tar_header(block)
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"{name}: truncated member ({len(data)} of {size} bytes)")
        stream.read(-size % tarfile.BLOCKSIZE)
        if kind == tarfile.XHDTYPE:
            for record in bytes(data).decode("utf-8", "surrogateescape").split("\n"):
                if " path=" in record:
                    long_name = record.split(" path=", 1)[1]
        elif kind == tarfile.GNUTYPE_LONGNAME:
            long_name = bytes(data).rstrip(b"\0").decode("utf-8", "surrogateescape")
        else:
            if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                yield long_name or name, data
            long_name = None


def iter_samples(urls: Iterable[str], handler: Callable[[Exception], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The raw samples of shards ``urls`` (paths, URLs or ``pipe:`` commands: WebDataset's ``gopen``), in order.

    Each is the dict WebDataset yields without decoders (``__key__``, ``__url__``, member extension ->
    bytes), the input of :func:`decode_sample`. A local shard is memory-mapped where that is safe (members are
    then memoryview slices, and ``__mapped__`` says where they point; :mod:`avssl.data.shardfile`), else read.
    An unreadable shard (cannot be opened, truncated, also while being read) raises,
    or, when ``handler(exception)`` returns true, ends that shard's samples and the next shard is read.
    """
    from webdataset.tariterators import base_plus_ext, valid_sample

    for url in urls:
        current: dict[str, Any] | None = None
        try:
            with _open_shard(url) as stream:
                for name, data in _tar_members(stream):
                    prefix, suffix = base_plus_ext(name)
                    if prefix is None or (prefix.startswith("__") and prefix.endswith("__")):
                        continue
                    if current is None or prefix != current["__key__"]:
                        if valid_sample(current):
                            yield current
                        current = {"__key__": prefix, "__url__": url}
                    suffix = suffix.lower()
                    if suffix in current:
                        raise ValueError(f"{name}: duplicate member")
                    current[suffix] = data
                    if isinstance(stream, MappedShard):  # where the views point, checked before a decode
                        current["__mapped__"] = stream.span()
        except Exception as e:  # the sample being read may be incomplete: dropped
            if handler is None or not handler(ValueError(f"{url}: {type(e).__name__}: {e}")):
                raise
            continue
        if valid_sample(current):
            yield current


@dataclass(frozen=True)
class SampleInfo:
    """A sample's stored lengths, read from its metadata without decoding audio or frames."""

    key: str
    sample_rate: int
    num_samples: int
    fps: float
    num_frames: int  # 0: audio only
    frame_shape: tuple[int, int, int]  # (H, W, 3)


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    key = sample.get("__key__", "?")
    try:
        check_mapped(sample)  # before any member is touched: a page past the end of a shrunk file is SIGBUS
    except OSError as e:
        raise ShardError(str(e)) from None
    if "json" not in sample:
        raise ShardError(f"sample {key!r} has no 'json' member (members: {sorted(sample)}); is this an avssl shard?")
    meta = json.loads(bytes(sample["json"]))
    member = AUDIO_MEMBER.get(meta.get("audio_format", "flac"))
    if member not in sample:
        raise ShardError(f"sample {key!r} has no {member or meta.get('audio_format')!r} member (members: "
                         f"{sorted(sample)}); is this an avssl shard?")
    return meta


def sample_info(sample: dict[str, Any]) -> SampleInfo:
    """The lengths of a raw WebDataset sample (parses only its ``json`` member): choose a window, then decode it."""
    meta = _meta(sample)
    return SampleInfo(
        key=meta["key"], sample_rate=int(meta["sample_rate"]), num_samples=int(meta["num_samples"]),
        fps=float(meta["fps"]), num_frames=int(meta["num_frames"]), frame_shape=tuple(meta["frame_shape"]),
    )


def decode_sample(
    sample: dict[str, Any], start: float | None = None, seconds: float | None = None, frames: bool = True
) -> Clip:
    """A raw WebDataset sample dict (member extension -> bytes, plus ``"__key__"``) to a :class:`Clip`.

    Without ``start``/``seconds`` the whole clip is decoded. With them, only the window is (times in
    seconds from the stored clip's start): audio samples ``s0 = round(start * sample_rate)`` to
    ``s0 + round(seconds * sample_rate)`` (a FLAC seek, sample exact; a PCM slice) and
    ``round(seconds * fps)`` frames from the first one shown at or after ``start`` (``ceil(start * fps)``;
    other JPEGs are not decoded, raw frames are sliced out of the bytes, H.264 decodes up to the
    window's end). The window equals the same slice of a full decode; it is cut short at the clip's
    end (no padding). ``raw`` frames are a read-only view of the sample's bytes (copy to modify them).
    The returned clip's times are relative
    to the window (``meta["window_start"] = start``; frame 0 shows ``ceil(start * fps) / fps``, which
    is ``start`` when the window starts on a frame). ``frames=False`` decodes no frames (``T = 0``).
    """
    key = sample.get("__key__", "?")
    meta = _meta(sample)
    num_samples, num_frames, fps = int(meta["num_samples"]), int(meta["num_frames"]), float(meta["fps"])
    rate = int(meta["sample_rate"])
    window = start is not None or seconds is not None
    start = 0.0 if start is None else float(start)
    if start < 0 or (seconds is not None and seconds < 0):
        raise ShardError(f"sample {key!r}: window start={start}, seconds={seconds} must not be negative")
    s0 = int(round(start * rate))
    count = -1 if seconds is None else int(round(seconds * rate))
    f0 = min(num_frames, int(math.ceil(start * fps - 1e-6)))
    f1 = num_frames if seconds is None else min(num_frames, f0 + int(round(seconds * fps)))
    audio_format = meta.get("audio_format", "flac")
    fmt = meta.get("frame_format")
    member = FRAME_MEMBER.get(fmt)
    if frames and f0 < f1 and member not in sample:
        raise ShardError(f"sample {key!r} has no {member or fmt!r} member for its {fmt} frames "
                         f"(members: {sorted(sample)})")
    try:
        audio, total = decode_audio(sample[AUDIO_MEMBER[audio_format]], audio_format, s0, count)
        if not frames or f0 >= f1:
            video = np.zeros((0, *meta["frame_shape"]), np.uint8)
        else:
            video = decode_frames(sample[member], fmt, meta, f0, f1)
    except StorageError as e:
        raise ShardError(f"sample {key!r}: {e}") from None
    if (frames and len(video) != max(0, f1 - f0)) or total != num_samples:
        raise ShardError(
            f"sample {key!r}: decoded {len(video)} frames (of {f0}:{f1}) / {total} audio samples, "
            f"metadata says {num_frames} / {num_samples}"
        )
    storage = ("key", "schema", "sample_rate", "num_samples", "fps", "num_frames", "frame_shape", "frame_format",
               "frame_bytes", "audio_format")
    info = {k: v for k, v in meta.items() if k not in storage}
    if window:
        info["window_start"] = start
    return Clip(key=meta["key"], audio=audio, sample_rate=rate, frames=video, fps=fps, meta=info)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/manifest.json`` (see ``avssl.ingest.run`` for the fields).

    Raises :class:`ShardError` naming the folder when the manifest is missing, unfinished
    (a run still in progress or interrupted: re-run the same ``avssl ingest`` command), or invalid.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        hint = " (an ingest is in progress or was interrupted: re-run the same command to finish it)" if (
            folder / ".ingest"
        ).is_dir() else " (create shards with `avssl ingest VIDEOS --out FOLDER`)"
        raise ShardError(f"{path}: no manifest{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e}); re-run `avssl ingest` into a new folder") from None
    missing = [k for k in ("version", "params", "shards", "total_samples", "total_hours", "skipped") if k not in manifest]
    if missing:
        raise ShardError(f"{path}: manifest lacks {', '.join(missing)}; it was not written by this avssl version")
    if manifest["version"] != SCHEMA_VERSION:
        raise ShardError(f"{path}: manifest version {manifest['version']}, this avssl reads version {SCHEMA_VERSION}")
    for shard in manifest["shards"]:
        if not (folder / shard["name"]).is_file():
            raise ShardError(f"{path}: lists {shard['name']} but {folder / shard['name']} is missing")
    return manifest


def read_clips(folder: str | Path) -> list[Clip]:
    """Every sample of a finished shard folder (its manifest's shards, in order), decoded whole."""
    folder = Path(folder)
    urls = [str(folder / shard["name"]) for shard in read_manifest(folder)["shards"]]
    return [decode_sample(s) for s in iter_samples(urls)]
