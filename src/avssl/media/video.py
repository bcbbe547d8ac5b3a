"""Containers: the only module that knows about video files (decode for ingest, encode for tests/demo).

:func:`decode_video` puts a file's audio and low-resolution frames on ONE time axis. Time 0 is
the container's start; every decoded audio chunk and video frame is placed by its own stream
timestamp, so different stream start times, codec priming (removed by the decoder and shifted in
the timestamps), AAC end padding (trimmed to the declared stream duration) and variable frame
rate all come out aligned. Frames are scaled in FFmpeg's scaler (libswscale, area filter) so the
short side of the *displayed* picture (sample aspect ratio and rotation metadata applied) is
``size``, then centre-cropped square.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from avssl.media.align import SKIP_SAFE_CODECS, ClipAssembler, FrameSampler, FrameSkipper, frame_count
from avssl.media.audio import frame_to_mono, stream_end_time

log = logging.getLogger(__name__)

# Reasons a file cannot be ingested (``MediaError.reason``); stable strings, used in manifests.
REASONS = {
    "unreadable": "path missing, not readable, or not a regular file (FIFO, device, broken link: never opened)",
    "empty": "zero-byte file",
    "not-media": "not a media file (e.g. a Git LFS pointer or other text)",
    "corrupt": "truncated or corrupt media",
    "no-audio": "no audio stream",
    "audio-only": "no video stream (audio-only input; set ingest.audio_only=keep to keep it)",
    "too-short": "shorter than ingest.min_seconds",
    "not-found": "segment's video not found among the inputs",
    "error": "unexpected error while decoding or encoding (detail names it; the traceback is logged)",
    "crashed": "the decoding worker died (segfault, abort, out-of-memory kill; detail names the signal)",
    "timeout": "decoding took longer than ingest.file_timeout (its worker was killed)",
}


class MediaError(RuntimeError):
    """A file that cannot be decoded into aligned audio + frames; ``reason`` is a key of ``REASONS``."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {REASONS.get(reason, reason)}" + (f" ({detail})" if detail else ""))


@dataclass
class Decoded:
    """Aligned audio and frames of (a segment of) one media file.

    audio:  float32[N] mono at ``sample_rate`` Hz; sample j is at time ``start + j / sample_rate``
    frames: uint8[T, size, size, 3] RGB; frame i is the picture displayed at ``start + i / fps``
            (T = 0 for audio-only input)
    start:  seconds from the container start of sample 0 / frame 0
    duration: seconds covered (N = round(duration * sample_rate), T = ceil(duration * fps))
    """

    audio: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: float
    start: float
    duration: float
    info: dict = field(default_factory=dict)


def _open(path: Path):
    """Open a container or raise :class:`MediaError` with the reason it cannot be read."""
    import av

    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaError(path, "unreadable", str(e)) from None
    if not path.is_file():
        raise MediaError(path, "unreadable", "not a regular file")
    if size == 0:
        raise MediaError(path, "empty")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except PermissionError as e:
        raise MediaError(path, "unreadable", str(e)) from None
    except Exception as e:  # av.error.InvalidDataError and friends
        with open(path, "rb") as f:
            head = f.read(512)
        if head.startswith(b"version https://git-lfs"):
            raise MediaError(path, "not-media", "Git LFS pointer file; run `git lfs pull`") from None
        if _looks_like_text(head):
            raise MediaError(path, "not-media", "text file") from None
        raise MediaError(path, "corrupt", f"{type(e).__name__}: {e}") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


class ClipReader:
    """Aligned clips of a media file, decoded while they are iterated (the alignment: :func:`decode_video`).

    ``for audio, frames in ClipReader(path, 16000, 10.0, 64, clip_seconds=10.0): ...`` gives consecutive
    clips of ``clip_seconds`` (the last may be shorter; ``None``: one clip, the whole segment), each
    ``(float32[N] mono audio at sample_rate, uint8[T, size, size, 3] frames)``; they equal the
    consecutive slices of :func:`decode_video`'s output. Memory is bounded by a clip, not the file.
    Iterating raises :class:`MediaError` for a file that cannot be ingested, possibly after some
    clips (a truncated file shows at its end): discard what a file that raised gave. After the
    iteration ``duration`` (seconds covered) and ``info`` are set.
    """

    def __init__(self, path: str | Path, sample_rate: int = 16000, fps: float = 10.0, size: int = 64,
                 clip_seconds: float | None = None, start: float = 0.0, duration: float | None = None, *,
                 audio_only: bool = False, threads: int = 0):  # fmt: skip
        self.path, self.sample_rate, self.fps, self.size = Path(path), sample_rate, fps, size
        self.clip_seconds, self.start, self.requested = clip_seconds, start, duration
        self.audio_only, self.threads = audio_only, threads
        self.duration: float | None = None
        self.info: dict = {}

    def _streams(self, container):
        import av

        if not container.streams.audio:
            raise MediaError(self.path, "no-audio")
        vstream = next((s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None)
        if vstream is None and not self.audio_only:
            raise MediaError(self.path, "audio-only")
        return container.streams.audio[0], vstream

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with _open(self.path) as container:
            astream, vstream = self._streams(container)
            t_origin = container.start_time / 1e6 if container.start_time is not None else 0.0
            rate = int(astream.codec_context.sample_rate or astream.rate)
            seg_begin = t_origin + self.start
            seg_end = seg_begin + self.requested if self.requested is not None else math.inf
            sampler = None
            if vstream is not None:
                vstream.codec_context.thread_count = self.threads
                vstream.codec_context.thread_type = "AUTO" if self.threads != 1 else "SLICE"
                sampler = FrameSampler(seg_begin, self.fps, self.size, vstream.sample_aspect_ratio, vstream.time_base,
                                       self.threads)
                if self.requested is not None:
                    sampler.limit = frame_count(self.requested, self.fps)
            asm = ClipAssembler(seg_begin, seg_end, rate, self.sample_rate, self.fps, self.size, sampler,
                                self.clip_seconds, stream_end_time(astream))  # fmt: skip
            if self.start > 5.0:  # jump near the segment instead of decoding everything before it
                container.seek(int((seg_begin - 2.0) * 1e6), backward=True, any_frame=False)
            errors, covered = yield from self._demux(container, astream, vstream, asm)
            declared = (stream_end_time(astream), stream_end_time(vstream) if vstream is not None else None)
            fallback_rate = float(vstream.average_rate or vstream.guessed_rate or 25) if vstream is not None else None
        self.duration = self._length(asm, covered, t_origin, declared, fallback_rate)
        self.info = {"source_sample_rate": rate, "decode_errors": errors}
        yield from asm.finish(self.duration)

    def _demux(self, container, astream, vstream, asm: ClipAssembler):
        """Decode packets into ``asm``, yielding the clips that become final; returns ``(errors, covered)``."""
        import av

        errors = 0
        skippable = vstream is not None and vstream.codec_context.name in SKIP_SAFE_CODECS
        skipper = FrameSkipper(asm.sampler, vstream.codec_context, vstream.time_base) if skippable else None
        try:
            for packet in container.demux([astream] + ([vstream] if vstream is not None else [])):
                if skipper is not None and packet.stream is vstream:
                    skipper.before(packet)
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:
                    errors += 1
                    log.debug("%s: skipping undecodable packet (%s)", self.path, e)
                    continue
                for frame in frames:
                    if frame.time is None:
                        continue
                    if packet.stream is astream:
                        asm.push_audio(frame.time, frame_to_mono(frame), frame.sample_rate)
                    else:
                        asm.sampler.push(frame)
                if asm.audio_end >= asm.seg_end and (asm.sampler is None or asm.sampler.done):
                    return errors, True  # the whole segment is decoded; stop reading
                yield from asm.ready()
        except av.error.FFmpegError as e:
            errors += 1
            log.debug("%s: demuxing stopped early (%s)", self.path, e)
        return errors, False

    def _length(self, asm: ClipAssembler, covered: bool, t_origin: float,
                declared: tuple[float | None, float | None], fallback_rate: float | None) -> float:  # fmt: skip
        """Seconds covered: where audio and video overlap, within the segment; raises for a truncated file."""
        path, sampler = self.path, asm.sampler
        if not asm.chunks:
            raise MediaError(path, "corrupt", "no audio could be decoded")
        # A stream whose decoding stops well before its declared end is a truncated file.
        video_end = math.inf
        if sampler is not None and not covered:
            if sampler.prev is None:
                raise MediaError(path, "corrupt", "no video frame could be decoded")
            video_end = sampler.last_end  # last frame's time + duration; without a duration, the nominal rate
            if video_end <= sampler.prev[0]:
                video_end = sampler.prev[0] + 1.0 / fallback_rate
        audio_end = asm.audio_end
        for name, got, end in (("audio", audio_end, declared[0]), ("video", video_end, declared[1])):
            if end is not None and not covered and got < min(end, asm.seg_end) - 1.0:
                raise MediaError(path, "corrupt", f"{name} stops at {got - t_origin:.2f} s of {end - t_origin:.2f} s")
        if declared[0] is not None:
            audio_end = min(audio_end, declared[0])
        return self.requested if covered else max(0.0, min(audio_end, video_end, asm.seg_end) - asm.seg_begin)


def decode_video(
    path: str | Path,
    sample_rate: int = 16000,
    fps: float = 10.0,
    size: int = 64,
    start: float = 0.0,
    duration: float | None = None,
    *,
    audio_only: bool = False,
    threads: int = 0,
) -> Decoded:
    """Decode aligned mono audio and low-resolution square frames from a media file.

    ``start``/``duration`` (seconds from the container start) select a segment; by default the
    whole file. The covered duration is where audio and video overlap (the shorter stream wins),
    clipped to the requested segment. A file without a video stream raises
    ``MediaError(reason="audio-only")`` unless ``audio_only=True`` (then ``frames`` has T = 0).
    ``threads``: FFmpeg video decoder and scaler threads (0 = one per core; use 1 inside worker pools).
    Raises :class:`MediaError` with a reason from ``REASONS`` for anything that cannot be ingested.
    The whole segment is held in memory: use :class:`ClipReader` to read long files clip by clip.
    """
    reader = ClipReader(path, sample_rate, fps, size, None, start, duration, audio_only=audio_only, threads=threads)
    ((audio, frames),) = list(reader)
    return Decoded(audio, frames, sample_rate, fps, start, reader.duration, reader.info)


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


def _encode_audio_stream(container, stream, audio: np.ndarray, sample_rate: int, start: int = 0) -> None:
    """Feed mono float32 audio to an opened audio ``stream`` in codec-sized frames and flush.

    ``start``: timestamp of the first sample, in samples (a stream that starts later than 0)."""
    import av

    fmt, frame_size = _AUDIO_CODECS.get(stream.codec_context.name, ("fltp", None))
    frame_size = stream.codec_context.frame_size or frame_size or 1024
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    pts = start
    for first in range(0, len(audio), frame_size):
        chunk = audio[first : first + frame_size]
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
        from avssl.media.audio import resample

        audio = resample(audio, sample_rate, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        _encode_audio_stream(container, stream, audio, rate)
    return path


def encode_video(
    path: str | Path | BinaryIO,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    vcodec: str = "libx264",
    acodec: str = "aac",
    frame_times: np.ndarray | None = None,
    container_format: str | None = None,
    deterministic: bool = False,
    audio_start: float = 0.0,
    rotation: int = 0,
) -> Path | BinaryIO:
    """Write ``uint8[T, H, W, 3]`` frames (and optional mono float32 audio) to a video file.

    ``frame_times`` (seconds, increasing) gives each frame its own timestamp, for variable
    frame rate; otherwise frame i is shown at ``i / fps``. H and W must be even for yuv420p codecs.
    ``path`` may be a writable binary file object (then ``container_format`` is required, e.g.
    ``"mp4"``). ``deterministic=True`` encodes single-threaded with bit-exact flags, so the same
    frames give the same bytes. ``audio_start`` delays the audio stream's first timestamp (seconds);
    ``rotation`` stores display-matrix metadata (degrees counter-clockwise, like phone videos).
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.shape}")
    is_file = isinstance(path, (str, Path))
    target = str(path) if is_file else path
    time_base = Fraction(1, 1000) if frame_times is not None else Fraction(1, int(round(fps)))
    options = {"fflags": "+bitexact"} if deterministic else {}
    with av.open(target, "w", format=container_format, options=options) as container:
        vstream = container.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000))
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = time_base
        if vcodec == "libx264":
            vstream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            vstream.set_display_rotation(rotation)
        if deterministic:
            vstream.codec_context.thread_count = 1
            vstream.codec_context.flags |= av.codec.context.Flags.bitexact
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
            _encode_audio_stream(container, astream, audio, sample_rate, int(round(audio_start * sample_rate)))
    return Path(path) if is_file else path
