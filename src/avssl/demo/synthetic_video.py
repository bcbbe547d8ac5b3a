"""The synthetic world's pictures: visual signatures (shape masks, colours, textures) and
:func:`render_frames`, an object that flashes and bounces at every sound onset.

Shape masks work on normalised coordinates (u, v) = ((x - cx) / r, (y - cy) / r).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from avssl.demo.synthetic_clip import ClassSpec, ClipParams


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
