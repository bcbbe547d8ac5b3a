"""How far each frame augmentation moves a clip's video embedding, against how far apart clips are.

For every clip of a shard folder (one fixed aligned crop each) the video tower of a checkpoint (or a
seeded random init) embeds the clean frames and ``--draws`` augmented copies per setting. Printed per
setting: the mean squared distance between a clip's augmented and clean unit embeddings ("moved"), the
mean squared distance between different clips' clean embeddings ("apart"), their ratio, and the share of
augmented copies whose nearest clean clip is their own (1: the positive stays identifiable). The same
in pixel space (each clip's mean colour, 3 numbers), the cue a small tower keys on first.

    python experiments/aug_snr.py shards/avepm-train-32 --config cpu [--checkpoint runs/x/checkpoint.pt]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from avssl.data.augment import _frame_augment, as_float_frames
from avssl.checkpoint import model_from_checkpoint, random_model
from avssl.config import load_config
from avssl.data.crops import crop_clip
from avssl.data.shards import read_clips

SETTINGS = {
    "crop 0.6": {"frame_crop_scale": 0.6, "frame_flip": False, "color_jitter": 0.0},
    "flip": {"frame_crop_scale": 1.0, "frame_flip": True, "color_jitter": 0.0},
    "jitter 0.2": {"frame_crop_scale": 1.0, "frame_flip": False, "color_jitter": 0.2},
    "all (old default)": {"frame_crop_scale": 0.6, "frame_flip": True, "color_jitter": 0.2},
}


def _stats(clean: torch.Tensor, augmented: torch.Tensor) -> tuple[float, float, float]:
    """``clean [C, D]``, ``augmented [K, C, D]`` (unit rows) -> (moved, apart, identifiable share)."""
    moved = (augmented - clean).pow(2).sum(-1).mean().item()
    d = torch.cdist(clean, clean).pow(2)
    c = len(clean)
    apart = (d.sum() / (c * (c - 1))).item()
    nearest = torch.cdist(augmented.flatten(0, 1), clean).argmin(1).view(augmented.shape[:2])
    ident = (nearest == torch.arange(c)).float().mean().item()
    return moved, apart, ident


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards")
    p.add_argument("--config", default="cpu")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint:
        model, cfg = model_from_checkpoint(args.checkpoint, views=["video"])
    else:
        cfg = load_config(args.config, ["model.views=[video]"])
        model = random_model(cfg, args.seed)
    clips = read_clips(args.shards)
    sr, fps, crop = cfg.audio.sample_rate, cfg.video.fps, cfg.data.crop_seconds
    frames = torch.from_numpy(np.stack([crop_clip(c.audio, c.frames, crop, sr, fps, np.random.default_rng([0, i]))[1]
                                        for i, c in enumerate(clips)])).permute(0, 1, 4, 2, 3)
    frames = as_float_frames(frames)

    @torch.no_grad()
    def embed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.cat([model.heads["video"](model.towers["video"](x[i : i + 64])) for i in range(0, len(x), 64)])
        colour = x.mean(dim=(1, 3, 4))
        return F.normalize(out, dim=-1), colour

    clean, clean_colour = embed(frames)
    print(f"{len(clips)} clips, {'checkpoint ' + args.checkpoint if args.checkpoint else 'random init'}")
    print("| setting | moved / apart (embedding) | identifiable (embedding) | moved / apart (mean colour) | identifiable (mean colour) |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(args.seed)
    for name, setting in SETTINGS.items():
        aug_cfg = replace(cfg.augment, **setting)
        embs, colours = zip(*(embed(_frame_augment(frames, aug_cfg, gen)) for _ in range(args.draws)))
        m, a, i = _stats(clean, torch.stack(embs))
        mc, ac, ic = _stats(clean_colour, torch.stack(colours))
        print(f"| {name} | {m / a:.2f} | {i:.2f} | {mc / ac:.2f} | {ic:.2f} |")


if __name__ == "__main__":
    main()
