"""Shards -> batches for training. The trainer's side of the shard contract.

(The streaming loader is added by the pretraining issue; ``Batch`` is the seam every stage after
``data`` shares.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """One training batch.

    audio:  float32[B, N] waveform at ``audio.sample_rate`` (not features)
    frames: uint8[B, T, 3, H, W] from the shards, or float32 in [0, 1] once augmented; T = crop * fps
    keys:   list of B sample keys ``{video_id}-{clip:04d}``
    """

    audio: torch.Tensor
    frames: torch.Tensor
    keys: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return replace(
            self, audio=self.audio.to(device, non_blocking=non_blocking), frames=self.frames.to(device, non_blocking=non_blocking)
        )

    def __len__(self) -> int:
        return self.audio.shape[0]
