"""Model benchmarks: parameters and FLOPs per tower, CPU training-step time and memory per preset,
and (``--device cuda``) the ``paper`` preset's training throughput and model FLOP utilisation.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
2 FLOPs per multiply-add), forward only, per clip. MFU = counted forward+backward FLOPs per
step / step time / peak dense bf16 FLOP/s of the card.

    python benchmarks/models.py                      # CPU: FLOPs/params tables + tiny/small steps
    python benchmarks/models.py --device cuda        # GPU: paper preset, bf16, channels_last, compile
    python benchmarks/models.py --device cuda --batch 512 --no-compile
    python benchmarks/models.py --throughput --preset tiny --batch 8 --no-compile --warmup 1 --steps 2  # CPU smoke test

Every run ends with one JSON line of results on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time

import torch

from avssl.config import Config, load_config
from avssl.train.flops import count_flops
from avssl.train.losses import ContrastiveLoss
from avssl.models import build_model, create_model, tower_name

RESOLUTIONS = (32, 64, 112, 224)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def clip_inputs(cfg: Config, batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random audio ``[B, crop * rate]`` and uint8 frames ``[B, crop * fps, 3, size, size]`` for ``cfg``."""
    g = torch.Generator().manual_seed(0)
    n = int(round(cfg.data.crop_seconds * cfg.audio.sample_rate))
    t = int(round(cfg.data.crop_seconds * cfg.video.fps))
    audio = torch.randn(batch, n, generator=g)
    frames = torch.randint(0, 256, (batch, t, 3, cfg.video.size, cfg.video.size), dtype=torch.uint8, generator=g)
    return audio.to(device), frames.to(device)


def tower_table(seconds: float = 3.0, fps: float = 10.0) -> list[dict]:
    """Params and forward GFLOPs per clip (``seconds`` of 16 kHz audio, ``seconds * fps`` frames) of each tower."""
    rows = []
    audio = torch.randn(1, int(seconds * 16000))
    for preset in ("tiny", "small", "paper"):
        for view in ("spec", "wave"):
            name = tower_name(view, preset)
            model = create_model(name).eval()
            with torch.no_grad():
                flops = count_flops(model, audio)
            rows.append(
                dict(tower=name, view=view, input=f"{seconds:g} s audio", params=_params(model), gflops=flops / 1e9)
            )
        for depth in (18, 50):
            for size in RESOLUTIONS:
                name = tower_name("video", preset, depth)
                model = create_model(name, input_size=size).eval().to("meta")  # shapes only: no compute
                frames = torch.empty(1, int(seconds * fps), 3, size, size, device="meta")
                with torch.no_grad():
                    flops = count_flops(model, frames)
                rows.append(
                    dict(
                        tower=name,
                        view="video",
                        input=f"{int(seconds * fps)} x {size} px",
                        params=_params(model),
                        gflops=flops / 1e9,
                    )
                )
    return rows


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_step(preset: str, batch: int | None, steps: int, threads: int) -> dict:
    """Forward+backward+AdamW time (median of ``steps``) and peak RSS of one preset on CPU (run in a fresh process)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(preset)
    batch = batch or cfg.data.batch_size
    audio, frames = clip_inputs(cfg, batch)
    idle = _rss_mib()
    model = build_model(cfg).train()
    loss_fn = ContrastiveLoss(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = sum(loss_fn(model(audio, frames)).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_flops = count_flops(step)
    times, cpu_times = [], []
    for _ in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    sec = statistics.median(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        preset=preset,
        batch=batch,
        crop_seconds=cfg.data.crop_seconds,
        frames=frames.shape[1],
        size=cfg.video.size,
        params=_params(model),
        step_s=sec,
        cpu_s=statistics.median(cpu_times[1:]),  # process CPU time: less sensitive to other load than wall time
        clips_per_s=batch / sec,
        step_gflops=step_flops / 1e9,
        gflops_per_s=step_flops / sec / 1e9,
        peak_rss_mib=peak,
        peak_over_idle_mib=peak - idle,
        threads=threads,
    )


def run_cpu(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    towers = tower_table()
    print("\n| tower | input (per clip) | params (M) | forward GFLOPs |\n|---|---|---:|---:|")
    for r in towers:
        print(f"| {r['tower']} | {r['input']} | {r['params'] / 1e6:.2f} | {r['gflops']:.3f} |")
    steps = []
    ctx = multiprocessing.get_context("spawn")
    for preset in args.presets:
        batch = args.paper_batch if preset == "paper" else None
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:  # fresh process: clean peak memory
            steps.append(pool.submit(cpu_step, preset, batch, args.steps, args.threads).result())
    base = steps[0]["step_s"] if steps else 1.0
    print(
        "\n| preset | batch | clip | params (M) | step (s) | CPU s/step | x tiny | clips/s | GFLOP/step | GFLOP/s "
        "| peak RSS (MiB) | peak - idle (MiB) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in steps:
        print(
            f"| {r['preset']} | {r['batch']} | {r['crop_seconds']:g} s, {r['frames']} x {r['size']} px "
            f"| {r['params'] / 1e6:.2f} | {r['step_s']:.3f} | {r['cpu_s']:.3f} | {r['step_s'] / base:.1f} "
            f"| {r['clips_per_s']:.1f} | {r['step_gflops']:.1f} | "
            f"{r['gflops_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['peak_over_idle_mib']:.0f} |"
        )
    return dict(
        device="cpu",
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        torch=torch.__version__,
        towers=towers,
        steps=steps,
    )


def train_flops_per_clip_of(cfg: Config, device: torch.device) -> float:
    """Forward+backward FLOPs of the model and loss per clip, counted eagerly in float32 at batch 2 (linear in B)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    loss_fn = ContrastiveLoss(cfg.loss).to(device)
    audio, frames = clip_inputs(cfg, 2, device)
    return count_flops(lambda: sum(loss_fn(model(audio, frames)).values()).backward()) / 2


def run_throughput(args: argparse.Namespace) -> dict:
    """A preset's training step on one device: bf16 autocast, channels_last, torch.compile, fused AdamW (CUDA).

    On CPU (``--throughput``) the same code runs as a smoke test (use ``--preset tiny --batch 8 --no-compile``).
    """
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    peak = args.peak_flops or next((v for k, v in PEAK_BF16.items() if k in name), None)
    cfg = load_config(args.preset, args.set)
    result = dict(
        device=name,
        preset=args.preset,
        overrides=args.set,
        compile=not args.no_compile,
        channels_last=True,
        dtype="bf16",
        torch=torch.__version__,
        peak_flops=peak,
    )
    train_flops_per_clip = train_flops_per_clip_of(cfg, device)
    result["train_gflops_per_clip"] = train_flops_per_clip / 1e9
    batch = args.batch
    while True:
        step, error = _attempt(cfg, batch, args, device, train_flops_per_clip, peak)
        gc.collect()  # frees a failed attempt's tensors
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()
        if step is not None:
            result.update(step)
            break
        if error.startswith("OutOfMemoryError") and batch >= 16:
            print(f"batch {batch}: {error}; halving the batch", file=sys.stderr)
            result.setdefault("oom_batches", []).append(batch)
            batch //= 2
        elif not args.no_compile:  # a compiler failure must not cost the whole run: report it, measure eagerly
            print(f"torch.compile failed ({error}); measuring eagerly", file=sys.stderr)
            result.update(compile=False, compile_error=error[:500])
            args.no_compile = True
        else:
            raise RuntimeError(f"training step failed at batch {batch}: {error}")
    return result


def _attempt(
    cfg: Config, batch: int, args: argparse.Namespace, device: torch.device, flops_per_clip: float, peak: float | None
) -> tuple[dict | None, str | None]:
    """``_train_step_timing`` or ``(None, "ErrorType: message")``; the exception and its memory are dropped."""
    try:
        return _train_step_timing(cfg, batch, args, device, flops_per_clip, peak), None
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _train_step_timing(
    cfg: Config, batch: int, args: argparse.Namespace, device: torch.device, flops_per_clip: float, peak: float | None
) -> dict:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last).train()
    loss_fn = ContrastiveLoss(cfg.loss).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4, fused=cuda)
    audio, frames = clip_inputs(cfg, batch, device)
    forward = model if args.no_compile else torch.compile(model)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = sum(loss_fn(forward(audio, frames)).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    sec = (time.perf_counter() - t0) / args.steps
    achieved = flops_per_clip * batch / sec
    return dict(
        batch=batch,
        step_s=sec,
        clips_per_s=batch / sec,
        achieved_tflops=achieved / 1e12,
        mfu=achieved / peak if peak else None,
        warmup_s=warm_s,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        loss=float(loss.detach()),
        frames=frames.shape[1],
        size=cfg.video.size,
        crop_seconds=cfg.data.crop_seconds,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--presets", nargs="+", default=["tiny", "small"], help="CPU: presets to time (tiny first: the baseline)"
    )
    p.add_argument("--paper-batch", type=int, default=2, help="CPU: batch for the paper preset if listed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CPU, 10 for throughput)")
    p.add_argument(
        "--throughput", action="store_true", help="run the training-throughput mode on --device (CPU smoke test)"
    )
    p.add_argument("--preset", default="paper", help="CUDA: preset to time")
    p.add_argument("--batch", type=int, default=512, help="CUDA: batch (halved on out-of-memory)")
    p.add_argument("--warmup", type=int, default=3, help="CUDA: untimed steps (compilation happens here)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument(
        "--set", action="append", default=[], metavar="A.B=C", help="CUDA: config override, e.g. video.fps=5"
    )
    p.add_argument(
        "--peak-flops", type=float, default=None, help="CUDA: peak dense bf16 FLOP/s (default from the card name)"
    )
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    throughput = args.device == "cuda" or args.throughput
    args.steps = args.steps or (10 if throughput else 5)
    if throughput:
        result = run_throughput(args)
    else:
        result = run_cpu(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
