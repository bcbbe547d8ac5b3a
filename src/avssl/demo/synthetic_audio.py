"""The synthetic world's sounds: timbre families (each maps ``(f0 Hz, t seconds[N], rng, sr) -> float32[N]``,
peak ~1) and :func:`render_audio`: one note per onset, background noise and off-screen distractors.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from avssl.media.audio import load_audio
from avssl.demo.synthetic_clip import ClassSpec, ClipParams

NOTE_MAX_SECONDS = 0.8


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
