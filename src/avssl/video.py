"""Containers: the only module that knows about video files (decode for ingest, encode for tests/demo)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

# Audio codec -> (PyAV sample format, frame size or None for any)
_AUDIO_CODECS = {
    "aac": ("fltp", 1024),
    "libopus": ("flt", 960),
    "vorbis": ("fltp", None),
    "libmp3lame": ("fltp", 1152),
    "mp3": ("fltp", 1152),
    "flac": ("s16", None),
    "pcm_s16le": ("s16", None),
}


def _encode_audio_stream(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    """Feed mono float32 audio to an opened audio ``stream`` in codec-sized frames and flush."""
    import av

    fmt, frame_size = _AUDIO_CODECS.get(stream.codec_context.name, ("fltp", None))
    frame_size = stream.codec_context.frame_size or frame_size or 1024
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    pts = 0
    for start in range(0, len(audio), frame_size):
        chunk = audio[start : start + frame_size]
        if fmt == "s16":
            data = (chunk * 32767).astype(np.int16)[None, :]
        else:
            data = chunk[None, :]
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
        pts += len(chunk)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def encode_audio(path: str | Path, audio: np.ndarray, sample_rate: int, codec: str | None = None) -> Path:
    """Write mono float32 ``audio[N]`` to an audio file; the codec follows the suffix by default.

    Used by tests and the synthetic world: ``.wav`` (pcm_s16le), ``.flac``, ``.mp3``, ``.ogg``
    (opus), ``.opus``, ``.m4a`` (aac).
    """
    import av

    path = Path(path)
    default = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libopus",
               ".opus": "libopus", ".m4a": "aac"}
    codec = codec or default.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: no default audio codec for suffix {path.suffix!r}; pass codec=")
    rate = 48000 if codec == "libopus" and sample_rate not in (8000, 12000, 16000, 24000, 48000) else sample_rate
    if rate != sample_rate:
        from .audio import resample

        audio = resample(audio, sample_rate, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        _encode_audio_stream(container, stream, audio, rate)
    return path


def encode_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    vcodec: str = "libx264",
    acodec: str = "aac",
    frame_times: np.ndarray | None = None,
) -> Path:
    """Write ``uint8[T, H, W, 3]`` frames (and optional mono float32 audio) to a video file.

    ``frame_times`` (seconds, increasing) gives each frame its own timestamp, for variable
    frame rate; otherwise frame i is shown at ``i / fps``. H and W must be even for yuv420p codecs.
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.shape}")
    path = Path(path)
    time_base = Fraction(1, 1000) if frame_times is not None else Fraction(1, int(round(fps)))
    with av.open(str(path), "w") as container:
        vstream = container.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000))
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = time_base
        if vcodec == "libx264":
            vstream.options = {"preset": "ultrafast", "crf": "18"}
        astream = container.add_stream(acodec, rate=sample_rate, layout="mono") if audio is not None else None
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            t = float(frame_times[i]) if frame_times is not None else i / fps
            frame.pts = int(round(t / time_base))
            frame.time_base = time_base
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio_stream(container, astream, audio, sample_rate)
    return path
