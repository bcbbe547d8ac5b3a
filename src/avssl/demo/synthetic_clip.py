"""What one clip of the synthetic world is: its class (:class:`ClassSpec`: visual and audio signature)
and its per-clip nuisances and sound onsets (:class:`ClipParams`, drawn by :func:`sample_clip_params`).
The renderers are :mod:`avssl.demo.synthetic_video` and :mod:`avssl.demo.synthetic_audio`; the world writer is
:mod:`avssl.demo.synthetic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PITCH_RANGE_HZ = (110.0, 660.0)  # log-uniform per clip, independent of the class


@dataclass
class ClassSpec:
    """One source class: its label, visual signature and audio signature."""

    label: str
    shape: str
    colour: str
    texture: str
    timbre: str  # timbre family name, or "bank:<folder>" with a sound bank
    recordings: list[str]  # sound-bank files relative to the bank folder (empty without a bank)



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
