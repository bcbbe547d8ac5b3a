"""Building blocks shared by the towers: width scaling and time pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 4 (at least 4), so widths stay GPU-friendly."""
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(4, int(round(channels * width / 4)) * 4)


def pool_time(features: torch.Tensor) -> torch.Tensor:
    """``[B, T', F]`` -> ``[B, F]``: mean plus max over time (CNN14's clip-level pooling)."""
    return features.mean(dim=1) + features.amax(dim=1)


def layer_stats(layers: list[torch.Tensor]) -> torch.Tensor:
    """Every block's time-resolved output ``[B, T_i, F_i]`` -> ``[B, sum_i 2 F_i]``: the mean and the
    standard deviation over time of each feature, block after block (the clip statistics a linear probe
    reads best; ``features="layers"`` in :class:`avssl.embed.embedder.Embedder`)."""
    return torch.cat([torch.cat([x.mean(dim=1), x.std(dim=1, unbiased=False)], dim=1) for x in layers], dim=1)


class ResBlock(nn.Module):
    """Residual block of two kernel-3 convs with BN, 1-D (``dims=1``) or 2-D (``dims=2``), and a
    shortcut that is a 1x1 conv + BN where the widths differ."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[dims]
        self.conv1 = conv(cin, cout, 3, padding=1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = bn(cout)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(conv(cin, cout, 1, bias=False), bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))
