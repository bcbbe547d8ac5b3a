"""The audio-visual model: one tower per view plus per-view projection heads into a shared space."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from avssl.config import Config
from avssl.models.registry import create_model

VIEWS = ("spec", "wave", "video")
AUDIO_VIEWS = ("spec", "wave")
PRESETS = ("tiny", "small", "paper")


class ProjectionHead(nn.Module):
    """``[B, in_dim]`` -> ``[B, embed_dim]``: Linear, ReLU, Linear (SimCLR-style MLP, not normalised)."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AVModel(nn.Module):
    """Towers (view -> ``[B, F_view]``) and heads (view -> ``[B, embed_dim]``).

    ``forward(audio float32[B, N], frames [B, T, 3, H, W] | None, views=None)`` returns the projected (not
    normalised) embeddings of every view (of ``views`` only, when given); the video view is skipped when
    ``frames`` is None.
    """

    def __init__(self, towers: dict[str, nn.Module], embed_dim: int):
        super().__init__()
        unknown = sorted(set(towers) - set(VIEWS))
        if unknown or not towers:
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {sorted(towers)}")
        self.towers = nn.ModuleDict(towers)
        self.heads = nn.ModuleDict({v: ProjectionHead(t.feature_dim, embed_dim) for v, t in towers.items()})
        self.embed_dim = embed_dim

    @property
    def views(self) -> list[str]:
        return list(self.towers)

    def forward(self, audio: torch.Tensor, frames: torch.Tensor | None = None,
                views: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for view, tower in self.towers.items():
            if views is not None and view not in views:
                continue
            if view == "video":
                if frames is None:
                    continue
                out[view] = self.heads[view](tower(frames))
            else:
                out[view] = self.heads[view](tower(audio))
        return out


SPEC_ARCHS = ("cnn14", "resnet")


def tower_name(view: str, preset: str, video_depth: int = 18, spec_arch: str = "cnn14") -> str:
    """Registry name of the tower a preset uses for ``view`` (e.g. ``("spec", "tiny") -> "cnn14-tiny"``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; use one of {', '.join(PRESETS)}")
    if spec_arch not in SPEC_ARCHS:
        raise ValueError(f"unknown model.spec_arch {spec_arch!r}; use one of {', '.join(SPEC_ARCHS)}")
    suffix = "" if preset == "paper" else f"-{preset}"
    base = {"spec": "cnn14" if spec_arch == "cnn14" else "spec-resnet", "wave": "res1dnet", "video": f"tsm-resnet{video_depth}"}
    if view not in base:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    return base[view] + suffix


def build_model(cfg: Config) -> AVModel:
    """The towers in ``cfg.model.views`` at preset ``cfg.model.preset`` and width ``cfg.model.width``,
    with projection heads to ``cfg.model.embed_dim``; ``cfg.augment.spec_mask`` switches on the spec
    tower's training-time masking. Parameter init uses torch's global RNG: seed it with
    ``torch.manual_seed`` before building for reproducible weights."""
    m = cfg.model
    overrides = {
        "spec": {"audio": cfg.audio, "spec_mask": cfg.augment.spec_mask, "seed": cfg.train.seed},
        "wave": {"sample_rate": cfg.audio.sample_rate},
        "video": {"input_size": cfg.video.size},
    }
    if len(set(m.views)) != len(m.views):
        raise ValueError(f"model.views has duplicates: {m.views}")
    towers = {
        v: create_model(tower_name(v, m.preset, m.video_depth, m.spec_arch), width=m.width, **overrides.get(v, {})) for v in m.views
    }
    return AVModel(towers, m.embed_dim)
