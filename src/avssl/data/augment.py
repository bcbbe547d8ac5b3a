"""Batch transforms on device, seeded by an explicit ``torch.Generator``: example mixing and augmentation.

:func:`mix` mixes examples of a batch (``none`` | ``mixup`` | ``mixback``) and returns the audio ->
video correspondence matrix the loss uses as targets. :func:`augment` crops an aligned audio
window and exactly its frames, then applies random resized crop, flip and colour jitter to the
frames (the same for every frame of a clip) and a random gain to the audio.

Spectrogram masking (``cfg.spec_mask``) is applied inside the spectrogram tower
(:class:`avssl.models.spec.SpecMask`, training mode only), where the log-mel front-end lives; the
trainer hands it the same per-rank generator as these transforms, so every random draw of a step
(crops, frame and gain augmentation, mixing, spec masks) comes from one generator whose state the
checkpoint saves, and ranks draw different masks.

Random numbers are drawn on the generator's device and moved to the batch's device, so a CPU
generator drives a CUDA batch reproducibly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from avssl.config import AugmentConfig
from avssl.data.stream import Batch

MIX_MODES = ("none", "mixup", "mixback")


def _rand(generator: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    """``n`` uniforms in [0, 1) from ``generator``, on ``device``."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def as_float_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1]; float frames unchanged (as float32)."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def sample_lambda(n: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` mixing weights ``max(l, 1 - l)`` with ``l ~ Beta(alpha, alpha)`` (in [0.5, 1]; 1 when alpha <= 0).

    torch's Beta sampler takes no generator, so a numpy generator is seeded from ``generator``.
    """
    if alpha <= 0:
        return torch.ones(n)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float()
    return torch.maximum(lam, 1 - lam)


def mix(batch: Batch, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """Mix examples of ``batch``; returns the mixed batch (frames float32 in [0, 1]) and ``corr[B, B]``.

    Each example ``i`` (with probability ``cfg.mix_prob``) gets a partner ``p(i)`` from a random
    permutation and a weight ``lam_i``; a mixed modality becomes ``lam_i * x_i + (1 - lam_i) * x_p(i)``.
    ``mixup``: ``lam ~ Beta(mix_alpha, mix_alpha)`` folded to [0.5, 1]; the SAME partner and lambda
    mix the waveform (``mix_audio``) and the frames (``mix_video``). ``mixback``: ``lam = 1 - u``,
    ``u ~ U(0, mixback_max)``: a small share of another clip in the switched-on modalities.

    ``corr`` is row-stochastic: row ``i`` is the distribution over the batch's (mixed) video clips
    that clip ``i``'s (mixed) audio is a positive for. It is the identity for ``none``, for
    ``mixback`` (the positive is unchanged) and for mixup of both modalities (a mixed clip's
    positive is its own mixed video; the partner's mixtures become hard negatives). Mixup of the
    audio only gives the mixture weights ``M`` (``M[i, i] = lam_i``, ``M[i, p(i)] += 1 - lam_i``);
    mixup of the frames only gives the row-normalised ``M.T``.
    """
    if cfg.mix not in MIX_MODES:
        raise ValueError(f"augment.mix must be one of {', '.join(MIX_MODES)}, got {cfg.mix!r}")
    if not 0.0 <= cfg.mix_prob <= 1.0:
        raise ValueError(f"augment.mix_prob must be in [0, 1], got {cfg.mix_prob}")
    n, device = len(batch), batch.audio.device
    frames = as_float_frames(batch.frames)
    eye = torch.eye(n, device=device)
    if cfg.mix == "none" or not (cfg.mix_audio or cfg.mix_video):
        return replace(batch, frames=frames), eye
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    active = _rand(generator, n, device) < cfg.mix_prob
    if cfg.mix == "mixup":
        lam = sample_lambda(n, cfg.mix_alpha, generator).to(device)
    else:
        lam = 1.0 - cfg.mixback_max * _rand(generator, n, device)
    lam = torch.where(active, lam, torch.ones_like(lam))
    weights = torch.diag(lam).index_put((torch.arange(n, device=device), perm), 1.0 - lam, accumulate=True)

    def blend(x: torch.Tensor) -> torch.Tensor:
        shape = (n,) + (1,) * (x.dim() - 1)
        return lam.view(shape) * x + (1.0 - lam).view(shape) * x[perm]

    audio = blend(batch.audio) if cfg.mix_audio else batch.audio
    frames = blend(frames) if cfg.mix_video and frames.shape[1] > 0 else frames
    mixed = replace(batch, audio=audio, frames=frames)
    if cfg.mix == "mixback" or (cfg.mix_audio and cfg.mix_video):
        return mixed, eye
    if cfg.mix_audio:
        return mixed, weights
    return mixed, weights.T / weights.T.sum(dim=1, keepdim=True)


def _crop_starts(
    num_audio: int,
    num_frames: int,
    crop_samples: int,
    crop_frames: int,
    rate: float,
    fps: float,
    n: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example start sample and start frame of an aligned window (frame ``f`` starts at ``f * rate / fps``)."""
    u = _rand(generator, n, device)
    if num_frames == 0:
        a0 = (u * (num_audio - crop_samples + 1)).long().clamp(max=num_audio - crop_samples)
        return a0, torch.zeros_like(a0)
    last = min(num_frames - crop_frames, math.floor((num_audio - crop_samples) * fps / rate))
    f0 = (u * (last + 1)).long().clamp(max=last)
    a0 = torch.round(f0 * (rate / fps)).long().clamp(max=num_audio - crop_samples)
    return a0, f0


def augment(
    batch: Batch, cfg: AugmentConfig, generator: torch.Generator, crop_seconds: float, sample_rate: int, fps: float
) -> Batch:
    """Per-example augmentation; returns frames as float32 in [0, 1].

    1. Aligned random time crop: ``crop_seconds`` of audio and exactly its ``round(crop_seconds * fps)``
       frames, starting on a frame boundary (audio is zero-padded, frames repeat the last one,
       where a clip is shorter than the crop).
    2. Frames: random resized crop (area fraction in [``frame_crop_scale``, 1], aspect ratio in
       [3/4, 4/3], resized back to H x W), horizontal flip (p = 0.5, ``frame_flip``), colour jitter
       (brightness, contrast, saturation factors in [1 - ``color_jitter``, 1 + ``color_jitter``]);
       one draw per clip, applied to all of its frames.
    3. Audio: random gain, uniform in [-``random_gain_db``, ``random_gain_db``] dB.
    """
    n, device = len(batch), batch.audio.device
    crop_samples = int(round(crop_seconds * sample_rate))
    crop_frames = int(round(crop_seconds * fps))
    audio, frames = batch.audio, batch.frames
    if audio.shape[1] < crop_samples:
        audio = F.pad(audio, (0, crop_samples - audio.shape[1]))
    has_frames = frames.shape[1] > 0
    if has_frames and frames.shape[1] < crop_frames:
        pad = frames[:, -1:].expand(-1, crop_frames - frames.shape[1], -1, -1, -1)
        frames = torch.cat([frames, pad], dim=1)
    a0, f0 = _crop_starts(
        audio.shape[1],
        frames.shape[1] if has_frames else 0,
        crop_samples,
        crop_frames,
        sample_rate,
        fps,
        n,
        generator,
        device,
    )
    audio = torch.gather(audio, 1, a0[:, None] + torch.arange(crop_samples, device=device))
    frames = as_float_frames(frames)
    if has_frames:
        frames = frames[torch.arange(n, device=device)[:, None], f0[:, None] + torch.arange(crop_frames, device=device)]
        frames = _frame_augment(frames, cfg, generator)
    gain_db = (2 * _rand(generator, n, device) - 1) * cfg.random_gain_db
    audio = audio * torch.pow(10.0, gain_db / 20.0)[:, None]
    return replace(batch, audio=audio, frames=frames)


def _frame_augment(frames: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``float[B, T, 3, H, W]`` in [0, 1] -> random resized crop + flip + colour jitter (one draw per clip)."""
    n, t, c, h, w = frames.shape
    device = frames.device
    if cfg.frame_crop_scale < 1.0 or cfg.frame_flip:
        area = cfg.frame_crop_scale + (1 - cfg.frame_crop_scale) * _rand(generator, n, device)
        # aspect ratio in [3/4, 4/3], narrowed so that the crop fits: area * ratio <= 1 and area / ratio <= 1
        lo = torch.clamp(area.log(), min=math.log(3 / 4))
        hi = torch.clamp(-area.log(), max=math.log(4 / 3))
        log_ratio = lo + (hi - lo) * _rand(generator, n, device)
        sx = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
        cx = (1 - sx) * (2 * _rand(generator, n, device) - 1)  # crop centre in [-1, 1] coordinates
        cy = (1 - sy) * (2 * _rand(generator, n, device) - 1)
        flip = (
            torch.where(_rand(generator, n, device) < 0.5, -1.0, 1.0)
            if cfg.frame_flip
            else torch.ones(n, device=device)
        )
        zero = torch.zeros(n, device=device)
        theta = torch.stack([torch.stack([sx * flip, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)  # [B, 2, 3]
        grid = F.affine_grid(theta, [n, t * c, h, w], align_corners=False)
        frames = F.grid_sample(
            frames.reshape(n, t * c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).view(n, t, c, h, w)
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        bright, contrast, sat = ((1 - j + 2 * j * _rand(generator, n, device)).view(n, 1, 1, 1, 1) for _ in range(3))
        frames = frames * bright
        mean = _gray(frames).mean(dim=(1, 2, 3, 4), keepdim=True)
        frames = (frames - mean) * contrast + mean
        gray = _gray(frames)
        frames = gray + (frames - gray) * sat
    return frames.clamp(0.0, 1.0)


def _gray(frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, H, W]`` -> luma ``[B, T, 1, H, W]`` (ITU-R BT.601 weights)."""
    r, g, b = frames.unbind(dim=2)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(2)
