"""The aligned random crop of a clip: an audio window and exactly the frames shown in it.

:func:`choose_crop` draws where the window starts from the clip's lengths only; :func:`crop_clip` cuts it
from decoded arrays and :func:`crop_sample` from a raw shard sample, decoding only the window (the same
values with the same generator). Short clips are padded (:func:`fit_crop`); frames larger than the run's
``video.size`` are downscaled (:func:`resize_frames`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def choose_crop(
    num_samples: int, num_frames: int | None, crop_seconds: float, sample_rate: int, fps: float,
    rng: np.random.Generator,
) -> tuple[int, int | None]:
    """Where an aligned random crop of a clip starts, from its lengths only: ``(first sample, first frame)``.

    With frames (``num_frames`` not None; 0 for an audio-only sample) the window starts on a frame
    ``f0`` drawn uniformly among those leaving a full window (0 for a short clip), and the audio at
    sample ``round(f0 / fps * sample_rate)``, where frame ``f0`` is shown. Without (None), it starts
    on any sample and the frame is None. One draw from ``rng`` either way.
    """
    if num_frames is None:
        n = int(round(crop_seconds * sample_rate))
        return int(rng.integers(0, max(0, num_samples - n) + 1)), None
    seconds = min(num_samples / sample_rate, num_frames / fps) if num_frames else num_samples / sample_rate
    f0 = int(rng.integers(0, max(0, int(math.floor((seconds - crop_seconds) * fps + 1e-6))) + 1))
    return int(round(f0 / fps * sample_rate)), f0


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """``uint8[T, H, W, 3]`` -> ``uint8[T, size, size, 3]`` by area averaging (PIL ``BOX``); unchanged when
    already that size. Shards ingested at a higher resolution thus serve runs at any lower ``video.size``."""
    if frames.shape[1:3] == (size, size) or len(frames) == 0:
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BOX)) for f in frames])


def fit_crop(audio: np.ndarray, frames: np.ndarray | None, n: int, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad the audio to ``n`` samples; repeat the last frame (black when none) to ``t`` frames."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < n:
        audio = np.concatenate([audio, np.zeros(n - len(audio), np.float32)])
    if frames is not None and len(frames) < t:
        pad = frames[-1:] if len(frames) else np.zeros((1, *frames.shape[1:]), np.uint8)
        frames = np.concatenate([frames, np.repeat(pad, t - len(frames), axis=0)])
    return audio, frames


def crop_clip(
    audio: np.ndarray,
    frames: np.ndarray | None,
    crop_seconds: float,
    sample_rate: int,
    fps: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """An aligned random crop: ``float32[N]`` audio and exactly the ``uint8[T, H, W, 3]`` frames shown in it.

    ``N = round(crop_seconds * sample_rate)``, ``T = round(crop_seconds * fps)``; the window is
    :func:`choose_crop`'s. Where a clip is shorter than the window, audio is zero-padded and the
    last frame repeats (as :func:`avssl.data.augment.augment` does); a clip with no frames gets black
    ones. :func:`crop_sample` gives the same crop from a shard sample, decoding only the window.
    """
    n, t = int(round(crop_seconds * sample_rate)), int(round(crop_seconds * fps))
    start, f0 = choose_crop(len(audio), None if frames is None else len(frames), crop_seconds, sample_rate, fps, rng)
    return fit_crop(audio[start : start + n], None if frames is None else frames[f0 : f0 + t], n, t)


def crop_sample(
    sample: dict[str, Any], crop_seconds: float, rng: np.random.Generator, *, with_frames: bool,
    frame_size: int, audio_crops: int = 1,
) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(key, audio[N], audio2[N] | None, frames[T, H, W, 3] | None)`` from a raw shard sample.

    The same values as :func:`crop_clip` on the fully decoded clip with the same ``rng`` (the
    windows are drawn in the same order), but the window is chosen from the sample's lengths
    first and only it is decoded (``avssl.data.shards.decode_sample`` with ``start``/``seconds``; no
    frames at all when ``with_frames`` is false). ``audio_crops=2`` adds a second, independent
    audio window. An audio-only sample in a run with frames gets black ``frame_size`` frames.
    """
    from avssl.data.shards import decode_sample, sample_info

    info = sample_info(sample)
    sr, fps = info.sample_rate, info.fps
    n, t = int(round(crop_seconds * sr)), int(round(crop_seconds * fps))
    start, f0 = choose_crop(info.num_samples, info.num_frames if with_frames else None, crop_seconds, sr, fps, rng)
    second = choose_crop(info.num_samples, None, crop_seconds, sr, fps, rng)[0] if audio_crops == 2 else None
    # a window that starts on frame f0 starts at f0 / fps: decode_sample's first frame is f0, its first sample `start`
    clip = decode_sample(sample, start=start / sr if f0 is None else f0 / fps, seconds=crop_seconds, frames=with_frames)
    frames = None
    if with_frames:
        frames = resize_frames(clip.frames, frame_size) if info.num_frames else np.zeros((0, frame_size, frame_size, 3), np.uint8)
    audio, frames = fit_crop(clip.audio, frames, n, t)
    audio2 = None
    if second is not None:
        audio2, _ = fit_crop(decode_sample(sample, start=second / sr, seconds=crop_seconds, frames=False).audio, None, n, t)
    return info.key, audio, audio2, frames
