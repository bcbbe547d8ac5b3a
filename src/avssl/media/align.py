"""Aligned clips from decoded audio chunks and video frames, one clip at a time.

:mod:`avssl.media.video` opens the container and pushes every decoded audio chunk and video frame here
with its own stream timestamp; :class:`ClipAssembler` lays them on one time axis (time 0 is the
segment start), resamples the audio and hands out consecutive clips as soon as they are final.
Memory is bounded by a clip plus the streams' interleaving distance, not by the file's length.
The clips are exactly the consecutive slices of what a whole-file decode gives: the audio
timeline and the soxr resampler are streamed (soxr's output does not depend on how its input is
chunked) and only samples that no later chunk can change are fed to it.
"""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction

import numpy as np

from avssl.media.audio import Timeline

SETTLE_SECONDS = 1.0  # audio older than this behind the newest chunk is final (a later chunk may overwrite newer)


def frame_count(seconds: float, fps: float) -> int:
    """Frames at ``i / fps`` inside ``[0, seconds)``."""
    return max(0, int(math.ceil(seconds * fps - 1e-6)))


def _scaled_size(width: int, height: int, sar: Fraction | None, size: int) -> tuple[int, int]:
    """Output (w, h) so that the displayed picture's short side is ``size`` (sample aspect applied)."""
    disp_w = width * float(sar) if sar else float(width)
    short = min(disp_w, height)
    return max(size, int(round(disp_w * size / short))), max(size, int(round(height * size / short)))


class FrameSampler:
    """Picks, for each output time ``t_i = t0 + i / fps``, the frame displayed at ``t_i``.

    A source frame with time ``s`` is displayed on ``[s, next frame's time)`` (a next frame less
    than 1 ms after ``t_i`` counts as displayed, absorbing timestamp rounding); output times before
    the first frame get the first frame. Only picked frames go through the scaler. Output frames
    are final once emitted; :meth:`take` hands them out in order.
    """

    def __init__(self, t0: float, fps: float, size: int, sar: Fraction | None, time_base: Fraction,
                 threads: int = 0):
        from av.video.reformatter import VideoReformatter

        self.t0, self.fps, self.size, self.sar = t0, fps, size, sar
        self.time_base = time_base  # the stream's, which decoded frames carry (``frame.time_base`` costs ~0.1 ms)
        self.reformatter = VideoReformatter()  # keeps its scaler between frames (``frame.reformat`` builds one per call)
        self.threads = threads or None  # scaler threads; None: PyAV's default (one per core)
        self.limit: int | None = None  # number of output frames, once known
        self.emitted = 0  # output frames produced so far
        self.pending: list[np.ndarray] = []  # produced, not yet taken
        self.prev = None  # (time, frame)
        self.last_end = -math.inf  # end of the latest frame's display (time + duration)

    def _convert(self, frame) -> np.ndarray:
        w, h = _scaled_size(frame.width, frame.height, self.sar, self.size)
        img = self.reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA",
                                        threads=self.threads).to_ndarray()
        y0, x0 = (h - self.size) // 2, (w - self.size) // 2
        img = img[y0 : y0 + self.size, x0 : x0 + self.size]
        # Display matrix: the picture is shown rotated counter-clockwise by ``rotation`` degrees.
        turns = int(round((frame.rotation or 0) / 90.0)) % 4
        return np.ascontiguousarray(np.rot90(img, turns)) if turns else img

    def _emit_until(self, t_next: float) -> None:
        """Emit the previous frame for every pending output time before ``t_next``."""
        img = None
        while self.prev is not None and (self.limit is None or self.emitted < self.limit):
            if self.t0 + self.emitted / self.fps + 1e-3 >= t_next:
                break
            if img is None:
                img = self._convert(self.prev[1])
            self.pending.append(img)
            self.emitted += 1

    def push(self, frame) -> None:
        self._emit_until(frame.time)
        self.prev = (frame.time, frame)
        tb = self.time_base  # int / int is correctly rounded, like float(Fraction), without building a Fraction
        dur = frame.duration * tb.numerator / tb.denominator if frame.duration else 0.0
        self.last_end = max(self.last_end, frame.time + dur)

    @property
    def done(self) -> bool:
        return self.limit is not None and self.emitted >= self.limit

    def finish(self, count: int) -> None:
        """No more source frames: emit up to ``count`` output frames in all (the last frame holds to the end)."""
        self.limit = count
        self._emit_until(math.inf)
        if self.emitted < count:
            raise RuntimeError(f"frame sampler produced {self.emitted} of {count} frames")

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` (or fewer, if fewer are left) emitted frames, ``uint8[count, size, size, 3]``."""
        frames, self.pending = self.pending[:count], self.pending[count:]
        return np.stack(frames) if frames else np.zeros((0, self.size, self.size, 3), np.uint8)


_EPS = 1e-6  # seconds
# Decoders whose "non-reference" frames nothing ever references, so skipping them changes no other frame:
# H.264 (nal_ref_idc 0), B-frames of MPEG-1/2/4 and H.263, VP8 frames that refresh no reference. Not HEVC:
# its sub-layer non-reference pictures may be referenced by higher temporal sub-layers.
SKIP_SAFE_CODECS = frozenset({"h264", "mpeg4", "mpeg2video", "mpeg1video", "h263", "vp8"})


class FrameSkipper:
    """Tells the video decoder to skip, before decoding, the frames that :class:`FrameSampler` would not pick.

    A source frame at time ``s`` is picked only if an output time falls in ``[s, next frame's time)``
    (up to the sampler's 1 ms rounding). Before a packet is decoded its presentation time is known, and
    the earliest later presentation time among the recent packets is an upper bound on the next
    frame's; when no output time falls inside that wider interval the frame cannot be picked, and the
    decoder is set to skip it if it is a non-reference frame (``skip_frame="NONREF"``: a reference
    frame is still decoded, since later frames depend on it, and a skipped frame changes no other
    frame's pixels). So the kept frames and their pixels are exactly those of decoding every frame;
    at 30 fps in, 10 fps out, most B-frames go undecoded. Only for the decoders in ``SKIP_SAFE_CODECS``.
    """

    def __init__(self, sampler: FrameSampler, codec_context, time_base: Fraction, window: int = 16):
        self.sampler, self.ctx, self.time_base = sampler, codec_context, time_base
        self.recent: deque[float] = deque(maxlen=window)  # presentation times of the latest packets
        self.skipping = False
        self.skipped = 0  # packets sent to the decoder while it skips non-reference frames

    def _unpicked(self, s: float, s_up: float) -> bool:
        """No output time can be displayed by a frame at ``s`` whose successor comes no later than ``s_up``."""
        sp = self.sampler
        if sp.prev is None or s <= sp.prev[0] or s_up == math.inf:
            return False  # the first frame, or output out of order: decode it
        i = max(sp.emitted, int(math.floor((s - sp.t0) * sp.fps)) - 2)
        while sp.t0 + i / sp.fps + 1e-3 < s - _EPS:  # the sampler's own test: first output this frame could show
            i += 1
        if sp.limit is not None and i >= sp.limit:
            return True
        return sp.t0 + i / sp.fps + 1e-3 >= s_up + _EPS  # (_EPS: float ties count as picked)

    def before(self, packet) -> None:
        """Set the decoder's skip mode for ``packet`` (a packet of the sampled video stream)."""
        skip = False
        if packet.pts is not None:
            s = float(packet.pts) * self.time_base.numerator / self.time_base.denominator  # as PyAV's ``Frame.time``
            s_up = min((t for t in self.recent if t > s), default=math.inf)
            skip = self._unpicked(s, s_up)
            self.recent.append(s)
        if skip != self.skipping:
            self.ctx.skip_frame = "NONREF" if skip else "DEFAULT"
            self.skipping = skip
        self.skipped += skip


class AudioAligner:
    """A :class:`~avssl.media.audio.Timeline` at the source ``rate`` streamed through soxr to ``sample_rate``."""

    def __init__(self, rate: int, begin: float, sample_rate: int):
        self.timeline = Timeline(rate, begin)
        self.rate = rate
        self.fed = 0  # timeline samples handed to the resampler
        self.resampler = None
        if rate != sample_rate:
            import soxr

            self.resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32")
        self.out: list[np.ndarray] = []  # resampled, not yet taken
        self.produced = 0  # resampled samples in all

    def _feed(self, x: np.ndarray, last: bool = False) -> None:
        y = self.resampler.resample_chunk(x, last=last) if self.resampler is not None else x
        self.out.append(np.asarray(y, dtype=np.float32))
        self.produced += len(y)

    def settle(self, final_lower_bound: int) -> None:
        """Resample the timeline up to ``final_lower_bound`` samples (never past what is final)."""
        settled = (self.timeline.pos or 0) - int(SETTLE_SECONDS * self.rate)
        upto = min(final_lower_bound, settled)
        if upto - self.fed >= self.rate // 4:  # in blocks of >= 0.25 s
            self._feed(self.timeline.take(upto - self.fed))
            self.fed = upto

    def finish(self, total: int) -> None:
        """The timeline is ``total`` samples long: resample the rest and flush the resampler."""
        self._feed(self.timeline.take(max(0, total - self.fed)), last=True)
        self.fed = total

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` resampled samples (zeros past the end of the output)."""
        buf = np.concatenate([np.zeros(0, np.float32), *self.out])
        out = np.zeros(count, dtype=np.float32)
        k = min(count, len(buf))
        out[:k] = buf[:k]
        self.out = [buf[k:]]
        return out


class ClipAssembler:
    """Consecutive aligned clips of the segment ``[seg_begin, seg_end)`` (container seconds).

    ``clip_seconds=None``: one clip, the whole segment, handed out by :meth:`finish`. Otherwise
    clip ``k`` covers ``[k * clip_seconds, (k + 1) * clip_seconds)`` of the segment; the last one
    may be shorter. Each clip is ``(float32[N] audio at sample_rate, uint8[T, size, size, 3] frames)``.
    """

    def __init__(self, seg_begin: float, seg_end: float, rate: int, sample_rate: int, fps: float, size: int,
                 sampler: FrameSampler | None, clip_seconds: float | None, audio_declared_end: float | None):  # fmt: skip
        self.seg_begin, self.seg_end, self.sample_rate, self.fps, self.size = seg_begin, seg_end, sample_rate, fps, size
        self.audio = AudioAligner(rate, seg_begin, sample_rate)
        self.sampler = sampler
        self.clip_n = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
        self.clip_f = None if clip_seconds is None else int(round(clip_seconds * fps))
        self.audio_declared_end = audio_declared_end
        self.audio_end = -math.inf  # end of the latest decoded audio chunk
        self.chunks = 0  # audio chunks inside the segment
        self.clips = 0  # clips handed out

    def push_audio(self, t: float, x: np.ndarray, rate: int) -> None:
        self.audio_end = max(self.audio_end, t + len(x) / rate)
        if self.audio_end > self.seg_begin - 0.1 and t < self.seg_end + 0.1:
            self.audio.timeline.place(t, x)
            self.chunks += 1

    def _length_lower_bound(self) -> float:
        """The segment's final length is at least this (every stream only grows; truncation is an error)."""
        a = self.audio_end if self.audio_declared_end is None else min(self.audio_end, self.audio_declared_end)
        v = self.sampler.last_end if self.sampler is not None else math.inf
        return max(0.0, min(a, v, self.seg_end) - self.seg_begin)

    def ready(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole clips that are final now (none in whole-segment mode)."""
        if self.clip_n is None or self.audio_end < self.seg_begin + (self.clips + 1) * self.clip_n / self.sample_rate:
            return []  # the next clip ends after the decoded audio, so none is final (soxr is fed later: same numbers)
        bound = self._length_lower_bound()
        self.audio.settle(int(math.floor(bound * self.audio.rate)) - 1)
        out_bound = int(math.floor(bound * self.sample_rate)) - 1
        clips = []
        while True:
            end_n, end_f = (self.clips + 1) * self.clip_n, (self.clips + 1) * self.clip_f
            if end_n > min(out_bound, self.audio.produced) or (self.sampler is not None and end_f > self.sampler.emitted):
                return clips
            clips.append(self._cut(self.clip_n, self.clip_f))

    def _cut(self, n: int, f: int) -> tuple[np.ndarray, np.ndarray]:
        self.clips += 1
        frames = self.sampler.take(f) if self.sampler is not None else np.zeros((0, self.size, self.size, 3), np.uint8)
        return self.audio.take(n), frames

    def finish(self, length: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """The segment is ``length`` seconds long: the clips not yet handed out."""
        self.audio.finish(max(0, int(round(length * self.audio.rate))))
        total_n, count = int(round(length * self.sample_rate)), frame_count(length, self.fps)
        if self.sampler is not None:
            self.sampler.finish(count)
        if self.clip_n is None:
            return [self._cut(total_n, count)]
        if self.clips * self.clip_n > total_n:  # cannot happen: ready() only hands out clips the length covers
            raise RuntimeError(f"handed out {self.clips} clips, but the segment is only {length:.3f} s long")
        clips = []
        for a0 in range(self.clips * self.clip_n, total_n, self.clip_n):
            n = min(self.clip_n, total_n - a0)
            f0 = self.clips * self.clip_f
            clips.append(self._cut(n, max(0, min(count, f0 + frame_count(n / self.sample_rate, self.fps)) - f0)))
        return clips
