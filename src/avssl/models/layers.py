"""Building blocks shared by the towers: width scaling and time pooling."""

from __future__ import annotations

import torch


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 4 (at least 4), so widths stay GPU-friendly."""
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(4, int(round(channels * width / 4)) * 4)


def pool_time(features: torch.Tensor) -> torch.Tensor:
    """``[B, T', F]`` -> ``[B, F]``: mean plus max over time (CNN14's clip-level pooling)."""
    return features.mean(dim=1) + features.amax(dim=1)
