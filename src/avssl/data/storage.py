"""How a clip's audio and frames are stored in a shard's members: one encoder and one windowed decoder
per format. The sample layout (member names, metadata) is :mod:`avssl.data.shards`; only it calls this module.

Audio (``ingest.audio_format``), mono 16-bit either way, so both decode to the same float32 values:

- ``flac``  ``<key>.flac``: lossless FLAC (0.6-0.7x the bytes of PCM on real audio); a window is a
  FLAC seek (sample exact) plus decoding.
- ``pcm``   ``<key>.pcm``: raw little-endian int16 samples, no header (rate and length in the json);
  a window is a slice: no decoding at all.

Frames (``ingest.frame_format``), ``uint8[T, H, W, 3]``:

- ``jpeg``  ``<key>.jpgs``: one baseline JPEG per frame, concatenated (byte lengths in json ``frame_bytes``);
  a window decodes its JPEGs only.
- ``raw``   ``<key>.npy``: the frames as a NumPy ``.npy`` array; a window is a read-only view of the
  bytes (the header is checked, not parsed with ``np.load``; nothing is copied).
- ``h264``  ``<key>.mp4``: an H.264 stream; temporally compressed, so a window decodes from the start.

Measured sizes and decode costs: docs/ingest.md ("Frame and audio storage"), docs/benchmarks-train.md.
"""

from __future__ import annotations

import io
from itertools import islice

import numpy as np

AUDIO_FORMATS = ("flac", "pcm")
FRAME_FORMATS = ("jpeg", "raw", "h264")
AUDIO_MEMBER = {"flac": "flac", "pcm": "pcm"}
FRAME_MEMBER = {"jpeg": "jpgs", "raw": "npy", "h264": "mp4"}


class StorageError(ValueError):
    """A member whose bytes do not match its metadata; the message says what is wrong."""


# ----------------------------------------------------------------------------------------- audio


def _pcm16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2")


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Mono ``float32[N]`` in [-1, 1] as 16-bit ``fmt`` bytes (round trip within 1/32768 for both formats)."""
    pcm = _pcm16(np.asarray(audio, dtype=np.float32))
    if fmt == "pcm":
        return pcm.tobytes()
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes, fmt: str, start: int = 0, count: int = -1) -> tuple[np.ndarray, int]:
    """``(float32[count] from sample start, total samples in the member)``; ``count=-1``: to the end."""
    if fmt == "pcm":
        if len(data) % 2:
            raise StorageError(f"PCM audio member of {len(data)} bytes is not a whole number of 16-bit samples")
        total = len(data) // 2
        start = min(start, total)
        stop = total if count < 0 else min(total, start + count)
        pcm = np.frombuffer(data, "<i2", count=stop - start, offset=2 * start)
        return np.multiply(pcm, np.float32(1 / 32768), dtype=np.float32), total  # exact: a power of 2
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        total = f.frames
        if start:
            f.seek(min(start, total))
        pcm = f.read(count, dtype="int16", always_2d=False)
    return pcm.astype(np.float32) / 32768.0, int(total)


# ----------------------------------------------------------------------------------------- frames


def encode_frames(frames: np.ndarray, fmt: str, fps: float, jpeg_quality: int = 90) -> tuple[bytes, dict]:
    """``uint8[T, H, W, 3]`` as ``fmt`` bytes, plus the metadata the decoder needs (``frame_bytes`` for JPEG)."""
    if fmt == "jpeg":
        from PIL import Image

        parts = []
        for img in frames:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=int(jpeg_quality))
            parts.append(buf.getvalue())
        return b"".join(parts), {"frame_bytes": [len(p) for p in parts]}
    buf = io.BytesIO()
    if fmt == "raw":
        np.save(buf, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
    else:
        from avssl.media.video import encode_video

        encode_video(buf, frames, fps, container_format="mp4", deterministic=True)
    return buf.getvalue(), {}


def decode_frames(data: bytes, fmt: str, meta: dict, first: int, stop: int) -> np.ndarray:
    """Frames ``first:stop`` (``uint8[stop - first, H, W, 3]``) of a frame member; ``meta``: the sample's json."""
    shape = tuple(meta["frame_shape"])
    if fmt == "jpeg":
        return _decode_jpegs(data, meta["frame_bytes"], shape, first, stop)
    if fmt == "raw":
        return _decode_npy(data, int(meta["num_frames"]), shape, first, stop)
    if fmt == "h264":
        return _decode_h264(data, first, stop)
    raise StorageError(f"unknown frame_format {fmt!r}")


def _decode_jpegs(data: bytes, sizes: list[int], shape: tuple[int, int, int], first: int, stop: int) -> np.ndarray:
    """Frames ``first:stop`` of the concatenated JPEGs (``sizes``: bytes per frame); the others are not decoded.

    All frames of a sample come from one ``uint8[T, H, W, 3]`` array, so the first frame's header is
    checked and the rest go straight to libjpeg (``Image.frombytes``: the same decoder and pixels as
    ``Image.open``, without parsing each header in Python; ~2x faster).
    """
    from PIL import Image

    if sum(sizes) != len(data):
        raise StorageError(f"JPEG frame sizes add up to {sum(sizes)} bytes but the member holds {len(data)}")
    ends = np.cumsum(sizes).tolist()
    view = memoryview(data)
    frame = lambda f: view[ends[f] - sizes[f] : ends[f]]  # noqa: E731
    with Image.open(io.BytesIO(frame(first))) as im:
        if im.mode != "RGB" or im.size != (shape[1], shape[0]):
            raise StorageError(f"JPEG frame {first} is {im.mode} {im.size[0]}x{im.size[1]}, the metadata says RGB "
                               f"{shape[1]}x{shape[0]}; re-ingest the shard")
    out = np.empty((len(range(first, stop)), *shape), np.uint8)
    for i, f in enumerate(range(first, stop)):
        out[i] = np.asarray(Image.frombytes("RGB", (shape[1], shape[0]), bytes(frame(f)), "jpeg", "RGB", ""))
    return out


def _decode_npy(data: bytes, num_frames: int, shape: tuple[int, int, int], first: int, stop: int) -> np.ndarray:
    """Frames ``first:stop`` of a ``.npy`` ``uint8[T, H, W, 3]`` member: a read-only view of the bytes, no copy.

    The header is checked against the metadata (dtype, C order, shape) by comparing text, not parsed.
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise StorageError("raw frame member is not a .npy array")
    major = data[6]
    size_bytes = 2 if major == 1 else 4
    header_len = int.from_bytes(data[8 : 8 + size_bytes], "little")
    offset = 8 + size_bytes + header_len
    header = bytes(data[8 + size_bytes : offset]).decode("latin1")
    want_shape = f"'shape': ({num_frames}, {shape[0]}, {shape[1]}, {shape[2]})"
    if "'descr': '|u1'" not in header or "'fortran_order': False" not in header or want_shape not in header:
        raise StorageError(f"raw frame array header {header.strip()!r} does not hold C-order uint8 frames of shape "
                           f"({num_frames}, {', '.join(map(str, shape))}) as the metadata says; re-ingest the shard")
    frame_bytes = int(np.prod(shape))
    if len(data) - offset != num_frames * frame_bytes:
        raise StorageError(f"raw frame member holds {len(data) - offset} bytes of frames, the metadata says "
                           f"{num_frames} frames of {frame_bytes} bytes")
    window = np.frombuffer(data, np.uint8, count=(stop - first) * frame_bytes, offset=offset + first * frame_bytes)
    return window.reshape(stop - first, *shape)


def _decode_h264(data: bytes, first: int, stop: int) -> np.ndarray:
    """Frames ``first:stop``: decoded from the stream's start (temporal compression), stopping after ``stop``."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([f.to_ndarray(format="rgb24") for f in islice(container.decode(stream), stop)][first:])
