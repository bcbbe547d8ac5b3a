"""The shard schema: one WebDataset sample per clip, and the folder's ``manifest.json``.

A shard folder holds ``NNNNNN.tar`` files (WebDataset-compatible tar archives) and
``manifest.json``. A sample is a group of tar members sharing the key ``{video_id}-{clip:04d}``:

- ``<key>.flac``  mono audio, 16-bit FLAC at ``sample_rate`` (lossless for 16-bit PCM)
- ``<key>.json``  metadata: source path, start and duration (seconds in the source), labels if
  any, plus the storage fields below
- frames, one member whose extension names the format (absent for audio-only samples):
  ``<key>.jpgs`` one baseline JPEG per frame, concatenated (byte lengths in json
  ``frame_bytes``); ``<key>.npy`` raw ``uint8[T, H, W, 3]``; ``<key>.mp4`` an H.264 stream.

This module is the only place that knows the member layout: use :func:`encode_sample` /
:func:`decode_sample`. ``decode_sample`` takes the dict WebDataset yields without decoders
(keys without the leading dot, values ``bytes``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
FRAME_FORMATS = ("jpeg", "raw", "h264")
_FRAME_MEMBER = {"jpeg": "jpgs", "raw": "npy", "h264": "mp4"}
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


def _encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    pcm = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
    return (pcm.astype(np.float32) / 32768.0), int(rate)


def _encode_jpegs(frames: np.ndarray, quality: int) -> tuple[bytes, list[int]]:
    from PIL import Image

    parts = []
    for img in frames:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        parts.append(buf.getvalue())
    return b"".join(parts), [len(p) for p in parts]


def _decode_jpegs(data: bytes, sizes: list[int], shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(sizes), *shape), np.uint8)
    pos = 0
    for i, n in enumerate(sizes):
        with Image.open(io.BytesIO(data[pos : pos + n])) as im:
            out[i] = np.asarray(im.convert("RGB"))
        pos += n
    if pos != len(data):
        raise ShardError(f"JPEG frame sizes add up to {pos} bytes but the member holds {len(data)}")
    return out


def _encode_h264(frames: np.ndarray, fps: float) -> bytes:
    from .video import encode_video

    buf = io.BytesIO()
    encode_video(buf, frames, fps, container_format="mp4", deterministic=True)
    return buf.getvalue()


def _decode_h264(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def _encode_npy(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def encode_sample(clip: Clip, frame_format: str = "jpeg", jpeg_quality: int = 90) -> dict[str, bytes]:
    """A :class:`Clip` as a WebDataset sample dict (``"__key__"`` plus member extension -> bytes).

    Audio is stored as 16-bit FLAC (round trip within 1/32768); frames in ``frame_format``
    (``jpeg`` | ``raw`` | ``h264``; see the module docstring). Same clip, same bytes.
    """
    if frame_format not in FRAME_FORMATS:
        raise ShardError(f"unknown frame_format {frame_format!r}; use one of {', '.join(FRAME_FORMATS)}")
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
    sample = {"__key__": clip.key, "flac": _encode_flac(audio, clip.sample_rate)}
    if len(frames):
        if frame_format == "jpeg":
            sample["jpgs"], meta["frame_bytes"] = _encode_jpegs(frames, jpeg_quality)
        elif frame_format == "raw":
            sample["npy"] = _encode_npy(frames)
        else:
            sample["mp4"] = _encode_h264(frames, clip.fps)
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


def decode_sample(sample: dict[str, Any]) -> Clip:
    """A raw WebDataset sample dict (member extension -> bytes, plus ``"__key__"``) to a :class:`Clip`."""
    key = sample.get("__key__", "?")
    for member in ("json", "flac"):
        if member not in sample:
            raise ShardError(f"sample {key!r} has no {member!r} member (members: {sorted(sample)}); is this an avssl shard?")
    meta = json.loads(sample["json"])
    audio, rate = _decode_flac(sample["flac"])
    shape = tuple(meta["frame_shape"])
    fmt = meta.get("frame_format")
    if not meta["num_frames"]:
        frames = np.zeros((0, *shape), np.uint8)
    elif fmt == "jpeg":
        frames = _decode_jpegs(sample["jpgs"], meta["frame_bytes"], shape)
    elif fmt == "raw":
        frames = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
    elif fmt == "h264":
        frames = _decode_h264(sample["mp4"])
    else:
        raise ShardError(f"sample {key!r}: unknown frame_format {fmt!r}")
    if len(frames) != meta["num_frames"] or len(audio) != meta["num_samples"]:
        raise ShardError(
            f"sample {key!r}: decoded {len(frames)} frames / {len(audio)} samples, "
            f"metadata says {meta['num_frames']} / {meta['num_samples']}"
        )
    storage = ("key", "schema", "sample_rate", "num_samples", "fps", "num_frames", "frame_shape", "frame_format", "frame_bytes")
    return Clip(
        key=meta["key"],
        audio=audio,
        sample_rate=rate,
        frames=frames,
        fps=float(meta["fps"]),
        meta={k: v for k, v in meta.items() if k not in storage},
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/manifest.json`` (see ``avssl.ingest`` for the fields).

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
