"""Every user-facing embedding path as a fraction of this machine's measured matmul rate, in one run.

Baseline: ``torch.mm`` of two fp32 2048x2048 matrices on 1 and 2 threads (2 * 2048^3 FLOP per call), timed in
the same round robin as every case, so that load from other processes falls on all of them alike. Each case
reports: x real time (seconds of audio per second of wall time), tower GFLOP/s (the FLOPs the tower spends on
the windows that case computes, counted once per window with ``torch.utils.flop_counter``, divided by the time)
and that rate as a fraction of the matmul rate on the same number of threads; and its speed relative to the
bare tower on the same windows (the median over rounds of the per-round ratio).

Cases per preset (random-init ``tiny`` and ``small`` checkpoints built here from the config; no downloads):

* ``tower``: ``tower(x)`` on the windows ``embed()`` cuts from ``CLIPS`` clips of ``CLIP_SECONDS`` (half-window
  overlap), ``batch_size`` windows per call, as one tensor prepared beforehand (the bare-tower baseline);
* ``embed()``, ``embed_timestamps()``, ``embed_with_timestamps()`` on those clips (numpy in); ``embed() int8``
  with ``load_model(..., int8=True)`` (its GFLOP/s counts the float32 tower's FLOPs: an equivalent rate);
  ``embed() 32 windows per call`` with ``batch_size=32`` (the default before ``avssl.embed.embedder.CPU_BATCH``);
* ``hear scene`` / ``hear timestamps``: the HEAR functions on the same clips (torch tensor in);
* ``onnx``: the exported tower (``avssl.export``) under onnxruntime on the same windows, with the runtime's
  default session options (``onnx default``) and with ``avssl.export.onnx_session`` (``onnx tuned``);
* ``avssl embed``: the command line end to end (a fresh process: start-up, decoding, resampling, tower,
  writing) over ``--files`` real Opus files from the shared data, on as many cores as the case's threads:
  ``--workers T --threads 1`` (T files at once) and ``--workers 0 --threads T`` (one file at a time).

Usage: ``python benchmarks/speed.py [--presets tiny small] [--threads 1 2] [--repeats 3] [--files 300]
[--data-root ../shared/data] [--out FILE]``. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from avssl import hear
from avssl.media.audio import load_audio
from avssl.checkpoint import save_checkpoint
from avssl.config import load_config
from avssl.embed.embedder import CPU_BATCH, Embedder, load_model
from avssl.export import export_onnx, onnx_session
from avssl.models import build_model

CLIPS, CLIP_SECONDS = 4, 30.0
MATMUL_N = 2048


@dataclass
class Case:
    name: str  # e.g. "small embed()"
    threads: int
    fn: Callable[[], object]
    audio_seconds: float
    flops: float  # tower FLOPs per call (matmul: the product's FLOPs)
    baseline: str  # the case this one is compared with ("" for the matmul)
    times: list[float] = field(default_factory=list)  # wall seconds per round
    cpu: list[float] = field(default_factory=list)  # CPU seconds per round (this process + finished children)


def machine() -> str:
    """CPU model, cores, torch / onnxruntime versions."""
    model = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        model = names[0] if names else model
    import onnxruntime

    return (f"{platform.machine()} {model}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}")


def make_checkpoint(preset: str, folder: Path) -> Path:
    """A random-init checkpoint of ``preset`` (seed 0)."""
    cfg = load_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg)
    return save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict()}, folder / f"{preset}.pt")


def tower_flops(e: Embedder) -> float:
    """FLOPs (convolutions and matrix products) of the tower on one window."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        e.tower(torch.zeros(1, e.window))
    return float(counter.get_total_flops())


def in_process_cases(preset: str, ckpt: Path, threads: int, tmp: Path) -> list[Case]:
    """tower / embed() / timestamps / HEAR / ONNX cases of one preset on ``threads`` threads."""
    e = load_model(ckpt, device="cpu")
    q = load_model(ckpt, device="cpu", int8=True)
    e32 = load_model(ckpt, device="cpu", batch_size=32)  # the default before CPU_BATCH
    h = hear.HearModel(e)
    sr = e.sample_rate
    clips = (np.random.default_rng(0).standard_normal((CLIPS, int(CLIP_SECONDS * sr))) * 0.1).astype(np.float32)
    starts = e._window_starts(clips.shape[1])
    windows = torch.from_numpy(np.stack([c[s : s + e.window] for c in clips for s in starts]))
    flops = tower_flops(e) * len(windows)
    secs = clips.size / sr
    bs = e.batch_size or CPU_BATCH  # windows per call, as embed() cuts them on a CPU

    def tower() -> None:
        with torch.inference_mode():
            for k in range(0, len(windows), bs):
                e.tower(windows[k : k + bs])

    def onnx(sess) -> Callable[[], None]:
        xs = [windows[k : k + bs].numpy() for k in range(0, len(windows), bs)]
        return lambda: [sess.run(None, {"audio": x}) for x in xs]

    import onnxruntime as ort

    path = tmp / f"{preset}.onnx"
    if not path.exists():
        export_onnx(e, path, check=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    audio_t = torch.from_numpy(clips)
    p = f"{preset} "
    base = p + "tower"
    return [
        Case(base, threads, tower, secs, flops, base),
        Case(p + "embed()", threads, lambda: e.embed(clips, sr), secs, flops, base),
        Case(p + "embed() int8", threads, lambda: q.embed(clips, sr), secs, flops, base),
        Case(p + "embed() 32 windows per call", threads, lambda: e32.embed(clips, sr), secs, flops, base),
        Case(p + "embed_timestamps()", threads, lambda: e.embed_timestamps(clips, sr), secs, flops, base),
        Case(p + "embed_with_timestamps()", threads, lambda: e.embed_with_timestamps(clips, sr), secs, flops, base),
        Case(p + "hear scene", threads, lambda: hear.get_scene_embeddings(audio_t, h), secs, flops, base),
        Case(p + "hear timestamps", threads, lambda: hear.get_timestamp_embeddings(audio_t, h), secs, flops, base),
        Case(p + "onnx default", threads, onnx(plain), secs, flops, base),
        Case(p + "onnx tuned", threads, onnx(onnx_session(path, threads)), secs, flops, base),
    ]


def opus_files(data_root: Path, count: int) -> list[Path]:
    """The first ``count`` Opus files of ``data_root``'s Berklee set, as absolute paths (``data_root`` resolved
    first: a list file in a temporary folder would resolve relative paths against its own folder)."""
    return sorted((data_root.resolve() / "unlabeled_audio" / "berklee").glob("*.opus"))[:count]


def write_listing(files: list[Path], listing: Path) -> Path:
    """``files`` as an ``avssl embed`` list file at ``listing``, absolute paths one a line."""
    listing.write_text("".join(f"{f.resolve()}\n" for f in files))
    return listing


def cli_cases(preset: str, ckpt: Path, threads: int, files: list[Path], tmp: Path) -> list[Case]:
    """``avssl embed`` end to end over ``files`` (a list file) on ``threads`` cores, two ways: ``--workers threads
    --threads 1`` (that many files at once, one torch thread each: the default on that many cores) and
    ``--workers 0 --threads threads`` (one file at a time in the main thread, the tower on every core)."""
    e = load_model(ckpt, device="cpu")
    listing = write_listing(files, tmp / "files.txt")
    lengths = [len(load_audio(f, e.sample_rate)) for f in files]
    secs = sum(lengths) / e.sample_rate
    flops = tower_flops(e) * sum(len(e._window_starts(n)) for n in lengths)
    cases = []
    for workers, torch_threads in ((threads, 1), (0, threads)):
        out = tmp / f"out-{preset}-{threads}-{workers}"
        cmd = [sys.executable, "-m", "avssl", "embed", str(ckpt), str(listing), "--out", str(out), "--device", "cpu",
               "--threads", str(torch_threads), "--workers", str(workers), "--no-progress"]

        def run(cmd=cmd, out=out) -> None:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        cases.append(Case(f"{preset} avssl embed, {len(files)} opus files, --workers {workers} --threads {torch_threads}",
                          threads, run, secs, flops, f"{preset} tower"))
    return cases


def matmul_case(threads: int) -> Case:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(MATMUL_N, MATMUL_N, generator=g), torch.randn(MATMUL_N, MATMUL_N, generator=g)
    return Case("matmul 2048", threads, lambda: torch.mm(a, b), 0.0, 2.0 * MATMUL_N**3, "")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the CLI runs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def round_robin(cases: list[Case], repeats: int) -> list[float]:
    """One warm-up call per case, then ``repeats`` rounds calling every case in turn (each on its own thread
    count). Returns the 1-minute load average after each round."""
    loads = []
    for c in cases:
        torch.set_num_threads(c.threads)
        c.fn()
    for _ in range(repeats):
        for c in cases:
            torch.set_num_threads(c.threads)
            t0, c0 = time.perf_counter(), _cpu_seconds()
            c.fn()
            c.times.append(time.perf_counter() - t0)
            c.cpu.append(_cpu_seconds() - c0)
        loads.append(os.getloadavg()[0])
    return loads


def _ratio(case: Case, base: Case, cpu: bool = False) -> float:
    """Median over rounds of (case FLOP/s) / (base FLOP/s), both timed in the same round (wall time, or CPU
    time with ``cpu``)."""
    a, b = (case.cpu, base.cpu) if cpu else (case.times, base.times)
    return statistics.median((case.flops / t) / (base.flops / tb) for t, tb in zip(a, b))


def report(cases: list[Case], loads: list[float], header: str) -> tuple[str, list[dict]]:
    """The markdown table (one row per case and thread count) and the same figures as dicts."""
    by_name = {(c.name, c.threads): c for c in cases}
    rows = []
    for c in cases:
        mm = by_name["matmul 2048", c.threads]
        best = min(c.times)
        rows.append(dict(case=c.name, threads=c.threads,
                         x_real_time=c.audio_seconds / best if c.audio_seconds else None,
                         gflops=c.flops / best / 1e9, of_matmul=_ratio(c, mm),
                         vs_tower=_ratio(c, by_name[c.baseline, c.threads]) if c.baseline else None,
                         x_real_time_per_cpu=c.audio_seconds / min(c.cpu) if c.audio_seconds else None,
                         vs_tower_cpu=_ratio(c, by_name[c.baseline, c.threads], cpu=True) if c.baseline else None,
                         seconds=[round(t, 4) for t in c.times], cpu_seconds=[round(t, 4) for t in c.cpu]))
    lines = [header, "",
             "| case | threads | x real time | tower GFLOP/s | fraction of matmul | vs bare tower | audio s per CPU s "
             "| vs bare tower, CPU time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["case"].split()[0] != "matmul", r["case"].split()[0], r["threads"])):
        rt = f"{r['x_real_time']:.0f}x" if r["x_real_time"] else "-"
        vs = f"{r['vs_tower']:.2f}" if r["vs_tower"] is not None else "-"
        per_cpu = f"{r['x_real_time_per_cpu']:.0f}" if r["x_real_time_per_cpu"] else "-"
        vs_cpu = f"{r['vs_tower_cpu']:.2f}" if r["vs_tower_cpu"] is not None else "-"
        lines.append(f"| {r['case']} | {r['threads']} | {rt} | {r['gflops']:.1f} | {r['of_matmul']:.2f} | {vs} "
                     f"| {per_cpu} | {vs_cpu} |")
    lines += ["", f"1-minute load average after each round: {', '.join(f'{x:.1f}' for x in loads)}."]
    return "\n".join(lines), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=300, help="real Opus files for the avssl embed cases (0: none)")
    ap.add_argument("--skip", nargs="*", default=[], help="leave out cases whose name contains any of these")
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("AVSSL_SHARED_DATA", "../shared/data")))
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="avssl-speed-"))
    opus = opus_files(args.data_root, args.files)
    if args.files and not opus:
        raise SystemExit(f"no Opus files under {args.data_root}/unlabeled_audio/berklee; pass --data-root or --files 0")
    load_start = os.getloadavg()
    cases = [matmul_case(t) for t in args.threads]
    for preset in args.presets:
        ckpt = make_checkpoint(preset, tmp)
        for t in args.threads:
            cases += in_process_cases(preset, ckpt, t, tmp)
            if opus:
                cases += cli_cases(preset, ckpt, t, opus, tmp)
    cases = [c for c in cases if not any(k in c.name for k in args.skip)]
    loads = round_robin(cases, args.repeats)
    header = (f"Machine: {machine()}. 1-minute load average at the start {load_start[0]:.1f} "
              f"(5-minute {load_start[1]:.1f}). {args.repeats} interleaved rounds; x real time and GFLOP/s from the "
              f"fastest round; ratios are medians of per-round ratios.")
    text, rows = report(cases, loads, header)
    print(text)
    print(json.dumps({"machine": machine(), "load_start": load_start, "loads": loads, "rows": rows}))
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
