"""Audio in: decode any file (or the audio track of any video), resample, and the log-mel front-end.

Pure functions plus one ``nn.Module``. Nothing here imports training or data code.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avssl.config import AudioConfig
from avssl.media.dft import FoldedPowerSpectrum


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff"})
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".3gp", ".wmv", ".ogv"}
)
MEDIA_SUFFIXES = AUDIO_SUFFIXES | VIDEO_SUFFIXES  # what folder inputs (ingest, embed, eval tasks) pick up
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})  # list-file inputs: one media path per line


class AudioDecodeError(RuntimeError):
    """A file could not be decoded to audio; the message names the file and why."""


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample ``float32[..., N]`` (last axis is time) with soxr's high-quality filter."""
    audio = np.asarray(audio, dtype=np.float32)
    if int(orig_rate) == int(target_rate):
        return audio
    import soxr

    if audio.ndim == 1:
        return soxr.resample(audio, orig_rate, target_rate).astype(np.float32)
    flat = audio.reshape(-1, audio.shape[-1])
    out = soxr.resample(flat.T, orig_rate, target_rate).T  # soxr wants [time, channels]
    return np.ascontiguousarray(out, dtype=np.float32).reshape(*audio.shape[:-1], -1)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono ``float32[N]`` at ``sample_rate`` Hz.

    Works for audio files (wav, flac, mp3, ogg/opus, ...) and the audio track of videos
    (mp4, webm, mkv, avi, mov, flv). Channels are averaged. Stream timestamps are honoured:
    sample 0 is the first decoded sample (codec priming already removed by the decoder), and
    the end is trimmed to the stream's declared duration (AAC end padding), so a 2 s AAC file
    decodes to 2 s, not 2.048 s. Raises :class:`AudioDecodeError` naming the file when it is
    missing, unreadable or has no audio stream. WAV and FLAC files are read with libsndfile
    (the same samples, about 15x faster than a decode through FFmpeg).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.suffix.lower() in (".wav", ".flac"):
        import soundfile as sf

        try:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception:  # not really wav/flac, or a variant libsndfile lacks: FFmpeg below decides
            pass
        else:
            if len(audio) == 0:
                raise AudioDecodeError(f"{path}: audio stream decoded to zero samples")
            return resample(audio.mean(axis=1), int(rate), sample_rate)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            frames = decode_frames(container, stream)
            rate = stream.codec_context.sample_rate or stream.rate
            stream_end = stream_end_time(stream)
    except AudioDecodeError:
        raise
    except Exception as e:  # av.error.* and friends: report the file
        raise AudioDecodeError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if frames is None:
        raise AudioDecodeError(f"{path}: audio stream decoded to zero samples")
    return resample(frames.mono_on_timeline(rate, stream_end), int(rate), sample_rate)


_SAMPLE_DTYPES = {"u8": "u1", "s16": "<i2", "s32": "<i4", "s64": "<i8", "flt": "<f4", "dbl": "<f8"}


class DecodedFrames:
    """The decoded frames of one audio stream, their samples appended to one buffer per plane and converted
    in bulk (one conversion and one channel average for the whole stream) instead of ``to_ndarray`` +
    conversion + timeline placement per frame: on the shared Opus files that per-frame work cost about half
    as much CPU as the decoder itself (docs/benchmarks-embed.md).

    Per frame: ``pts`` (``int`` or ``None``), ``counts`` (samples), ``segment`` (index into ``segments``)
    and ``offsets`` (first sample in its segment). A segment is a run of frames of one sample format and
    channel count: ``[format name, channels, [bytearray per plane] or None, mono float32 or None]`` (one
    plane per channel when planar, one interleaved plane when packed). A multi-channel segment is converted
    to mono once it holds ``CLOSE_SAMPLES`` samples (and the next frame opens a new one), so a long stereo
    stream never holds more than that in all its channels: memory stays that of the mono result.
    """

    CLOSE_SAMPLES = 1 << 20

    def __init__(self, time_base: tuple[int, int]):
        self.time_base = time_base
        self.pts: list[int | None] = []
        self.counts: list[int] = []
        self.segment: list[int] = []
        self.offsets: list[int] = []
        self.segments: list[list] = []
        self._filled = 0  # samples in the last segment

    def add(self, frame) -> None:
        """Append one decoded PyAV ``AudioFrame`` (a frame without samples is dropped)."""
        n = frame.samples
        if not n:
            return
        fmt, channels = frame.format, frame.layout.nb_channels
        if not self.segments or self.segments[-1][2] is None or self.segments[-1][:2] != [fmt.name, channels]:
            self.segments.append([fmt.name, channels, [bytearray() for _ in frame.planes], None])
            self._filled = 0
        size = n * fmt.bytes * (1 if fmt.is_planar else channels)  # planes are padded beyond the samples
        for buf, plane in zip(self.segments[-1][2], frame.planes):
            buf += memoryview(plane)[:size]
        self.pts.append(frame.pts)
        self.counts.append(n)
        self.segment.append(len(self.segments) - 1)
        self.offsets.append(self._filled)
        self._filled += n
        if channels > 1 and self._filled >= self.CLOSE_SAMPLES:
            self._mono(self.segments[-1])

    @staticmethod
    def _mono(segment: list) -> np.ndarray:
        """A segment's samples as mono ``float32`` (converted once; its plane buffers are then dropped)."""
        if segment[2] is not None:
            segment[3] = _planes_to_mono(segment[2], segment[0], segment[1])
            segment[2] = None
        return segment[3]

    def _times(self) -> list[float | None]:
        """Each frame's time in seconds, computed as PyAV's ``Frame.time`` does (the same float)."""
        num, den = self.time_base
        return [None if p is None else float(p) * num / den for p in self.pts]

    def _contiguous(self, times: list[float | None], rate: int) -> bool:
        """True when every frame follows on (within the :class:`Timeline` tolerance) from the one before:
        then laying them on the timeline is a plain concatenation."""
        if any(t is None for t in times):
            return False
        tolerance = max(1, int(round(0.001 * rate)))
        at = np.rint((np.asarray(times) - times[0]) * rate)  # Timeline.place's rounding (half to even)
        pos = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        return bool(np.all(np.abs(at - pos) <= tolerance))

    def mono_on_timeline(self, rate: int, stream_end: float | None) -> np.ndarray:
        """Mono ``float32`` samples from the first decoded sample to the end (trimmed to ``stream_end``):
        the numbers of :func:`frame_to_mono` + :func:`place_on_timeline` frame by frame."""
        times = self._times()
        begin = times[0] if times[0] is not None else 0.0
        end = _chunks_end(list(zip(times, self.counts)), rate, begin)
        if stream_end is not None:
            end = min(end, stream_end)
        count = max(0, int(round((end - begin) * rate)))
        monos = [self._mono(segment) for segment in self.segments]
        if self._contiguous(times, rate):
            mono = monos[0] if len(monos) == 1 else np.concatenate(monos)
            if len(mono) == count:
                return mono
            out = np.zeros(count, dtype=np.float32)
            out[: min(count, len(mono))] = mono[:count]
            return out
        chunks = [(t, monos[s][o : o + n]) for t, n, s, o in zip(times, self.counts, self.segment, self.offsets)]
        return place_on_timeline(chunks, rate, begin, end)


def decode_frames(container, stream) -> DecodedFrames | None:
    """Decode every frame of an open PyAV audio ``stream``; ``None`` when no frame holds a sample."""
    frames = None
    for frame in container.decode(stream):
        if frames is None:
            tb = frame.time_base
            frames = DecodedFrames((tb.numerator, tb.denominator) if tb else (0, 1))
        frames.add(frame)
    return frames if frames is not None and frames.counts else None


def _planes_to_mono(planes: list[bytearray], fmt: str, channels: int) -> np.ndarray:
    """Raw samples in FFmpeg sample format ``fmt`` (``s16``, ``fltp``, ...: one buffer per channel when planar,
    one interleaved buffer when packed) to mono ``float32[n]`` (writable; it may share ``planes``' memory):
    integer PCM scaled to [-1, 1), channels averaged (the float32 sum divided by their number: the numbers of
    ``mean(axis=0)``, 40 % faster)."""
    planar = fmt.endswith("p")
    dtype = np.dtype(_SAMPLE_DTYPES[fmt[:-1] if planar else fmt])
    if planar:
        arr = np.stack([np.frombuffer(p, dtype) for p in planes]) if channels > 1 else np.frombuffer(planes[0], dtype)[None]
    else:
        arr = np.frombuffer(planes[0], dtype).reshape(-1, channels).T
    arr = pcm_to_float(arr) if arr.dtype != np.float32 else arr
    return np.add.reduce(arr, axis=0) / np.float32(channels) if channels > 1 else arr[0]


def frame_to_mono(frame) -> np.ndarray:
    """A decoded PyAV ``AudioFrame`` (any sample format and layout) to mono ``float32[samples]``."""
    frames = DecodedFrames((1, 1))
    frames.add(frame)
    if not frames.counts:
        return np.zeros(0, dtype=np.float32)
    return DecodedFrames._mono(frames.segments[0])


def stream_end_time(stream) -> float | None:
    """End of a PyAV stream in seconds (``start_time + duration``) when the container declares it."""
    if stream.duration is None or stream.time_base is None:
        return None
    return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)


def _chunks_end(chunks: list[tuple[float | None, int]], rate: int, begin: float) -> float:
    """Time just after the last decoded sample (``(time, sample count)`` per chunk; a missing time follows on)."""
    t = begin
    for start, n in chunks:
        t = (start if start is not None else t) + n / rate
    return t


class Timeline:
    """Timestamped audio chunks laid on one time axis at ``rate`` Hz, read from the front as they become final.

    Sample ``j`` is at time ``begin + j / rate``. :meth:`place` lays a chunk (see :func:`place_on_timeline`
    for the rules); :meth:`take` returns the next ``count`` samples (zeros where nothing was placed) and
    forgets them, so a long stream needs memory only for what is placed but not yet taken. A chunk that
    lands on samples already taken is laid only from the first untaken sample on.
    """

    def __init__(self, rate: int, begin: float):
        self.rate, self.begin = rate, begin
        self.taken = 0  # index of self.buf[0]
        self.buf = np.zeros(0, dtype=np.float32)
        self.pos: int | None = None  # index just after the latest chunk
        self.tolerance = max(1, int(round(0.001 * rate)))

    def place(self, t: float | None, x: np.ndarray) -> None:
        at = int(round((t - self.begin) * self.rate)) if t is not None else self.pos
        if at is None:
            at = 0
        if self.pos is not None and abs(at - self.pos) <= self.tolerance:
            at = self.pos
        lo, hi = max(at, self.taken), at + len(x)
        if hi > lo:
            if hi - self.taken > len(self.buf):  # grow (doubling), zeros where nothing is placed yet
                grown = np.zeros(max(hi - self.taken, 2 * len(self.buf)), dtype=np.float32)
                grown[: len(self.buf)] = self.buf
                self.buf = grown
            self.buf[lo - self.taken : hi - self.taken] = x[lo - at : hi - at]
        self.pos = at + len(x)

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` samples, ``float32[count]``."""
        out = np.zeros(count, dtype=np.float32)
        k = min(count, len(self.buf))
        out[:k] = self.buf[:k]
        self.buf = self.buf[k:]
        self.taken += count
        return out


def place_on_timeline(
    chunks: list[tuple[float | None, np.ndarray]], rate: int, begin: float, end: float
) -> np.ndarray:
    """Lay timestamped audio chunks on the span ``[begin, end)`` seconds at ``rate`` Hz.

    ``chunks`` are ``(time_of_first_sample_in_seconds or None, float32[n])`` in decode order.
    Chunks that follow on within 1 ms of the running position are laid end to end (timestamp
    rounding is not allowed to create clicks); a real gap is filled with zeros and an overlap is
    overwritten, so sample ``j`` of the result is at time ``begin + j / rate``.
    Returns ``float32[round((end - begin) * rate)]``.
    """
    timeline = Timeline(rate, begin)
    for t, x in chunks:
        timeline.place(t, x)
    return timeline.take(max(0, int(round((end - begin) * rate))))


def pcm_to_float(arr: np.ndarray) -> np.ndarray:
    """Integer PCM samples (any shape) to float32 in [-1, 1) (signed: / 2**(bits-1); uint8: centred on 128);
    float input is only cast to float32."""
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    mel = f / f_sp
    log_region = f >= min_log_hz
    return np.where(log_region, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, ``float32[n_mels, n_fft // 2 + 1]`` (cached)."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}, rate={sample_rate}")
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


def _window(name: str, length: int) -> torch.Tensor:
    if name == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64)
    if name == "hamming":
        return torch.hamming_window(length, periodic=True, dtype=torch.float64)
    raise ValueError(f"unknown window {name!r}; use 'hann' or 'hamming'")


def _stft_power(wave: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``|torch.stft|^2`` (centred frames, zero padding)."""
    spec = torch.stft(wave, n_fft, hop, n_fft, window, center=True, pad_mode="constant", return_complex=True)
    return spec.real.square() + spec.imag.square()


# Under torch.compile the STFT runs outside the graph: Inductor has no complex kernels, and a compiled bf16
# training step through it gave NaN gradients on an H200 (eager was finite). torch._disable_dynamo is
# torch.compiler.disable importing torch._dynamo only when first called, i.e. only when compiling: eager
# inference (``avssl embed``) never imports it (1.2 s, a third of the command's start-up).
_stft_power_uncompiled = torch._disable_dynamo(_stft_power)


class LogMel(nn.Module):
    """Waveform ``float32[B, N]`` -> log-mel ``float32[B, n_mels, T]``, T = N // hop + 1.

    Centred frames (zero padding of n_fft // 2 at both ends), power spectrum, mel filters,
    ``log(mel + log_offset)``. The default uses ``torch.stft``; with ``export_mode=True`` the power
    spectrum is real matrix products (:class:`avssl.media.dft.FoldedPowerSpectrum`: the same numbers within
    float32 rounding, ONNX-exportable, only the frequency bins the mel filters use).
    """

    def __init__(self, cfg: AudioConfig | None = None, export_mode: bool = False):
        super().__init__()
        cfg = cfg or AudioConfig()
        if cfg.win_length > cfg.n_fft:
            raise ValueError(f"win_length ({cfg.win_length}) must be <= n_fft ({cfg.n_fft})")
        self.cfg = cfg
        self.export_mode = export_mode
        win = _window(cfg.window, cfg.win_length)
        left = (cfg.n_fft - cfg.win_length) // 2
        win = F.pad(win, (left, cfg.n_fft - cfg.win_length - left))  # window centred in n_fft
        self.register_buffer("window", win.float(), persistent=False)
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("mel_fb", torch.from_numpy(fb.copy()), persistent=False)
        used = np.flatnonzero(fb.any(axis=0))  # the bins some mel filter reads
        bins = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        self.folded = FoldedPowerSpectrum(cfg.n_fft, cfg.hop_length, win, bins)
        self.register_buffer("mel_fb_used", torch.from_numpy(fb[:, bins[0] : bins[1]].T.copy()), persistent=False)

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> ``|STFT|^2`` as ``[B, n_fft//2+1, T]`` (``torch.stft``)."""
        cfg = self.cfg
        stft = _stft_power_uncompiled if torch.compiler.is_compiling() else _stft_power
        return stft(wave, cfg.n_fft, cfg.hop_length, self.window)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a waveform batch [B, N], got shape {tuple(wave.shape)}")
        if self.export_mode:
            mel = torch.matmul(self.folded(wave.float()), self.mel_fb_used)  # [B, T, n_mels]
            return torch.log(mel + self.cfg.log_offset).transpose(1, 2)
        mel = torch.matmul(self.mel_fb, self.power_spectrogram(wave.float()))
        return torch.log(mel + self.cfg.log_offset)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length + 1
