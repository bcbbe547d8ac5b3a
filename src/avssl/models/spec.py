"""Spectrogram tower: a CNN14-style 2-D CNN (or a ResNet variant) over a log-mel front-end.

The front-end (:class:`avssl.media.audio.LogMel`) lives inside the tower, so the tower, its checkpoints
and its ONNX exports all take raw waveforms ``float32[B, N]`` at ``audio.sample_rate``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avssl.media.audio import LogMel
from avssl.config import AudioConfig
from avssl.models.layers import ResBlock, pool_time, scale_width
from avssl.models.registry import register_model


class ConvBlock2d(nn.Module):
    """CNN14 block: (3x3 conv, BN, ReLU) twice, then ``pool x pool`` average pooling."""

    def __init__(self, cin: int, cout: int, pool: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, ceil_mode=True)
        return x


def res_block_2d(cin: int, cout: int, pool: int) -> nn.Module:
    """ResNet block on log-mel: ``pool x pool`` average pooling (if > 1), then a 2-D :class:`ResBlock`."""
    pooling = nn.AvgPool2d(pool, ceil_mode=True) if pool > 1 else nn.Identity()
    return nn.Sequential(pooling, ResBlock(cin, cout, dims=2))


class SpecMask(nn.Module):
    """SpecAugment-style masking in training mode only: ``masks`` time stripes of up to
    ``max_time`` (a fraction of the steps) and ``masks`` mel stripes of up to ``max_freq`` bins,
    set to 0 (the per-bin mean after the tower's input BatchNorm). Random draws come from
    ``generator``, on its own device and moved to the input's: the module's own CPU generator
    (seeded with ``seed`` at first use) unless :meth:`use_generator` shares another. The trainer
    shares its per-rank augmentation generator, so masks differ per rank and its checkpointed
    state restores them exactly on resume."""

    def __init__(self, seed: int = 0, masks: int = 2, max_time: float = 0.1, max_freq: int = 8):
        super().__init__()
        self.seed, self.masks, self.max_time, self.max_freq = seed, masks, max_time, max_freq
        self.generator: torch.Generator | None = None

    def use_generator(self, generator: torch.Generator) -> None:
        """Draw the masks from ``generator`` from now on (not part of the state dict; save its state)."""
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T, M]`` -> the same with stripes zeroed (unchanged in eval mode)."""
        if not self.training:
            return x
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        b, _, t, m = x.shape
        keep = torch.ones(b, 1, t, m, device=x.device, dtype=x.dtype)
        for axis, size, widest in ((2, t, max(1, int(self.max_time * t))), (3, m, min(self.max_freq, m))):
            u = torch.rand(2, b, self.masks, generator=self.generator, device=self.generator.device).to(x.device)
            width = (u[0] * (widest + 1)).long()
            start = (u[1] * (size - width + 1)).long()
            pos = torch.arange(size, device=x.device)
            hit = ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)  # [B, size]
            keep = keep * (~hit).to(x.dtype).view(b, 1, *((size, 1) if axis == 2 else (1, size)))
        return x * keep


class SpecTower(nn.Module):
    """Waveform ``float32[B, N]`` -> log-mel ``[B, 1, T, n_mels]`` -> 2-D CNN -> features.

    ``channels[i]`` (scaled by ``width``) is the width of block ``i``; ``pools[i]`` the average
    pooling (time and frequency) after it (``block="cnn14"``) or before it (``block="resnet"``).
    ``forward_features`` averages over frequency and returns ``[B, T', feature_dim]`` with one
    step every ``frame_hop_seconds`` (``hop_length * prod(pools) / sample_rate``; step ``i``
    summarises roughly seconds ``[i * hop, (i + 1) * hop)``); ``forward`` pools time (mean + max).
    ``spec_mask`` adds :class:`SpecMask` (training mode only) after the input normalisation.
    """

    def __init__(
        self,
        audio: AudioConfig | None = None,
        channels: Sequence[int] = (8, 16, 32, 64),
        pools: Sequence[int] = (2, 2, 2, 2),
        width: float = 1.0,
        block: str = "cnn14",
        spec_mask: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        audio = audio or AudioConfig()
        if len(channels) != len(pools):
            raise ValueError(f"channels {tuple(channels)} and pools {tuple(pools)} must have the same length")
        blocks = {"cnn14": ConvBlock2d, "resnet": res_block_2d}
        if block not in blocks:
            raise ValueError(f"unknown spectrogram block {block!r}; use one of {sorted(blocks)}")
        self.logmel = LogMel(audio)
        # per-mel-bin normalisation, as in CNN14; applied to [B, M, T] as a 1-d BatchNorm (same state-dict
        # names as CNN14's BatchNorm2d): torch 2.13's BatchNorm2d backward gives wrong weight/bias gradients
        # for a [B, M, T, 1] input whose output is then permuted (tests/test_models.py checks this)
        self.bn0 = nn.BatchNorm1d(audio.n_mels)
        self.mask = SpecMask(seed) if spec_mask else nn.Identity()
        widths = [scale_width(c, width) for c in channels]
        stem = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        self.stem = nn.Sequential(*stem) if block == "resnet" else nn.Identity()
        cin = widths[0] if block == "resnet" else 1
        layers = []
        for cout, pool in zip(widths, pools, strict=True):
            layers.append(blocks[block](cin, cout, pool))
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.feature_dim: int = widths[-1]
        self.frame_hop_seconds: float = audio.hop_length * math.prod(pools) / audio.sample_rate

    def _stem(self, wave: torch.Tensor) -> torch.Tensor:
        """``float32[B, N]`` waveform -> log-mel (always float32), per-bin normalised, masked (training only)
        and through the stem: the CNN's input ``[B, C, T, M]``."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel = self.logmel(wave.float())  # [B, M, T]
        return self.stem(self.mask(self._normalise(mel)))

    def _normalise(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, M, T]`` -> per-bin normalised ``[B, 1, T, M]``, the CNN's input layout."""
        return self.bn0(mel).transpose(1, 2).unsqueeze(1)

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:
        """``float32[B, N]`` waveform -> ``[B, T', feature_dim]``."""
        return self.blocks(self._stem(wave)).mean(dim=3).transpose(1, 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``float32[B, N]`` waveform -> pooled ``[B, feature_dim]``."""
        return pool_time(self.forward_features(wave))

    def forward_layers(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """``float32[B, N]`` waveform -> every block's output ``[B, T_i, C_i * F_i]`` (channels x
        mel positions flattened per time step, so each block keeps its frequency resolution)."""
        x = self._stem(wave)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x.permute(0, 2, 1, 3).flatten(2))  # [B, C, T, F] -> [B, T, C * F]
        return out


SPEC_PRESETS: dict[str, dict] = {
    "tiny": dict(channels=(8, 16, 32, 64), pools=(2, 2, 2, 2)),
    "small": dict(channels=(16, 32, 64, 128, 256), pools=(2, 2, 2, 2, 1)),
    "paper": dict(channels=(64, 128, 256, 512, 1024, 2048), pools=(2, 2, 2, 2, 2, 1)),  # CNN14
}

for _preset, _kw in SPEC_PRESETS.items():
    _suffix = "" if _preset == "paper" else f"-{_preset}"
    register_model(f"cnn14{_suffix}", functools.partial(SpecTower, **_kw, block="cnn14"))
    register_model(f"spec-resnet{_suffix}", functools.partial(SpecTower, **_kw, block="resnet"))
