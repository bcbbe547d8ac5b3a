"""The built-in audio-visual world: procedural videos WITH sound, written as real mp4 files.

Each of K source classes has a visual signature (shape, colour, texture) and an audio signature
(a timbre family, or a folder of real recordings with ``sound_bank``). A clip shows one object
that flashes and bounces at every sound onset, so sound and picture are synchronised. Per-clip
nuisances, independent of the class: pitch, loudness, tempo, position, scale, background colour
and noise, off-screen distractor sounds.

The planted structure is checkable (see ``tests/test_synthetic.py``): the class is plain in the
frames, while the audio's pitch is constant within a clip and independent of the class. An
audio-only contrastive task can therefore tell clips apart by their pitch without learning the
class; matching audio to video needs the class (timbre <-> shape/colour) and the onsets.

Layout written by :func:`generate_world`::

    out_dir/train/<label>/<clip_id>.mp4     pretraining + probe training clips
    out_dir/test/<label>/<clip_id>.mp4      held-out clips
    out_dir/labels.csv                      path (relative to out_dir), label, split, nuisances
    out_dir/world.json                      generation parameters and the class table

Everything is a function of the seed (per-clip generators from ``numpy.random.SeedSequence``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import functools
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .audio import AUDIO_SUFFIXES, load_audio
from .video import encode_video

log = logging.getLogger(__name__)

PITCH_RANGE_HZ = (110.0, 660.0)  # log-uniform per clip, independent of the class
NOTE_MAX_SECONDS = 0.8

# --------------------------------------------------------------------------------------------
# Visual signatures: shape masks on normalised coordinates (u, v) = ((x - cx) / r, (y - cy) / r)
# --------------------------------------------------------------------------------------------


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    return rho <= 0.6 + 0.4 * np.cos(5 * theta)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(abs(u), abs(v)) <= 0.8,
    "triangle": lambda u, v: (v <= 0.75) & (v >= 2.0 * abs(u) - 1.0),
    "diamond": lambda u, v: abs(u) + abs(v) <= 1.0,
    "cross": lambda u, v: ((abs(u) <= 0.3) & (abs(v) <= 1.0)) | ((abs(v) <= 0.3) & (abs(u) <= 1.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "star": _star,
    "bar": lambda u, v: (abs(u) <= 1.0) & (abs(v) <= 0.4),
    "hexagon": lambda u, v: (abs(v) <= 0.87) & (abs(u) + 0.577 * abs(v) <= 1.0),
    "x": lambda u, v: (abs(u - v) <= 0.4) & (abs(u + v) <= 1.4) | (abs(u + v) <= 0.4) & (abs(u - v) <= 1.4),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 210),
    "cyan": (40, 220, 230),
    "orange": (245, 140, 20),
    "white": (235, 235, 235),
    "purple": (130, 60, 220),
    "lime": (170, 240, 90),
}

TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.ones_like(u),
    "stripes": lambda u, v: np.where(np.sin(6.0 * u) > 0, 1.0, 0.55),
    "checker": lambda u, v: np.where(np.sin(5.0 * u) * np.sin(5.0 * v) > 0, 1.0, 0.55),
    "rings": lambda u, v: np.where(np.sin(7.0 * np.hypot(u, v)) > 0, 1.0, 0.55),
}

# --------------------------------------------------------------------------------------------
# Audio signatures: timbre families. Each maps (f0 Hz, t seconds[N], rng) -> float32[N], peak ~1.
# --------------------------------------------------------------------------------------------


def _partials(f0: float, t: np.ndarray, ratios, amps, decays, sr: int) -> np.ndarray:
    """Sum of sines at ``f0 * ratio`` with per-partial exponential decay (1/s); drops > Nyquist."""
    out = np.zeros_like(t)
    for ratio, amp, decay in zip(ratios, amps, decays):
        f = f0 * ratio
        if f < 0.45 * sr:
            out += amp * np.exp(-decay * t) * np.sin(2 * np.pi * f * t)
    return out


def _adsr(t: np.ndarray, attack: float, release: float = 0.02) -> np.ndarray:
    """Linear attack to 1, sustain, linear release at the end of ``t``."""
    dur = t[-1] if len(t) else 0.0
    return np.clip(t / max(attack, 1e-4), 0, 1) * np.clip((dur - t) / release, 0, 1)


def _pluck(f0, t, rng, sr):
    n = np.arange(1, 13)
    return _partials(f0, t, n, 1.0 / n, 3.0 + 2.5 * n, sr) * _adsr(t, 0.002)


def _bell(f0, t, rng, sr):
    ratios = [1.0, 2.76, 5.40, 8.93, 13.34]
    return _partials(f0, t, ratios, [1, 0.6, 0.45, 0.3, 0.2], [2.0, 3.0, 4.0, 6.0, 8.0], sr) * _adsr(t, 0.002)


def _reed(f0, t, rng, sr):
    n = np.arange(1, 16, 2)  # odd harmonics only: clarinet-like
    return _partials(f0, t, n, 1.0 / n, np.zeros(len(n)), sr) * _adsr(t, 0.03)


def _brass(f0, t, rng, sr):
    n = np.arange(1, 16)
    vib = 1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * f0 * np.cumsum(vib) / sr
    out = sum((1.0 / k) * np.sin(k * phase) for k in n if k * f0 < 0.45 * sr)
    return out * _adsr(t, 0.08)


def _flute(f0, t, rng, sr):
    tone = _partials(f0, t, [1, 2, 3], [1.0, 0.25, 0.08], [0, 0, 0], sr)
    breath = rng.standard_normal(len(t)) * 0.15 * (1 + np.sin(2 * np.pi * f0 * t))
    return (tone + breath) * _adsr(t, 0.06)


def _tom(f0, t, rng, sr):
    sweep = f0 * (1.0 + 1.5 * np.exp(-t / 0.03))
    tone = np.sin(2 * np.pi * np.cumsum(sweep) / sr)
    noise = rng.standard_normal(len(t)) * np.exp(-t / 0.01) * 0.5
    return (tone + noise) * np.exp(-t * 9.0)


def _organ(f0, t, rng, sr):
    return _partials(f0, t, [1, 2, 3, 4, 6, 8], [1, 0.9, 0.6, 0.7, 0.5, 0.5], np.zeros(6), sr) * _adsr(t, 0.01)


def _epiano(f0, t, rng, sr):
    index = 3.0 * np.exp(-t * 4.0)
    return np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * f0 * t)) * np.exp(-t * 2.5) * _adsr(t, 0.002)


def _voice(f0, t, rng, sr):
    n = np.arange(1, int(0.45 * sr / f0) + 1)
    formants = [(700, 110), (1220, 120), (2600, 160)]  # an "ah" vowel
    amps = sum(np.exp(-0.5 * ((n * f0 - fc) / bw) ** 2) * g for (fc, bw), g in zip(formants, [1, 0.6, 0.3]))
    return _partials(f0, t, n, amps + 0.02 / n, np.zeros(len(n)), sr) * _adsr(t, 0.04)


def _whistle(f0, t, rng, sr):
    return np.sin(2 * np.pi * f0 * t) * (0.7 + 0.3 * np.sin(2 * np.pi * 9.0 * t)) * _adsr(t, 0.02)


TIMBRES: dict[str, Callable] = {
    "pluck": _pluck,
    "bell": _bell,
    "reed": _reed,
    "brass": _brass,
    "flute": _flute,
    "tom": _tom,
    "organ": _organ,
    "epiano": _epiano,
    "voice": _voice,
    "whistle": _whistle,
}
MAX_CLASSES = len(TIMBRES)


@dataclass
class ClassSpec:
    """One source class: its label, visual signature and audio signature."""

    label: str
    shape: str
    colour: str
    texture: str
    timbre: str  # timbre family name, or "bank:<folder>" with a sound bank
    recordings: list[str]  # sound-bank files relative to the bank folder (empty without a bank)


def class_table(num_classes: int, sound_bank: str | Path | None = None) -> list[ClassSpec]:
    """The K classes: class k gets the k-th shape, colour, timbre (or k-th bank folder, sorted)."""
    if sound_bank is None:
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}] for the procedural world, got {num_classes}")
        names = list(TIMBRES)[:num_classes]
        recordings: list[list[str]] = [[] for _ in names]
    else:
        bank = Path(sound_bank)
        if not bank.is_dir():
            raise FileNotFoundError(f"sound bank {bank} is not a folder; pass a folder with one subfolder per class")
        folders = [d for d in sorted(bank.iterdir()) if d.is_dir()]
        recordings = [sorted(str(f.relative_to(bank)) for f in d.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
                      for d in folders]
        pairs = [(d.name, r) for d, r in zip(folders, recordings) if r]
        if not 2 <= num_classes <= min(len(pairs), MAX_CLASSES):
            raise ValueError(
                f"sound bank {bank} has {len(pairs)} class folders with audio files; num_classes must be in "
                f"[2, {min(len(pairs), MAX_CLASSES)}], got {num_classes}"
            )
        names = [name for name, _ in pairs[:num_classes]]
        recordings = [r for _, r in pairs[:num_classes]]
    shapes, colours, textures = list(SHAPES), list(COLOURS), list(TEXTURES)
    return [
        ClassSpec(
            label=name,
            shape=shapes[k],
            colour=colours[k],
            texture=textures[k % len(textures)],
            timbre=name if sound_bank is None else f"bank:{name}",
            recordings=recordings[k],
        )
        for k, name in enumerate(names)
    ]


def split_recordings(spec: ClassSpec, test_fraction: float, seed: int, class_index: int) -> dict[str, ClassSpec]:
    """``{"train": spec, "test": spec}`` with disjoint sound-bank recordings: ``test_fraction`` of the
    class's recordings (at least one, never all; seeded) serve only its test clips, the rest only its
    training clips, so no held-out clip repeats a recording heard in training. Unchanged without a bank."""
    recs = spec.recordings
    if not recs:
        return {"train": spec, "test": spec}
    if len(recs) < 2:
        raise ValueError(f"sound bank class {spec.label!r} has {len(recs)} recording; it needs at least 2 so that "
                         "train and test clips use different recordings")
    order = np.random.default_rng([seed, class_index, 1 << 21]).permutation(len(recs))
    n_test = min(len(recs) - 1, max(1, int(round(len(recs) * test_fraction))))
    test = sorted(recs[i] for i in order[:n_test])
    train = sorted(recs[i] for i in order[n_test:])
    return {"train": replace(spec, recordings=train), "test": replace(spec, recordings=test)}


@dataclass
class ClipParams:
    """Per-clip nuisances (all independent of the class) and the onset times (seconds)."""

    pitch_hz: float
    loudness_db: float
    tempo_hz: float
    x: float  # object centre, fraction of the frame width
    y: float  # object centre at rest, fraction of the frame height
    scale: float  # object radius, fraction of the frame size
    noise_db: float  # background noise RMS, dBFS
    noise_tilt: float  # spectral slope of the background noise (0 white, 1 pink, 2 brown)
    background: tuple[int, int, int]
    distractors: int  # number of off-screen distractor sounds
    source: str  # sound-bank recording (empty for the procedural world)
    onsets: list[float]


def sample_clip_params(rng: np.random.Generator, seconds: float, spec: ClassSpec) -> ClipParams:
    """Draw one clip's nuisances; nothing here depends on the class except the recording choice."""
    tempo = float(rng.uniform(1.0, 3.0))
    period = 1.0 / tempo
    onsets, t = [], float(rng.uniform(0.05, min(period, 0.6)))
    while t < seconds - 0.15:
        onsets.append(round(t, 4))
        t += period * float(rng.uniform(0.8, 1.2))
    source = str(spec.recordings[rng.integers(len(spec.recordings))]) if spec.recordings else ""
    pitch = note_hz(Path(source).stem) if source else float(np.exp(rng.uniform(*np.log(PITCH_RANGE_HZ))))
    scale = float(rng.uniform(0.16, 0.28))
    return ClipParams(
        pitch_hz=pitch,
        loudness_db=float(rng.uniform(-18.0, -3.0)),
        tempo_hz=tempo,
        x=float(rng.uniform(scale + 0.02, 1.0 - scale - 0.02)),
        y=float(rng.uniform(scale + 0.17, 1.0 - scale - 0.02)),
        scale=scale,
        noise_db=float(rng.uniform(-55.0, -30.0)),
        noise_tilt=float(rng.uniform(0.0, 2.0)),
        background=tuple(int(c) for c in rng.integers(0, 70, size=3)),
        distractors=int(min(rng.poisson(1.0), 4)),
        source=source,
        onsets=onsets,
    )


def note_hz(name: str) -> float:
    """Scientific pitch name (``A4``, ``As3``/``A#3`` sharp, ``Bb2`` flat) -> Hz; NaN when not a note name."""
    m = re.fullmatch(r"([A-Ga-g])(s|#|b)?(-?\d)", name)
    if not m:
        return float("nan")
    semis = {"c": -9, "d": -7, "e": -5, "f": -4, "g": -2, "a": 0, "b": 2}[m.group(1).lower()]
    semis += {"s": 1, "#": 1, "b": -1, None: 0}[m.group(2)]
    return 440.0 * 2.0 ** ((semis + 12 * (int(m.group(3)) - 4)) / 12)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _event_envelopes(times: np.ndarray, onsets: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Flash (exponential decay, 0.15 s) and bounce (half-sine hop, 0.3 s) envelopes in [0, 1]."""
    flash, hop = np.zeros_like(times), np.zeros_like(times)
    for t0 in onsets:
        dt = times - t0
        on = dt >= 0
        flash = np.maximum(flash, np.where(on, np.exp(-np.clip(dt, 0, None) / 0.15), 0.0))
        hop = np.maximum(hop, np.where(on & (dt < 0.3), np.sin(np.pi * np.clip(dt, 0, 0.3) / 0.3), 0.0))
    return flash, hop


def render_frames(spec: ClassSpec, p: ClipParams, seconds: float, fps: float, size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """The clip's picture: ``uint8[T, size, size, 3]``, T = round(seconds * fps), frame i at i / fps."""
    n = int(round(seconds * fps))
    times = np.arange(n) / fps
    flash, hop = _event_envelopes(times, p.onsets)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    grad = (yy / size)[..., None] * 0.5 + 0.75
    background = np.asarray(p.background, dtype=np.float64)[None, None, :] * grad
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float64)
    radius = p.scale * size
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        cx, cy = p.x * size, p.y * size - hop[i] * 0.15 * size
        u, v = (xx - cx) / radius, (yy - cy) / radius
        mask = SHAPES[spec.shape](u, v)
        tex = TEXTURES[spec.texture](u, v)
        obj = colour[None, None, :] * (tex * (0.55 + 0.45 * flash[i]))[..., None]
        img = np.where(mask[..., None], obj, background)
        img += rng.normal(0.0, 4.0, size=img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _coloured_noise(n: int, tilt: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1 / f**tilt."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec * f ** (-tilt / 2), n)
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _distractor(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """An off-screen sound: a beep, a chirp or a band of noise, 50-400 ms, peak 1."""
    t = np.arange(n) / sr
    kind = rng.integers(3)
    if kind == 0:
        x = np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    elif kind == 1:
        f = np.geomspace(rng.uniform(200, 1000), rng.uniform(1000, 5000), n)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr)
    else:
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sr)
        lo = rng.uniform(200, 4000)
        x = np.fft.irfft(spec * ((freqs > lo) & (freqs < lo * 1.5)), n)
    return x * np.hanning(n) / (np.abs(x).max() + 1e-12)


def _peak(x: np.ndarray) -> np.ndarray:
    return x / (np.abs(x).max() + 1e-12)


def render_audio(spec: ClassSpec, p: ClipParams, seconds: float, sample_rate: int, rng: np.random.Generator,
                 bank: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
    """The clip's sound: ``float32[round(seconds * sample_rate)]`` in [-1, 1].

    One note per onset (the class's timbre at the clip's pitch, or the clip's sound-bank recording),
    each lasting until the next onset (at most 0.8 s), scaled to the clip loudness; plus coloured
    background noise and off-screen distractors.
    """
    n = int(round(seconds * sample_rate))
    source = np.zeros(n)
    ends = p.onsets[1:] + [seconds]
    for t0, t1 in zip(p.onsets, ends):
        start = int(round(t0 * sample_rate))
        length = min(int((min(t1 - t0, NOTE_MAX_SECONDS)) * sample_rate), n - start)
        if length <= 0:
            continue
        if bank is not None:
            note = bank(p.source)[:length].astype(np.float64)
            note = note * _adsr(np.arange(len(note)) / sample_rate, 0.001, 0.03)
        else:
            t = np.arange(length) / sample_rate
            note = TIMBRES[spec.timbre](p.pitch_hz, t, rng, sample_rate) * _adsr(t, 0.001, 0.03)
        source[start : start + len(note)] += _peak(note) * rng.uniform(0.8, 1.0)
    gain = 10 ** (p.loudness_db / 20)
    audio = _peak(source) * gain
    audio += _coloured_noise(n, p.noise_tilt, rng) * 10 ** (p.noise_db / 20)
    for _ in range(p.distractors):
        length = int(rng.uniform(0.05, 0.4) * sample_rate)
        start = int(rng.integers(0, max(n - length, 1)))
        level = gain * 10 ** (rng.uniform(-20.0, -6.0) / 20)
        audio[start : start + length] += _distractor(length, sample_rate, rng)[: n - start] * level
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _bank_recording(path: str, sample_rate: int) -> np.ndarray:
    """A sound-bank recording at the world's rate, from its first loud sample, peak-normalised (cached per process)."""
    audio = load_audio(path, sample_rate)
    onset = int(np.argmax(np.abs(audio) > 0.05 * np.abs(audio).max())) if audio.size else 0
    return _peak(audio[onset:])


@dataclass
class _ClipJob:
    out_dir: Path
    spec: ClassSpec
    class_index: int
    index: int
    split: str
    seed: int
    seconds: float
    size: int
    fps: float
    sample_rate: int
    sound_bank: str | None


def _make_clip(job: _ClipJob) -> dict[str, Any]:
    """Render and encode one clip (its own generator from ``(seed, class, index)``); its labels.csv row."""
    spec, k = job.spec, job.class_index
    rng = np.random.default_rng([job.seed, k, job.index])
    p = sample_clip_params(rng, job.seconds, spec)
    frames = render_frames(spec, p, job.seconds, job.fps, job.size, rng)
    bank = None if job.sound_bank is None else (lambda rel: _bank_recording(str(Path(job.sound_bank) / rel), job.sample_rate))
    audio = render_audio(spec, p, job.seconds, job.sample_rate, rng, bank)
    clip_id = f"s{job.seed}-{k:02d}-{job.index:04d}"
    rel = Path(job.split) / spec.label / f"{clip_id}.mp4"
    (job.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    encode_video(job.out_dir / rel, frames, job.fps, audio=audio, sample_rate=job.sample_rate)
    return {
        "path": rel.as_posix(), "label": spec.label, "split": job.split, "clip_id": clip_id, "class_index": k,
        "shape": spec.shape, "colour": spec.colour, "texture": spec.texture, "timbre": spec.timbre,
        "pitch_hz": round(p.pitch_hz, 3), "loudness_db": round(p.loudness_db, 3), "tempo_hz": round(p.tempo_hz, 4),
        "num_onsets": len(p.onsets), "x": round(p.x, 4), "y": round(p.y, 4), "scale": round(p.scale, 4),
        "noise_db": round(p.noise_db, 3), "noise_tilt": round(p.noise_tilt, 4), "distractors": p.distractors,
        "source": p.source, "onsets": ";".join(f"{t:.4f}" for t in p.onsets),
    }


LABEL_COLUMNS = ["path", "label", "split", "clip_id", "class_index", "shape", "colour", "texture", "timbre",
                 "pitch_hz", "loudness_db", "tempo_hz", "num_onsets", "x", "y", "scale", "noise_db", "noise_tilt",
                 "distractors", "source", "onsets"]


def generate_world(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    clips_per_class: int = 32,
    seconds: float = 3.0,
    seed: int = 0,
    sound_bank: str | Path | None = None,
    test_fraction: float = 0.25,
    size: int = 64,
    fps: float = 10.0,
    sample_rate: int = 16000,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic world (mp4 files with AAC audio, ``labels.csv``, ``world.json``); returns ``out_dir``.

    ``num_classes`` K (2-10), ``clips_per_class`` clips of ``seconds`` each; per class,
    ``test_fraction`` of the clips go to the ``test`` split. Frames are ``size`` x ``size`` pixels at
    ``fps``; audio is mono at ``sample_rate`` Hz. ``sound_bank``: a folder with one subfolder of
    recordings per class (the first K sorted folders become the classes; each clip repeats one
    recording, whose note name is its pitch; each class's recordings are split between train and
    test clips first, :func:`split_recordings`, so no test clip reuses a training recording). ``workers`` processes render and encode clips (default:
one per CPU); the output does not depend on it. Same arguments -> same decoded content.
    """
    out_dir = Path(out_dir)
    if size % 2 or size < 16:
        raise ValueError(f"size must be an even number >= 16 (yuv420p), got {size}")
    if clips_per_class < 2 or not 0 < test_fraction < 1:
        raise ValueError(f"need clips_per_class >= 2 and 0 < test_fraction < 1, got {clips_per_class}, {test_fraction}")
    if seconds < 0.5:
        raise ValueError(f"seconds must be >= 0.5, got {seconds}")
    classes = class_table(num_classes, sound_bank)
    n_test = max(1, int(round(clips_per_class * test_fraction)))
    test_ids = [set(np.random.default_rng([seed, k, 1 << 20]).permutation(clips_per_class)[:n_test].tolist())
                for k in range(num_classes)]
    by_split = [split_recordings(c, test_fraction, seed, k) for k, c in enumerate(classes)]
    jobs = []
    for k in range(num_classes):
        for j in range(clips_per_class):
            split = "test" if j in test_ids[k] else "train"
            jobs.append(_ClipJob(out_dir, by_split[k][split], k, j, split, seed, seconds, size, fps, sample_rate,
                                 str(sound_bank) if sound_bank is not None else None))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    rows = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc="synthetic world", unit="clip", disable=not progress))
        if workers == 1:
            made = map(_make_clip, jobs)
        else:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers))
            made = pool.map(_make_clip, jobs, chunksize=4)
        for row in made:
            rows.append(row)
            bar.update(1)
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    world = {
        "seed": seed, "num_classes": num_classes, "clips_per_class": clips_per_class, "seconds": seconds,
        "test_fraction": test_fraction, "size": size, "fps": fps, "sample_rate": sample_rate,
        "sound_bank": str(sound_bank) if sound_bank is not None else None,
        "classes": [{k: v for k, v in asdict(c).items() if k != "recordings"} for c in classes],
    }
    (out_dir / "world.json").write_text(json.dumps(world, indent=2))
    log.info("synthetic world: %d clips (%d classes, %.1f s each) in %s", len(rows), num_classes, seconds, out_dir)
    return out_dir


def read_labels(out_dir: str | Path) -> list[dict]:
    """Rows of ``out_dir/labels.csv`` as dicts (strings), with ``path`` made absolute."""
    out_dir = Path(out_dir)
    path = out_dir / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; generate the world first (avssl.synthetic.generate_world)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["path"] = str(out_dir / row["path"])
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m avssl.synthetic OUT [--classes K] ...``: write a world (for tests and experiments)."""
    parser = argparse.ArgumentParser(prog="python -m avssl.synthetic", description=generate_world.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--clips-per-class", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--sound-bank", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_world(args.out, num_classes=args.classes, clips_per_class=args.clips_per_class, seconds=args.seconds,
                   seed=args.seed, sound_bank=args.sound_bank, size=args.size, fps=args.fps,
                   sample_rate=args.sample_rate, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
