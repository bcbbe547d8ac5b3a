"""Waveform tower: a Res1dNet-style 1-D residual CNN over the raw waveform."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from avssl.models.layers import ResBlock, pool_time, scale_width
from avssl.models.registry import register_model


class WaveTower(nn.Module):
    """Waveform ``float32[B, N]`` -> strided stem conv -> stages of (max pool, residual blocks).

    ``stages`` is a list of ``(channels, pool, blocks)``. One output step covers
    ``stem_stride * prod(pools)`` samples: ``frame_hop_seconds`` at ``sample_rate``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        stem_channels: int = 8,
        stem_stride: int = 4,
        stages: Sequence[tuple[int, int, int]] = ((8, 4, 1), (16, 4, 1), (32, 4, 1), (64, 4, 1)),
        width: float = 1.0,
    ):
        super().__init__()
        c0 = scale_width(stem_channels, width)
        self.stem = nn.Sequential(
            nn.Conv1d(1, c0, 11, stride=stem_stride, padding=5, bias=False), nn.BatchNorm1d(c0), nn.ReLU()
        )
        layers: list[nn.Module] = []
        cin = c0
        for channels, pool, blocks in stages:
            cout = scale_width(channels, width)
            if pool > 1:
                layers.append(nn.MaxPool1d(pool, ceil_mode=True))
            for _ in range(blocks):
                layers.append(ResBlock(cin, cout, dims=1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.feature_dim: int = cin
        self.frame_hop_seconds: float = stem_stride * math.prod(s[1] for s in stages) / sample_rate

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:
        """``float32[B, N]`` -> ``[B, T', feature_dim]``, ``T' = ceil(N / hop)`` (about)."""
        if wave.dim() != 2:
            raise ValueError(f"WaveTower expects a waveform batch [B, N], got shape {tuple(wave.shape)}")
        x = self.blocks(self.stem(wave[:, None, :]))
        return x.transpose(1, 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``float32[B, N]`` -> pooled ``[B, feature_dim]``."""
        return pool_time(self.forward_features(wave))

    def forward_layers(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """``float32[B, N]`` -> the output ``[B, T_i, C_i]`` of every residual block."""
        x = self.stem(wave[:, None, :])
        out = []
        for layer in self.blocks:
            x = layer(x)
            if not isinstance(layer, nn.MaxPool1d):
                out.append(x.transpose(1, 2))
        return out


WAVE_PRESETS: dict[str, dict] = {
    "tiny": dict(stem_channels=8, stem_stride=4, stages=((8, 4, 1), (16, 4, 1), (32, 4, 1), (64, 4, 1))),
    "small": dict(
        stem_channels=16, stem_stride=4, stages=((16, 4, 1), (32, 4, 1), (64, 4, 1), (128, 2, 1), (256, 2, 1))
    ),
    # Res1dNet31-like: stem + 14 residual blocks (28 convs), one step per 5120 samples (0.32 s at 16 kHz).
    "paper": dict(
        stem_channels=64,
        stem_stride=5,
        stages=((64, 4, 2), (128, 4, 2), (256, 4, 3), (512, 4, 3), (1024, 2, 2), (2048, 2, 2)),
    ),
}

for _preset, _kw in WAVE_PRESETS.items():
    register_model("res1dnet" + ("" if _preset == "paper" else f"-{_preset}"), functools.partial(WaveTower, **_kw))
