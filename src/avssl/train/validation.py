"""Validation during pretraining: held-out videos scored as the run goes, so memorising shows while it happens.

``data.val`` (``avssl pretrain --val-data SHARDS``) names a shard folder written by ``avssl ingest`` (with its
``manifest.json``, checked against the config as the training shards are) of videos the run does not train on.
Every ``train.val_every`` steps and at the end of the run :func:`validate` scores the model on it:

* ``val/nce/PAIR`` for every pair of ``loss.pairs`` (weighted as in training) and ``val/loss``, their sum:
  InfoNCE on fixed crops (crop 1 = each clip's first window, crop 2 = its last, as
  :func:`avssl.train.retrieval.clip_windows` cuts them), no augmentation, no mixing, same-source negatives masked as
  in training, in consecutive batches of ``data.batch_size`` clips in the shards' order (full batches only, as
  in training, so the numbers compare with the training curve's; one batch of every clip when there are fewer).
* ``val/a2v_top1``, ``val/a2v_top5`` (and ``val/chance_top5``): audio-to-video retrieval among ALL validation
  videos (the clips of one source video joined back in key order), with the windows and means of
  :func:`avssl.train.retrieval.retrieval`; only for models with an audio and a video tower.

Deterministic: the model is put in eval mode (BatchNorm reads its running statistics and does not update them;
no spec masks), nothing draws a random number and the training loader is not touched; the model returns to the
mode it was in. Training with and without validation is bit-identical (tests/test_validation.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avssl.config import Config
from avssl.data.crops import resize_frames
from avssl.data.stream import Batch, source_of
from avssl.pairs import crop_views
from avssl.train.retrieval import AVClip, clip_windows, has_retrieval_towers, retrieval
from avssl.data.shardset import DataError, ShardSet, check_manifest, resolve_shards
from avssl.train.trainer import embed_crops

log = logging.getLogger(__name__)

PREFIX = "val/"  # every key of a validation row in metrics.jsonl starts with it (``step`` aside)


@dataclass
class ValidationSet:
    """Decoded validation data. ``batch``: each clip's fixed crops (``audio float32[C, N]``, ``frames
    uint8[C, T, 3, H, W]`` (T = 0 without a video view), ``audio2`` the last window or None, ``keys``);
    ``videos``: the clips of each source video joined in key order (:class:`avssl.train.retrieval.AVClip`)."""

    where: str
    batch: Batch
    videos: list[AVClip]


def load_validation(data: str | Path, cfg: Config, train: ShardSet | None = None, *,
                    decode: bool = True) -> ValidationSet | None:
    """Check the validation shards at ``data`` against ``cfg`` (every rank: a bad set fails everywhere, now) and,
    with ``decode``, read them whole and warn when they share source videos with the ``train`` shards.

    Raises :class:`avssl.data.shardset.DataError` naming the folder and the mismatched setting."""
    where = f"{data} (data.val)"
    shards = resolve_shards(data)
    if shards.manifest is None:
        raise DataError(f"{where}: no manifest.json beside the shards, so their parameters cannot be checked; "
                        "pass a folder written by `avssl ingest`")
    check_manifest(shards.manifest, cfg, where=where)
    if not decode:
        return None
    from avssl.data.shards import decode_sample, iter_samples

    with_frames = "video" in cfg.model.views
    clips = []
    for sample in iter_samples(shards.urls):
        c = decode_sample(sample, frames=with_frames)
        frames = resize_frames(c.frames, cfg.video.size) if len(c.frames) else np.zeros(
            (0, cfg.video.size, cfg.video.size, 3), np.uint8)
        clips.append(AVClip(c.audio, frames, c.key))
    if len(clips) < 2:
        raise DataError(f"{where}: {len(clips)} clip(s); validation needs at least 2 (negatives)")
    if train is not None:
        warn_shared_sources(where, {source_of(c.name) for c in clips}, train)
    return ValidationSet(where, _crops(clips, cfg), _join_videos(clips))


def _crops(clips: list[AVClip], cfg: Config) -> Batch:
    """Each clip's first window (crop 1: audio and its frames) and last window (crop 2: audio) as a :class:`Batch`."""
    sr, fps, crop = cfg.audio.sample_rate, cfg.video.fps, cfg.data.crop_seconds
    two_crop = bool(crop_views(cfg.loss.pairs, cfg.model.views)[1])
    audio, audio2, frames = [], [], []
    for c in clips:
        # without frames, a zero-size stand-in of the clip's length: clip_windows counts windows on both streams
        f = c.frames if len(c.frames) or "video" in cfg.model.views else np.zeros(
            (int(len(c.audio) * fps / sr), 0, 0, 3), np.uint8)
        a, w = clip_windows(c.audio, f, crop, sr, fps, max_windows=2)
        audio.append(a[0])
        audio2.append(a[-1])
        frames.append(w[0] if "video" in cfg.model.views else None)
    t = int(round(crop * fps)) if "video" in cfg.model.views else 0
    video = (torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3) if t else
             torch.zeros(len(clips), 0, 3, cfg.video.size, cfg.video.size, dtype=torch.uint8))
    return Batch(torch.from_numpy(np.stack(audio)), video, [c.name for c in clips],
                 torch.from_numpy(np.stack(audio2)) if two_crop else None)


def _join_videos(clips: list[AVClip]) -> list[AVClip]:
    """One clip per source video: its clips' audio and frames concatenated in key order."""
    by_source: dict[str, list[AVClip]] = {}
    for c in sorted(clips, key=lambda c: c.name):
        by_source.setdefault(source_of(c.name), []).append(c)
    return [AVClip(np.concatenate([c.audio for c in cs]), np.concatenate([c.frames for c in cs]), s)
            for s, cs in by_source.items()]


def warn_shared_sources(where: str, sources: set[str], train: ShardSet) -> list[str]:
    """Warn (and return them, sorted) when validation source videos also appear in the training shards. Reads
    only the local training shards' tar headers (keys), no sample; remote shards are not checked."""
    from avssl.data.shards import iter_samples

    local = [u for u in train.urls if "://" not in u and not u.startswith("pipe:")]
    if len(local) < len(train.urls):
        log.info("%s: %d remote training shard(s) not checked for shared videos", where, len(train.urls) - len(local))
    shared = sorted(sources & {source_of(s["__key__"]) for s in iter_samples(local)})
    if shared:
        log.warning("%s shares %d of its %d source videos with the training shards (e.g. %s): validation then "
                    "scores videos the run trains on; ingest held-out videos instead", where, len(shared),
                    len(sources), ", ".join(shared[:5]))
    return shared


@torch.no_grad()
def validate(model: torch.nn.Module, loss_fn: torch.nn.Module, vset: ValidationSet, cfg: Config,
             device: torch.device) -> dict[str, float]:
    """``{"val/nce/PAIR", "val/loss", "val/a2v_top1", "val/a2v_top5", "val/chance_top5", "val/seconds"}`` of the
    unwrapped ``model`` with the run's ``loss_fn`` (see the module docstring); this process alone (no collective)."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        out = _nce(model, loss_fn, vset.batch, cfg, device)
        if has_retrieval_towers(cfg.model.views):
            r = retrieval(model, cfg, vset.videos, batch_size=cfg.data.batch_size)
            out.update({f"{PREFIX}a2v_top1": r["a2v_top1"], f"{PREFIX}a2v_top5": r["a2v_top5"],
                        f"{PREFIX}chance_top5": r["chance_top5"]})
    finally:
        model.train(was_training)
    out[f"{PREFIX}seconds"] = time.perf_counter() - t0
    return out


def _nce(model: torch.nn.Module, loss_fn: torch.nn.Module, batch: Batch, cfg: Config,
         device: torch.device) -> dict[str, float]:
    """Mean over consecutive full batches of each pair's InfoNCE (no mixing), and of their sum (``val/loss``)."""
    first, second = crop_views(cfg.loss.pairs, cfg.model.views)
    size = min(cfg.data.batch_size, len(batch))
    sums: dict[str, float] = {}
    starts = range(0, len(batch) - size + 1, size)
    for i in starts:
        part = Batch(batch.audio[i : i + size], batch.frames[i : i + size], batch.keys[i : i + size],
                     None if batch.audio2 is None else batch.audio2[i : i + size]).to(device)
        emb = embed_crops(model, part, first, second)
        losses = loss_fn(emb, None, part.source_ids().to(device), gather=False)
        losses["loss"] = sum(losses.values())
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {PREFIX + k: v / len(starts) for k, v in sums.items()}


def plot_curves(out: str | Path) -> Path | None:
    """``out/curves.png``: per pair, the training InfoNCE against the validation one over the steps, and the
    validation retrieval top-1/top-5; None (with a log line) when matplotlib is missing or nothing was validated."""
    from avssl.train.pretrain import read_metrics

    train_rows, val_rows = read_metrics(out), read_metrics(out, split="val")
    if not val_rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no curves.png (the numbers are in metrics.jsonl)")
        return None
    pairs = sorted({k[len(PREFIX):] for r in val_rows for k in r if k.startswith(PREFIX + "nce/")})
    panels = pairs + (["retrieval"] if any(f"{PREFIX}a2v_top1" in r for r in val_rows) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        if name == "retrieval":
            for k in ("a2v_top1", "a2v_top5", "chance_top5"):
                ax.plot([r["step"] for r in val_rows], [r.get(PREFIX + k, np.nan) for r in val_rows], marker=".",
                        label=k)
            ax.set_ylabel("validation share")
        else:
            ax.plot([r["step"] for r in train_rows], [r.get(name, np.nan) for r in train_rows], lw=1, label="train")
            ax.plot([r["step"] for r in val_rows], [r[PREFIX + name] for r in val_rows], marker="o", label="validation")
            ax.set_ylabel("InfoNCE")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
