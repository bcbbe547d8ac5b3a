"""One rank's training step: model, loss, optimizer, schedule and augmentation generator (:class:`Trainer`).

:func:`plan_views` checks ``loss.pairs`` against ``model.views``. ``Trainer.step(batch)`` augments and
mixes a device batch (:mod:`avssl.data.augment`), embeds every view (:mod:`avssl.models`), sums the named
InfoNCE losses (:mod:`avssl.train.losses`) and steps the optimizer and schedule (:mod:`avssl.train.optim`). The loop
around it (run folder, checkpoints, logs, stopping) is :func:`avssl.train.pretrain.pretrain`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import nn

from avssl.config import Config, ConfigError, check_choices
from avssl.data.augment import augment, mix
from avssl.data.stream import Batch
from avssl.models import build_model
from avssl.models.spec import SpecMask
from avssl.pairs import crop_views
from avssl.train import distributed as dist
from avssl.pairs import SECOND_CROP, parse_pair
from avssl.train.losses import ContrastiveLoss
from avssl.train.optim import build_optimizer, build_schedule


def plan_views(cfg: Config) -> bool:
    """Validate ``loss.pairs`` against ``model.views``; return whether the run is two-crop.

    A pair names two views (``"spec-video"``); a view paired with itself (``"spec-spec"``) means
    two independent audio crops of each clip (COLA-style), which only audio views allow; an audio view
    with the suffix ``2`` (``"spec-wave2"``, ``"wave2-video"``) sees the second crop (:mod:`avssl.pairs`).
    A run is two-crop when any pair uses a second crop. Raises :class:`ConfigError` naming the pair.
    """
    views = set(cfg.model.views)
    if not cfg.loss.pairs:
        raise ConfigError("loss.pairs is empty; name at least one pair such as spec-video")
    two_crop, seen = False, {}
    for pair in cfg.loss.pairs:
        try:
            keys = parse_pair(pair)
        except ValueError as e:
            raise ConfigError(f"loss.pairs: {e}") from None
        missing = [k.removesuffix(SECOND_CROP) for k in keys if k.removesuffix(SECOND_CROP) not in views]
        if missing:
            raise ConfigError(f"loss.pairs: {pair!r} uses {missing[0]!r}, which is not in model.views={sorted(views)}")
        if frozenset(keys) in seen:
            raise ConfigError(f"loss.pairs: {pair!r} compares what {seen[frozenset(keys)]!r} compares; keep one")
        seen[frozenset(keys)] = pair
        two_crop |= any(k.endswith(SECOND_CROP) for k in keys)
    return two_crop


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def embed_crops(model: nn.Module, batch: Batch, first: list[str], second: list[str]) -> dict[str, torch.Tensor]:
    """``{key: float32[B, D]}``: the views ``first`` on crop 1 (``batch.audio``, ``batch.frames``) and the audio
    views ``second`` on crop 2 (``batch.audio2``), whose keys get the suffix ``2``
    (:func:`avssl.pairs.crop_views`: each tower runs once per crop a pair needs it on)."""
    emb = model(batch.audio, batch.frames if "video" in first else None, views=first)
    if second:
        emb.update({v + SECOND_CROP: e for v, e in model(batch.audio2, None, views=second).items()})
    return {k: v.float() for k, v in emb.items()}


def _augment_and_mix(batch: Batch, cfg: Config, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """Per-example augmentation (each crop on its own), then mixing; both crops of a clip mix alike."""
    crop, sr, fps = cfg.data.crop_seconds, cfg.audio.sample_rate, cfg.video.fps
    batch = augment(batch, cfg.augment, generator, crop, sr, fps)
    if batch.audio2 is None:
        return mix(batch, cfg.augment, generator)
    second = replace(batch, audio=batch.audio2, frames=batch.frames[:, :0], audio2=None)
    audio2 = augment(second, cfg.augment, generator, crop, sr, fps).audio
    n = batch.audio.shape[1]  # mix the two crops side by side: one partner and weight per clip
    both = replace(batch, audio=torch.cat([batch.audio, audio2], dim=1), audio2=None)
    mixed, mix_matrix = mix(both, cfg.augment, generator)
    return replace(mixed, audio=mixed.audio[:, :n], audio2=mixed.audio[:, n:]), mix_matrix


class Trainer:
    """Model, loss, optimizer, schedule and augmentation generator for one rank, and one optimizer step.

    ``step(batch)`` augments and mixes ``batch`` on the device, embeds every view (bf16 autocast on
    CUDA unless ``train.precision`` says otherwise), sums the named losses, back-propagates, clips
    the gradient norm and steps optimizer and schedule. ``model`` is the unwrapped model (what
    checkpoints store); ``train_model`` the DDP / compiled wrapper that runs the forward pass.
    """

    def __init__(
        self, cfg: Config, device: torch.device, *, rank: int = 0, world: int = 1, local_rank: int = 0
    ) -> None:
        check_choices(cfg)  # a Config built in code, not loaded, is checked here (train.precision, optim.name, ...)
        self.cfg, self.device, self.world = cfg, device, world
        self.two_crop = plan_views(cfg)
        self.crops = crop_views(cfg.loss.pairs, cfg.model.views)  # (views on crop 1, audio views on crop 2)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg).to(device)
        if world > 1:  # a positive pair shares its rank's batch statistics: per-rank BN leaks "same rank"
            if not cfg.train.sync_bn:
                raise ConfigError("train.sync_bn=false would normalise with per-rank BatchNorm statistics under "
                                  f"{world} processes, which lets the loss tell ranks apart; keep train.sync_bn=true")
            model = dist.convert_sync_batchnorm(model, device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss_fn = ContrastiveLoss(cfg.loss).to(device)
        self.params = [p for p in [*model.parameters(), *self.loss_fn.parameters()] if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg)
        self.schedule = build_schedule(self.optimizer, cfg)
        self.generator = torch.Generator()  # on the CPU: augment draws there and moves the numbers to the device
        self.generator.manual_seed(cfg.train.seed * 1000 + rank)
        for m in model.modules():  # spec masks too: distinct per rank, and in the checkpointed generator state
            if isinstance(m, SpecMask):
                m.use_generator(self.generator)
        self.train_model: nn.Module = model
        if world > 1:
            ids = [local_rank] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
        self.autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext
        self.train_model.train()

    def step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimizer step on a device batch; returns ``({"loss", "nce/...", "grad_norm"}, embeddings)``."""
        cfg = self.cfg
        batch, mix_matrix = _augment_and_mix(batch, cfg, self.generator)
        with self.autocast():
            emb = embed_crops(self.train_model, batch, *self.crops)
        sources = batch.source_ids().to(self.device) if self.loss_fn.mask_same_source else None
        losses = self.loss_fn(emb, mix_matrix, sources)
        total = torch.stack(list(losses.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.world > 1:  # the loss module (learnable temperature) is not inside DDP
            for p in self.loss_fn.parameters():
                if p.grad is not None:
                    p.grad = dist.all_reduce_mean(p.grad)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.schedule.step()
        return {"loss": total, **losses, "grad_norm": grad_norm}, emb

    def state_dict(self) -> dict[str, Any]:
        """Everything but the RNG states and step (see :func:`pretrain`)."""
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0], self.generator)
