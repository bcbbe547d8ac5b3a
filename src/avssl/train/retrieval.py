"""Audio <-> video retrieval among clips: the score that validation tracks during pretraining
(:mod:`avssl.train.validation`) and ``avssl eval --retrieval`` reports (:mod:`avssl.evaluate.retrieval`, which
finds, decodes and tabulates the clips).

Each clip is cut into aligned windows of the training crop (``data.crop_seconds``: the audio and exactly the
frames shown in it, consecutive, at most ``max_windows`` per clip); the audio tower (``spec``, else ``wave``)
and the video tower embed every window through their projection heads, and a clip's embedding per modality is
the mean of its windows' unit vectors. Every clip's audio then ranks all clips' videos by cosine similarity
(and every video all audios): ``a2v_*`` / ``v2a_*`` top-1, top-5 and median rank (1 = its own clip first; ties
count against it), with chance beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avssl.config import Config
from avssl.data.crops import fit_crop

MAX_WINDOWS = 8


@dataclass
class AVClip:
    """A decoded clip: ``audio float32[N]`` at the run's rate and ``frames uint8[T, H, W, 3]`` at its fps and size."""

    audio: np.ndarray
    frames: np.ndarray
    name: str = ""


def clip_windows(audio: np.ndarray, frames: np.ndarray, crop_seconds: float, sample_rate: int, fps: float,
                 max_windows: int = MAX_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive aligned windows of one clip: ``(float32[K, N], uint8[K, T, H, W, 3])``.

    ``N = round(crop_seconds * sample_rate)``, ``T = round(crop_seconds * fps)``; window ``k`` starts on frame
    ``k * T`` and at the sample where that frame is shown. ``K`` = the whole windows both streams hold (at most
    ``max_windows``, spread evenly over the clip), and 1 for a clip shorter than a window (padded as
    :func:`avssl.data.crops.crop_clip` pads)."""
    n, t = int(round(crop_seconds * sample_rate)), int(round(crop_seconds * fps))
    hop = t / fps * sample_rate  # samples between window starts: t frames
    whole = max(1, min(len(frames) // t, int((len(audio) - n) // hop) + 1))
    picks = np.unique(np.linspace(0, whole - 1, min(whole, max_windows)).round().astype(int))
    cuts = [fit_crop(audio[int(round(k * hop)):][:n], frames[k * t : (k + 1) * t], n, t) for k in picks]
    return np.stack([a for a, _ in cuts]), np.stack([f for _, f in cuts])


@torch.no_grad()
def embed_clips(model: torch.nn.Module, cfg: Config, clips: list, batch_size: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit audio and video embeddings ``([C, D], [C, D])``, on the CPU, of ``clips`` (anything with ``.audio`` and
    ``.frames``): the mean of each clip's window embeddings (:func:`clip_windows`), renormalised. The windows
    run on the model's device."""
    sr, fps, crop = cfg.audio.sample_rate, cfg.video.fps, cfg.data.crop_seconds
    windows = [clip_windows(c.audio, c.frames, crop, sr, fps) for c in clips]
    owner = torch.cat([torch.full((len(a),), i) for i, (a, _) in enumerate(windows)])
    audio = np.concatenate([a for a, _ in windows])
    frames = np.concatenate([f for _, f in windows])
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # a parameterless stand-in runs on the CPU
    a_out, v_out = [], []
    for i in range(0, len(audio), batch_size):
        emb = model(torch.from_numpy(audio[i : i + batch_size]).to(device),
                    torch.from_numpy(frames[i : i + batch_size]).permute(0, 1, 4, 2, 3).to(device))
        audio_view = next((v for v in ("spec", "wave") if v in emb), None)
        if audio_view is None or "video" not in emb:
            raise ValueError(f"retrieval needs an audio and a video tower; this model gives {sorted(emb)}")
        a_out.append(F.normalize(emb[audio_view].float(), dim=-1).cpu())
        v_out.append(F.normalize(emb["video"].float(), dim=-1).cpu())

    def per_clip(x: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(len(clips), x.shape[1]).index_add_(0, owner, x)
        return F.normalize(sums, dim=-1)

    return per_clip(torch.cat(a_out)), per_clip(torch.cat(v_out))


def rank_metrics(sim: np.ndarray) -> dict[str, Any]:
    """Retrieval metrics of a query x candidate similarity ``[C, C]`` whose diagonal holds the true pairs.

    ``a2v_*``: rows are queries; ``v2a_*``: columns are. Ranks are 1-based and ties count against the
    query. Chance: ``1 / C``, ``min(5, C) / C`` and a median rank of ``(C + 1) / 2``."""
    n = len(sim)
    own = np.diag(sim)
    a2v = (sim >= own[:, None]).sum(1)  # 1 = own video first
    v2a = (sim >= own[None, :]).sum(0)
    out: dict[str, Any] = {"num_clips": n}
    for name, ranks in (("a2v", a2v), ("v2a", v2a)):
        out[f"{name}_top1"] = float(np.mean(ranks == 1))
        out[f"{name}_top5"] = float(np.mean(ranks <= 5))
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out.update({"chance_top1": 1.0 / n, "chance_top5": min(5, n) / n, "chance_median_rank": (n + 1) / 2})
    out["ranks"] = a2v
    return out


def retrieval(model: torch.nn.Module, cfg: Config, clips: list, *, labels: list[str] | None = None,
              batch_size: int = 32) -> dict[str, Any]:
    """Audio <-> video retrieval among ``clips`` (:func:`embed_clips`, :func:`rank_metrics`); also
    ``similarity float32[C, C]`` (audio rows, video columns) and, with ``labels``, ``class_top1`` (the first
    video has the query's label) and its chance."""
    a, v = embed_clips(model, cfg, clips, batch_size)
    sim = (a @ v.T).numpy().astype(np.float32)
    out = rank_metrics(sim)
    out["similarity"] = sim
    if labels is not None:
        lab = np.asarray(labels)
        out["class_top1"] = float(np.mean(lab[sim.argmax(1)] == lab))
        out["chance_class_top1"] = float(np.mean([np.mean(lab == x) for x in lab]))
    return out


def has_retrieval_towers(views: list[str]) -> bool:
    """A model can be scored by retrieval when it has a video tower and an audio one."""
    return "video" in views and bool({"spec", "wave"} & set(views))
