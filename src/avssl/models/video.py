"""Video tower: TSM-ResNet (ResNet-18/50 with temporal shift in every residual branch) on low-res frames.

Frames ``[B, T, 3, H, W]`` (uint8, or float in [0, 1]) are normalised inside the tower, run through
a 2-D ResNet frame by frame, and a temporal shift (Lin et al. 2019: 1/8 of the channels one frame
back, 1/8 one frame forward, zero padded) at the start of every residual branch exchanges
information between neighbouring frames. The stem depends on ``input_size``: the ImageNet stem
(7x7/2 conv + 3x3/2 max pool) from 112 px up, a 3x3 conv + 3x3/2 max pool below (stride 2 at
64 px and above, stride 1 below), so 64 px and 32 px inputs both reach the first stage at 16x16.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from avssl.models.layers import scale_width
from avssl.models.registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def temporal_shift(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """``[B*T, C, H, W]``: channels ``[0, fold)`` take frame t-1, ``[fold, 2*fold)`` frame t+1 (zeros at the ends)."""
    bt, c, h, w = x.shape
    x = x.reshape(bt // num_frames, num_frames, c, h, w)
    back, fwd, keep = x[:, :, :fold], x[:, :, fold : 2 * fold], x[:, :, 2 * fold :]
    back = torch.cat([torch.zeros_like(back[:, :1]), back[:, :-1]], dim=1)
    fwd = torch.cat([fwd[:, 1:], torch.zeros_like(fwd[:, :1])], dim=1)
    return torch.cat([back, fwd, keep], dim=2).reshape(bt, c, h, w)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class TSMBasicBlock(nn.Module):
    """ResNet-18 block with a temporal shift on the residual branch."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, fold_div: int = 8):
        super().__init__()
        self.fold = max(1, cin // fold_div)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(temporal_shift(x, num_frames, self.fold))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TSMBottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 x4) with a temporal shift on the residual branch."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, fold_div: int = 8):
        super().__init__()
        self.fold = max(1, cin // fold_div)
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(temporal_shift(x, num_frames, self.fold))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


RESNET_LAYERS = {18: (TSMBasicBlock, (2, 2, 2, 2)), 50: (TSMBottleneck, (3, 4, 6, 3))}


class VideoTower(nn.Module):
    """Frames ``[B, T, 3, H, W]`` -> per-frame TSM-ResNet features ``[B, T, feature_dim]`` -> mean over T.

    ``depth`` 18 or 50; ``base_width`` is the first stage's width (64 in the ResNet paper), scaled
    by ``width``; ``input_size`` (the frame side in px) picks the stem (see the module docstring).
    Any frame size works once built; the stem is tuned for ``input_size``.
    """

    def __init__(
        self, depth: int = 18, base_width: int = 8, width: float = 1.0, input_size: int = 64, fold_div: int = 8
    ):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"TSM-ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        block, layers = RESNET_LAYERS[depth]
        c0 = scale_width(base_width, width)
        if input_size >= 112:
            stem = [nn.Conv2d(3, c0, 7, stride=2, padding=3, bias=False)]
        else:
            stem = [nn.Conv2d(3, c0, 3, stride=2 if input_size >= 64 else 1, padding=1, bias=False)]
        self.stem = nn.Sequential(*stem, nn.BatchNorm2d(c0), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        self.input_size = input_size
        blocks: list[nn.Module] = []
        cin = c0
        for i, n in enumerate(layers):
            planes = c0 * 2**i
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (i > 0 and j == 0) else 1, fold_div=fold_div))
                cin = planes * block.expansion
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim: int = cin
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` uint8 or float in [0, 1] -> ``[B, T, feature_dim]`` (one step per frame)."""
        if frames.dim() != 5 or frames.shape[2] != 3 or frames.shape[1] == 0:
            raise ValueError(f"VideoTower expects frames [B, T>0, 3, H, W], got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = self.stem((x - self.mean) / self.std)
        for blk in self.blocks:
            x = blk(x, t)
        return x.mean(dim=(2, 3)).reshape(b, t, -1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> pooled ``[B, feature_dim]`` (mean over frames, as TSM averages segments)."""
        return self.forward_features(frames).mean(dim=1)


VIDEO_BASE_WIDTH = {"tiny": 8, "small": 16, "paper": 64}

for _preset, _base in VIDEO_BASE_WIDTH.items():
    for _depth in RESNET_LAYERS:
        _name = f"tsm-resnet{_depth}" + ("" if _preset == "paper" else f"-{_preset}")
        register_model(_name, functools.partial(VideoTower, depth=_depth, base_width=_base))
