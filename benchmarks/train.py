"""Pretraining throughput: does the loader keep up with the trainer, and how fast is one step?

    python benchmarks/train.py [--presets tiny small] [--device cpu] [--workers 0 1 2] [--parts loader trainer e2e]
    python benchmarks/train.py --presets paper --device cuda --workers 1 4 8 --max-batch 4096   # on a GPU

Per preset, on shards that ``avssl.ingest`` writes from generated videos at the preset's ingest
parameters (FLAC audio, JPEG frames: what a real run reads):

``loader``   clips/s of ``avssl.data.make_loader`` (shard read, decode, aligned crop, collate) with W
             DataLoader workers, after the first batch (worker start-up excluded). Per-worker rate =
             clips/s / W (W = 0: decoding in the main process). Two rows per W: ``window`` (the
             loader: only the crop window is decoded) and ``full`` (the earlier loader, for
             comparison: the whole clip decoded, then cropped; same values).
``decode``   ms per clip of ``avssl.shards.decode_sample`` on one shard sample: whole clip, the crop
             window, the crop window without frames (audio-only runs).
``trainer``  clips/s of ``avssl.train.Trainer.step`` (augment + mix, every view forward, InfoNCE,
             backward, clipping, optimizer) on device-resident batches: what the loop consumes.
             On CUDA also the model FLOPs per step (``torch.utils.flop_counter``) and MFU against
             ``--peak-tflops`` (default 989: H100/H200 SXM dense bf16); ``--max-batch N`` doubles the
             batch from the preset's until N or out of memory and reports each size.
``e2e``      ``avssl.train.pretrain`` on the same shards: clips/s and the data-wait share of the last
             logged interval (the loop's own metrics).
The verdict: loader workers needed per GPU = trainer clips/s / per-worker loader clips/s.
Results print as Markdown tables (paste into docs/benchmarks-train.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from avssl.config import Config, load_config
from avssl.crops import crop_clip
from avssl.data import Batch, ShardLoader, ShardStream, make_loader
from avssl.ingest import ingest
from avssl.shards import decode_sample
from avssl.train import Trainer, plan_views, pretrain
from avssl.video import encode_video


def machine(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}"


def make_shards(cfg: Config, folder: Path, videos: int) -> Path:
    """``videos`` generated videos of one clip each (tones + moving noise) ingested with ``cfg``."""
    rng = np.random.default_rng(0)
    sr, fps, seconds = cfg.audio.sample_rate, cfg.video.fps, cfg.ingest.clip_seconds
    src = folder / "videos"
    src.mkdir(parents=True)
    side = 2 * cfg.video.size  # ingest scales down, as for real videos
    for i in range(videos):
        t = np.arange(int(seconds * sr)) / sr
        audio = (0.3 * np.sin(2 * np.pi * 110 * (i + 1) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base, k, axis=1) for k in range(int(round(seconds * fps)))])
        encode_video(src / f"v{i:03d}.mp4", frames, fps, audio=audio, sample_rate=sr)
    ingest([src], folder / "shards", cfg, workers=min(4, os.cpu_count() or 1), progress=False)
    return folder / "shards"


class FullDecodeStream(ShardStream):
    """The loader as it was before windowed decoding: decode the whole clip, then crop (same values)."""

    def _item(self, sample):
        clip = decode_sample(sample)
        c = self.cfg
        rng = np.random.default_rng(0)  # the timing does not depend on where the crop falls
        frames = clip.frames if self.with_frames else None
        audio, frames = crop_clip(clip.audio, frames, c.data.crop_seconds, clip.sample_rate, clip.fps, rng)
        audio2 = crop_clip(clip.audio, None, c.data.crop_seconds, clip.sample_rate, clip.fps, rng)[0] \
            if self.audio_crops == 2 else None
        return clip.key, audio, audio2, frames


def bench_loader(cfg: Config, shards: Path, workers: int, batches: int, window: bool = True) -> float:
    """clips/s of the loader with ``workers`` workers, excluding the first batch (``window=False``: full decode)."""
    cfg = replace(cfg, data=replace(cfg.data, num_workers=workers))
    loader = make_loader(shards, cfg, audio_crops=2 if plan_views(cfg) else 1)
    if not window:
        s = loader.stream
        loader = ShardLoader(FullDecodeStream(s.shards, cfg, rank=0, world_size=1, workers=workers, seed=s.seed,
                                              start_batch=0, audio_crops=s.audio_crops, with_frames=s.with_frames),
                             loader.epoch_batches, pin_memory=False)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b) for b in islice(it, batches))
    return n / (time.perf_counter() - t0)


def bench_decode(cfg: Config, shards: Path, repeats: int = 5) -> dict[str, float]:
    """ms per clip of ``decode_sample``: whole clip, crop window, crop window without frames."""
    import webdataset as wds

    samples = list(wds.WebDataset(str(shards / "000000.tar"), shardshuffle=False, empty_check=False))
    crop, fps = cfg.data.crop_seconds, cfg.video.fps
    starts = [int(np.floor((cfg.ingest.clip_seconds - crop) * fps * (i % 4) / 3)) / fps for i in range(len(samples))]
    ways = {
        "full": lambda s, t0: decode_sample(s),
        "window": lambda s, t0: decode_sample(s, start=t0, seconds=crop),
        "window, no frames": lambda s, t0: decode_sample(s, start=t0, seconds=crop, frames=False),
    }
    out = {}
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(repeats):  # best of: the machine may be shared
            t0 = time.perf_counter()
            for s, start in zip(samples, starts):
                fn(s, start)
            best = min(best, (time.perf_counter() - t0) / len(samples))
        out[name] = 1000 * best
    return out


def synthetic_batch(cfg: Config, batch: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    n = int(round(cfg.data.crop_seconds * cfg.audio.sample_rate))
    t = int(round(cfg.data.crop_seconds * cfg.video.fps)) if "video" in cfg.model.views else 0
    s = cfg.video.size
    audio = 0.1 * torch.randn(batch, n, generator=g)
    frames = torch.randint(0, 256, (batch, t, 3, s, s), generator=g, dtype=torch.uint8)
    audio2 = 0.1 * torch.randn(batch, n, generator=g) if plan_views(cfg) else None
    return Batch(audio, frames, [str(i) for i in range(batch)], audio2).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_trainer(cfg: Config, device: torch.device, batch: int, steps: int) -> tuple[float, float]:
    """(clips/s, model FLOPs per step) of ``Trainer.step`` at ``batch`` clips per step."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = Trainer(cfg, device)
    b = synthetic_batch(cfg, batch, device)
    for _ in range(2):  # warm-up (cudnn autotune, compile)
        trainer.step(b)
    with FlopCounterMode(display=False) as counter:
        trainer.step(b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(b)
    sync(device)
    return batch * steps / (time.perf_counter() - t0), float(counter.get_total_flops())


def bench_e2e(cfg: Config, shards: Path, steps: int, workers: int) -> dict:
    cfg = replace(cfg, data=replace(cfg.data, num_workers=workers),
                  train=replace(cfg.train, steps=steps, log_every=max(1, steps // 2), ckpt_every=steps))
    with tempfile.TemporaryDirectory() as out:
        pretrain(cfg, shards, out, progress=False)
        return [json.loads(r) for r in (Path(out) / "metrics.jsonl").read_text().splitlines()][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parts = ["decode", "loader", "trainer", "e2e"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--videos", type=int, default=16, help="generated videos (one clip each)")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed trainer steps")
    parser.add_argument("--batch", type=int, default=0, help="trainer batch (default: the preset's)")
    parser.add_argument("--max-batch", type=int, default=0, help="double the batch up to this (GPU memory search)")
    parser.add_argument("--e2e-steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="keep train.compile from the preset (slow start)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{machine(device)}; torch threads {torch.get_num_threads()}\n")
    for preset in args.presets:
        overrides = [] if args.compile else ["train.compile=false"]
        cfg = load_config(preset, overrides + args.set + (["train.precision=fp32"] if device.type == "cpu" else []))
        batch = args.batch or cfg.data.batch_size
        desc = (f"**{preset}**: views {'+'.join(cfg.model.views)}, pairs {', '.join(cfg.loss.pairs)}, crop "
                f"{cfg.data.crop_seconds} s, {cfg.video.size}x{cfg.video.size} at {cfg.video.fps} fps, "
                f"{cfg.ingest.frame_format} frames, precision {cfg.train.precision}")
        print(desc + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            need_shards = {"decode", "loader", "e2e"} & set(args.parts)
            shards = make_shards(cfg, Path(tmp), args.videos) if need_shards else None
            rate1 = None
            if "decode" in args.parts:
                ms = bench_decode(cfg, shards)
                print(f"| decode_sample, {cfg.ingest.clip_seconds} s clip, {cfg.data.crop_seconds} s window | ms per clip |"
                      "\n|---|---:|")
                for name, v in ms.items():
                    print(f"| {name} | {v:.1f} |")
                print()
            if "loader" in args.parts:
                print("| loader workers | decode | clips/s | clips/s per worker |\n|---:|---|---:|---:|")
                lcfg = replace(cfg, data=replace(cfg.data, batch_size=min(batch, 16)))
                for w in args.workers:
                    for window in (False, True):  # interleaved: the same machine state for both
                        rate = bench_loader(lcfg, shards, w, args.loader_batches, window)
                        if window and w >= 1 and rate1 is None:
                            rate1 = rate / w
                        print(f"| {w} | {'window' if window else 'full'} | {rate:.1f} | {rate / max(w, 1):.1f} |")
                print()
            if "trainer" in args.parts:
                print("| trainer batch | clips/s | step ms | GFLOP per clip | achieved TFLOP/s | MFU "
                      "| loader workers needed |")
                print("|---:|---:|---:|---:|---:|---:|---:|")
                sizes = [batch]
                while args.max_batch and sizes[-1] * 2 <= args.max_batch:
                    sizes.append(sizes[-1] * 2)
                for b in sizes:
                    try:
                        rate, flops = bench_trainer(cfg, device, b, args.steps)
                    except torch.cuda.OutOfMemoryError:
                        print(f"| {b} | out of memory | | | | | |")
                        break
                    tflops = flops / b * rate / 1e12
                    mfu = f"{100 * tflops / args.peak_tflops:.1f}%" if device.type == "cuda" else "n/a"
                    need = f"{rate / rate1:.2f}" if rate1 else "n/a"
                    print(f"| {b} | {rate:.1f} | {1000 * b / rate:.0f} | {flops / b / 1e9:.2f} | {tflops:.3f} | {mfu} "
                          f"| {need} |")
                    torch.cuda.empty_cache() if device.type == "cuda" else None
                print()
            if "e2e" in args.parts:
                print("| pretrain loop | workers | clips/s | data-wait share |\n|---|---:|---:|---:|")
                w = max(args.workers)
                row = bench_e2e(replace(cfg, data=replace(cfg.data, batch_size=batch)), shards, args.e2e_steps, w)
                print(f"| steps {row['step'] - max(1, args.e2e_steps // 2) + 1}-{row['step']} | {w} | "
                      f"{row['clips_per_s']:.1f} | {100 * row['data_wait']:.1f}% |\n")


if __name__ == "__main__":
    main()
