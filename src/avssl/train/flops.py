"""Compute, counted from the model rather than measured with a clock.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplications and
convolutions, 2 FLOPs per multiply-add (element-wise work, the STFT and the log-mel front-end are
not counted). The count depends only on the architecture and the input shapes, never on how busy
the machine is, so runs and sweep cells can be compared at equal compute.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from avssl.config import Config
from avssl.data.stream import Batch
from avssl.models import build_model
from avssl.pairs import crop_views
from avssl.train.losses import ContrastiveLoss
from avssl.train.trainer import embed_crops


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of ``fn(*args)`` (forward only, or forward + backward if ``fn`` calls ``backward``)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def example_batch(cfg: Config, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random audio ``float32[B, crop * rate]`` and frames ``float32[B, crop * fps, 3, size, size]``."""
    g = torch.Generator().manual_seed(0)
    n = int(round(cfg.data.crop_seconds * cfg.audio.sample_rate))
    t = int(round(cfg.data.crop_seconds * cfg.video.fps))
    return torch.randn(batch, n, generator=g), torch.rand(batch, t, 3, cfg.video.size, cfg.video.size, generator=g)


def train_step_flops(cfg: Config, per_clips: int = 2) -> dict[str, float]:
    """FLOPs of one training step of ``cfg`` (forward + backward of every view and the loss).

    Counted on ``per_clips`` clips and scaled to ``cfg.data.batch_size`` (tower FLOPs grow linearly
    with the batch; the loss's ``B x B`` similarity matrices are a negligible share). As in training
    (:func:`avssl.trainer.embed_crops`), a tower runs once per crop some pair needs it on: ``spec-spec``
    runs the spectrogram tower on both crops, ``spec-wave2`` runs it on crop 1 and the waveform tower on
    crop 2 only (as much as ``spec-wave``), ``[spec-wave, spec-wave2]`` one waveform forward more. Returns
    ``{"gflops_per_step", "gflops_per_clip"}``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg).train()
    loss_fn = ContrastiveLoss(cfg.loss)
    audio, frames = example_batch(cfg, per_clips)
    batch = Batch(audio, frames, [str(i) for i in range(per_clips)], audio.flip(0))
    crops = crop_views(cfg.loss.pairs, cfg.model.views)

    def step() -> None:
        emb = embed_crops(model, batch, *crops)
        eye = torch.eye(per_clips)
        sum(loss_fn(emb, eye).values()).backward()

    per_clip = count_flops(step) / per_clips
    return {"gflops_per_step": per_clip * cfg.data.batch_size / 1e9, "gflops_per_clip": per_clip / 1e9}
