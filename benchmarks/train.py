"""Pretraining throughput: does the loader keep up with the trainer, and how fast is one step?

    python benchmarks/train.py [--presets tiny small] [--device cpu] [--workers 0 1 2] [--parts loader trainer e2e]
    python benchmarks/train.py --presets paper --parts decode loader --workers 1 \
        --videos-from ../shared/data/avepm/pretrain.txt --storage jpeg/flac raw/pcm        # real clips, CPU
    python benchmarks/train.py --presets paper --device cuda --workers 1 4 8 --max-batch 4096   # on a GPU

Per preset, on shards that ``avssl.ingest.run`` writes at the preset's ingest parameters from generated
videos (tones + moving noise: the worst case for JPEG) or, with ``--videos-from``, from real videos
(a folder or a list file), once per ``--storage`` (``FRAMES/AUDIO``: ``ingest.frame_format`` /
``ingest.audio_format``; bytes per clip-second and the disk for 2 M clips are printed first):

``loader``   clips/s of ``avssl.data.stream.make_loader`` (shard read, windowed decode, aligned crop, collate,
             and with W >= 1 the hand-over from the worker processes) with W DataLoader workers,
             after the first batch (worker start-up excluded); ``--rounds`` interleaved rounds, medians.
             Per-worker rate = clips/s / W (W = 0: decoding in the main process). The baseline row is
             the loader as of 6ac834b (WebDataset's tar reader, a collate that copies twice; the same
             batches) on the preset's own storage; every row's ratio is against it, in the same rounds.
             The headline: worker cores per GPU = the GPU's clips/s / per-worker clips/s, for the
             measured trainer (``trainer`` part on CUDA) and each ``--gpu-rates`` (default 1906: the
             paper preset compiled on an H200 today, 3400: the 35 % MFU target).
``decode``   ms per clip of ``avssl.data.shards.decode_sample`` on one shard sample per storage: whole clip,
             the crop window, the crop window without frames (audio-only runs).
``trainer``  clips/s of ``avssl.train.trainer.Trainer.step`` (augment + mix, every view forward, InfoNCE,
             backward, clipping, optimizer) on device-resident batches: what the loop consumes.
             On CUDA also the model FLOPs per step (``torch.utils.flop_counter``) and MFU against
             ``--peak-tflops`` (default 989: H100/H200 SXM dense bf16); ``--max-batch N`` doubles the
             batch from the preset's until N or out of memory and reports each size.
``e2e``      ``avssl.train.pretrain.pretrain`` on the last ``--storage``'s shards: clips/s and the data-wait share
             of the last logged interval (the loop's own metrics).
Results print as Markdown tables (paste into docs/benchmarks-train.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch

import avssl.data.stream
from avssl.config import Config, load_config
from avssl.data.stream import Batch, make_loader
from avssl.ingest.run import ingest
from avssl.data.shards import decode_sample, iter_samples, read_manifest
from avssl.train.pretrain import pretrain
from avssl.train.trainer import Trainer, plan_views
from avssl.media.video import encode_video


def machine(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}"


def make_videos(cfg: Config, folder: Path, videos: int) -> Path:
    """``videos`` generated videos of one clip each (tones + moving noise), larger than ``video.size``."""
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
    return src


def make_shards(cfg: Config, videos: Path, out: Path, storage: str) -> Path:
    """``videos`` ingested with ``cfg`` and ``storage`` (``FRAMES/AUDIO``) into ``out``."""
    frames, audio = storage.split("/")
    cfg = replace(cfg, ingest=replace(cfg.ingest, frame_format=frames, audio_format=audio))
    ingest([videos], out, cfg, workers=min(4, os.cpu_count() or 1), progress=False)
    return out


def replicate(shards: Path, clips: int) -> Path:
    """``shards`` listed ``ceil(clips / samples)`` times (symbolic links, one manifest): enough clips for batch
    ``B`` x ``W`` workers (each worker assembles whole batches from its share) from a small real set. The copies
    repeat keys, so a batch may hold a clip twice: for throughput only."""
    m = read_manifest(shards)
    k = max(1, -(-clips // m["total_samples"]))
    if k == 1:
        return shards
    out = shards.with_name(shards.name + f"-x{k}")
    out.mkdir()
    listed = []
    for i in range(k):
        for s in m["shards"]:
            listed.append({**s, "name": f"{len(listed):06d}.tar"})
            (out / listed[-1]["name"]).symlink_to((shards / s["name"]).resolve())
    total = {"total_samples": k * m["total_samples"], "total_hours": k * m["total_hours"]}
    (out / "manifest.json").write_text(json.dumps({**m, **total, "shards": listed}))
    return out


def storage_bytes(shards: Path) -> tuple[float, float]:
    """(KiB per clip-second, TB for 2 M clips of ``clip_seconds``) of a shard folder (tar bytes, all members)."""
    m = read_manifest(shards)
    per_second = sum((shards / s["name"]).stat().st_size for s in m["shards"]) / (3600 * m["total_hours"])
    return per_second / 1024, per_second * 2e6 * m["params"]["clip_seconds"] / 1e12


@contextlib.contextmanager
def loader_as_of_6ac834b():
    """The loader before the loader-speed work (the baseline): WebDataset's streaming tar reader (10 KiB reads,
    every header field parsed) and a collate that stacks, permutes to a contiguous copy and is copied again
    into shared memory when a worker hands it over. Same batches; on JPEG/FLAC the decoders are unchanged."""
    import webdataset as wds

    def raw(self, p, slot):
        idx, every = self._pass_plan(p, slot)
        urls = iter([{"url": self.shards.urls[i]} for i in idx])
        for i, s in enumerate(wds.tarfile_to_samples(handler=avssl.data.stream._warn_and_continue)(urls)):
            if not every or i % self.slots == slot:
                yield s

    def collate(items, frame_shape):
        audio = torch.from_numpy(np.stack([a for _, a, _, _ in items]))
        audio2 = torch.from_numpy(np.stack([a2 for _, _, a2, _ in items])) if items[0][2] is not None else None
        if items[0][3] is None:
            frames = torch.zeros((len(items), 0, 3, frame_shape[1], frame_shape[2]), dtype=torch.uint8)
        else:
            frames = torch.from_numpy(np.stack([f for _, _, _, f in items])).permute(0, 1, 4, 2, 3).contiguous()
        return Batch(audio=audio, frames=frames, keys=[k for k, _, _, _ in items], audio2=audio2)

    saved = avssl.data.stream.ShardStream._raw, avssl.data.stream.collate
    avssl.data.stream.ShardStream._raw, avssl.data.stream.collate = raw, collate
    try:
        yield
    finally:
        avssl.data.stream.ShardStream._raw, avssl.data.stream.collate = saved


def bench_loader(cfg: Config, shards: Path, workers: int, batches: int, baseline: bool = False) -> float:
    """clips/s of the loader with ``workers`` workers, excluding the first batch (``baseline``: as of 6ac834b)."""
    cfg = replace(cfg, data=replace(cfg.data, num_workers=workers))
    with loader_as_of_6ac834b() if baseline else contextlib.nullcontext():
        it = iter(make_loader(shards, cfg, audio_crops=2 if plan_views(cfg) else 1))
        next(it)
        t0 = time.perf_counter()
        n = sum(len(b) for b in islice(it, batches))
        rate = n / (time.perf_counter() - t0)
        del it  # shuts the workers down inside the context
    return rate


def bench_decode(cfg: Config, shards: Path, repeats: int = 5) -> dict[str, float]:
    """ms per clip of ``decode_sample``: whole clip, crop window, crop window without frames."""
    samples = list(islice(iter_samples([str(shards / read_manifest(shards)["shards"][0]["name"])]), 64))
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


def print_loader(cfg: Config, shards: dict[str, Path], args: argparse.Namespace) -> float | None:
    """The loader table (interleaved rounds, medians); returns the last storage's clips/s per worker (W >= 1)."""
    bsz = min(args.batch or cfg.data.batch_size, args.loader_batch)
    lcfg = replace(cfg, data=replace(cfg.data, batch_size=bsz))
    first = args.storage[0]
    rows = [(f"{first}, loader as of 6ac834b (baseline)", first, True)] + [(st, st, False) for st in args.storage]
    rates: dict[tuple[int, str], list[float]] = {}
    for r in range(args.rounds):
        for w in args.workers:
            for label, st, baseline in rows[:: 1 if r % 2 == 0 else -1]:  # rotated: no row always goes first
                rate = bench_loader(lcfg, shards[st], w, args.loader_batches, baseline)
                rates.setdefault((w, label), []).append(rate)
    gpu = " / ".join(f"{g:g}" for g in args.gpu_rates)
    print(f"| storage (frames/audio) | KiB per clip-second | TB for 2 M clips | loader workers "
          f"| clips/s (median; rounds) | clips/s per worker | ratio to the baseline "
          f"| worker cores per GPU at {gpu} clips/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    per_worker = None
    for w in args.workers:
        base = statistics.median(rates[w, rows[0][0]])
        for label, st, _ in rows:
            med = statistics.median(rates[w, label])
            kib, tb = storage_bytes(shards[st])
            cores = " / ".join(f"{g / (med / max(w, 1)):.1f}" for g in args.gpu_rates)
            each = ", ".join(f"{x:.0f}" for x in rates[w, label])
            print(f"| {label} | {kib:.1f} | {tb:.2f} | {w} | {med:.0f} ({each}) | {med / max(w, 1):.0f} "
                  f"| {med / base:.2f} | {cores} |")
        if w >= 1:
            per_worker = statistics.median(rates[w, rows[-1][0]]) / w
    print(f"\n(loader batch {lcfg.data.batch_size}, {args.loader_batches} batches timed after the first; load average "
          f"{os.getloadavg()[0]:.1f} at the end)\n")
    return per_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parts = ["decode", "loader", "trainer", "e2e"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--videos", type=int, default=16, help="generated videos (one clip each)")
    parser.add_argument("--videos-from", type=Path, help="real videos instead (a folder or a list file)")
    parser.add_argument("--storage", nargs="+", default=["jpeg/flac", "raw/pcm"],
                        help="FRAMES/AUDIO storages to compare (ingest.frame_format/ingest.audio_format); the first "
                             "is also read by the baseline loader, the last by e2e")
    parser.add_argument("--replicate-to", type=int, default=0,
                        help="list the shards repeatedly (links) to reach this many clips (few real clips)")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--loader-batch", type=int, default=64, help="loader batch size (at most the preset's)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved loader rounds (medians)")
    parser.add_argument("--gpu-rates", nargs="+", type=float, default=[1906.0, 3400.0],
                        help="GPU clips/s to size the loader for (paper preset, H200: today's compiled step, 35%% MFU)")
    parser.add_argument("--steps", type=int, default=5, help="timed trainer steps")
    parser.add_argument("--batch", type=int, default=0, help="trainer batch (default: the preset's)")
    parser.add_argument("--max-batch", type=int, default=0, help="double the batch up to this (GPU memory search)")
    parser.add_argument("--e2e-steps", type=int, default=8)
    parser.add_argument("--e2e-workers", type=int, default=0, help="pretrain loop workers (default: max --workers)")
    parser.add_argument("--compile", action="store_true", help="keep train.compile from the preset (slow start)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{machine(device)}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}\n")
    for preset in args.presets:
        overrides = [] if args.compile else ["train.compile=false"]
        cfg = load_config(preset, overrides + args.set + (["train.precision=fp32"] if device.type == "cpu" else []))
        batch = args.batch or cfg.data.batch_size
        desc = (f"**{preset}**: views {'+'.join(cfg.model.views)}, pairs {', '.join(cfg.loss.pairs)}, crop "
                f"{cfg.data.crop_seconds} s of {cfg.ingest.clip_seconds} s clips, {cfg.video.size}x{cfg.video.size} "
                f"at {cfg.video.fps} fps, precision {cfg.train.precision}, shards from "
                f"{args.videos_from or f'{args.videos} generated videos'}")
        print(desc + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            shards: dict[str, Path] = {}
            if {"decode", "loader", "e2e"} & set(args.parts):
                videos = args.videos_from or make_videos(cfg, Path(tmp), args.videos)
                made = {st: make_shards(cfg, videos, Path(tmp) / st.replace("/", "-"), st) for st in args.storage}
                shards = {st: replicate(folder, args.replicate_to) for st, folder in made.items()}
            rate1 = None
            if "decode" in args.parts:
                print(f"| storage | decode_sample ms per clip: full {cfg.ingest.clip_seconds} s / "
                      f"{cfg.data.crop_seconds} s window / window without frames |\n|---|---:|")
                for st, folder in shards.items():
                    print(f"| {st} | {' / '.join(f'{v:.2f}' for v in bench_decode(cfg, folder).values())} |")
                print()
            if "loader" in args.parts:
                rate1 = print_loader(cfg, shards, args)
            if "trainer" in args.parts:
                print("| trainer batch | clips/s | step ms | GFLOP per clip | achieved TFLOP/s | MFU "
                      f"| loader worker cores needed ({args.storage[-1]}) |")
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
                print(f"| pretrain loop ({args.storage[-1]}) | workers | clips/s | data-wait share |")
                print("|---|---:|---:|---:|")
                w = args.e2e_workers or max(args.workers)
                row = bench_e2e(replace(cfg, data=replace(cfg.data, batch_size=batch)), shards[args.storage[-1]],
                                args.e2e_steps, w)
                print(f"| steps {row['step'] - max(1, args.e2e_steps // 2) + 1}-{row['step']} | {w} | "
                      f"{row['clips_per_s']:.1f} | {100 * row['data_wait']:.1f}% |\n")


if __name__ == "__main__":
    main()
