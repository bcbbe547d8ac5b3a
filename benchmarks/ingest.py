"""Ingest benchmarks: frame storage formats, and ingest speed against two named baselines.

    python benchmarks/ingest.py formats [--data DIR]          # bytes per clip-second, decode speed
    python benchmarks/ingest.py speed [--data DIR] [--generated N] [--workers W] [--repeats R] [--before SRC]
    python benchmarks/ingest.py memory [--minutes 1 10 60] [--videos DIR]  # peak RSS per video length

``speed`` compares, on the same cores and the same inputs:
  ours:  ``avssl.ingest.run.ingest`` (decode, align, scale in swscale, encode, write tar shards)
  (a)    the two-step FFmpeg command line of research pipelines: per video one ``ffmpeg`` call for
         16 kHz mono wav, one for frames at the target fps and size (JPEG), then packing into tars
  (b)    PyAV decoding every audio and video frame of the same streams and doing nothing else (ingest
         itself decodes less: non-reference frames that no output time picks are skipped)
It needs an ``ffmpeg`` binary on PATH for (a) (``apt-get install -y ffmpeg``; benchmark only).
``memory`` ingests one generated low-resolution video (96x64, 10 fps, 44.1 kHz mono AAC) of each
length in a fresh child process (``workers=1``, default config) and reports the child's peak RSS, or its
decoding worker's if larger (``ru_maxrss`` of ``RUSAGE_SELF``, ``RUSAGE_CHILDREN``: ingest decodes in a
forked worker even with one), next to that of a child that only imports avssl.
Results are printed as a Markdown table (paste into docs/benchmarks-ingest.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from avssl.config import load_config
from avssl.ingest.run import ingest, media_files
from avssl.data.shards import Clip, decode_sample, encode_sample
from avssl.media.video import decode_video, encode_video

_B = "(b) PyAV decode of every frame, nothing else"
DEFAULT_DATA = Path(os.environ.get("AVSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def _videos(data: Path) -> list[Path]:
    return media_files(data / "videos")


# ----------------------------------------------------------------------------- formats


def bench_formats(data: Path, size: int, fps: float) -> None:
    clips = []
    for p in _videos(data):
        d = decode_video(p, 16000, fps, size)
        clips.append(Clip("k-0000", d.audio, 16000, d.frames, fps, {}))
    seconds = sum(c.duration for c in clips)
    nframes = sum(len(c.frames) for c in clips)
    print(f"{len(clips)} real clips, {seconds:.1f} s, {nframes} frames of {size}x{size} at {fps} fps; {machine()}\n")
    print("| frame format | frame bytes per clip-second | encode ms per clip-second | decode ms per clip-second "
          "(frames + FLAC audio, `decode_sample`) | mean abs error (0-255) |")
    print("|---|---:|---:|---:|---:|")
    audio_only = [encode_sample(Clip(c.key, c.audio, 16000, c.frames[:0], fps, {})) for c in clips]
    t0 = time.perf_counter()
    for s in audio_only:
        decode_sample(s)
    audio_ms = (time.perf_counter() - t0) * 1000 / seconds
    for fmt in ("jpeg", "raw", "h264"):
        t0 = time.perf_counter()
        samples = [encode_sample(c, fmt, 90) for c in clips]
        enc = time.perf_counter() - t0
        member = {"jpeg": "jpgs", "raw": "npy", "h264": "mp4"}[fmt]
        nbytes = sum(len(s[member]) for s in samples)
        t0 = time.perf_counter()
        back = [decode_sample(s) for s in samples]
        dec = time.perf_counter() - t0
        err = np.mean([np.abs(b.frames.astype(np.int16) - c.frames).mean() for b, c in zip(back, clips)])
        print(f"| {fmt} | {nbytes / seconds / 1024:.1f} KiB | {enc * 1000 / seconds:.2f} | {dec * 1000 / seconds:.2f} | {err:.2f} |")
    flac = sum(len(s["flac"]) for s in audio_only)
    print(f"\naudio (16-bit FLAC, 16 kHz mono): {flac / seconds / 1024:.1f} KiB per clip-second, "
          f"decode {audio_ms:.2f} ms per clip-second (included above)")


# ----------------------------------------------------------------------------- speed


def _floor_one(path: str) -> float:
    """Baseline (b): decode every audio and video frame with PyAV, nothing else; returns seconds decoded."""
    import av

    try:
        with av.open(path) as c:
            streams = [s for s in (c.streams.audio[:1] + c.streams.video[:1])]
            if c.streams.video:
                c.streams.video[0].codec_context.thread_count = 1
            for packet in c.demux(streams):
                for _ in packet.decode():
                    pass
            return c.duration / 1e6 if c.duration else 0.0
    except Exception:
        return 0.0


def _cli_one(args: tuple[str, str, int, float]) -> tuple[str, bytes] | None:
    """Baseline (a): ffmpeg CLI twice (wav, frames as JPEG), then pack one tar sample (bytes)."""
    path, tmp, size, fps = args
    work = Path(tempfile.mkdtemp(dir=tmp))
    try:
        quiet = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-threads", "1", "-i", path]
        r1 = subprocess.run(quiet + ["-vn", "-ac", "1", "-ar", "16000", str(work / "audio.wav")])
        (work / "f").mkdir()
        vf = f"fps={fps},scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"
        r2 = subprocess.run(quiet + ["-an", "-vf", vf, "-q:v", "2", str(work / "f" / "%05d.jpg")])
        if r1.returncode or r2.returncode:
            return None
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            key = Path(path).stem.replace(".", "_")
            tar.add(work / "audio.wav", f"{key}.wav")
            for j in sorted((work / "f").iterdir()):
                tar.add(j, f"{key}.{j.stem}.jpg")
        return key, buf.getvalue()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _generate(folder: Path, n: int) -> list[Path]:
    """n 10-second 640x360 30 fps H.264/AAC 44.1 kHz videos with moving content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:360, 0:640]
    for i in range(n):
        p = folder / f"gen{i:03d}.mp4"
        if not p.exists():
            frames = np.stack([np.stack([(xx + 7 * t + 30 * i) % 256, (yy + 3 * t) % 256,
                                         np.full_like(xx, (11 * t) % 256)], -1).astype(np.uint8) for t in range(300)])
            audio = (0.2 * rng.standard_normal(441000)).astype(np.float32)
            encode_video(p, frames, 30, audio, 44100)
        paths.append(p)
    return paths


def _media_seconds(paths: list[Path]) -> float:
    import av

    total = 0.0
    for p in paths:
        try:
            with av.open(str(p)) as c:
                total += c.duration / 1e6 if c.streams.audio else 0.0
        except Exception:
            pass
    return total


def _time_floor(paths: list[Path], workers: int, tmp: str, size: int, fps: float) -> float:
    t0 = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        list(pool.imap(_floor_one, [str(p) for p in paths]))
    return time.perf_counter() - t0


def _time_ours(paths: list[Path], workers: int, tmp: str, size: int, fps: float) -> float:
    cfg = load_config(None, [f"video.size={size}", f"video.fps={fps}", "ingest.clip_seconds=10"])
    out = Path(tmp) / "ours"
    t0 = time.perf_counter()
    ingest(paths, out, cfg, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    return wall


_SRC_CODE = """
import json, resource, sys, time
from pathlib import Path
from avssl.config import load_config
from avssl.ingest.run import ingest
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
a = json.loads(sys.argv[1])
cfg = load_config(None, [f"video.size={a['size']}", f"video.fps={a['fps']}", "ingest.clip_seconds=10"])
c0, t0 = cpu(), time.perf_counter()
ingest([Path(p) for p in a["paths"]], a["out"], cfg, workers=a["workers"], progress=False)
print(json.dumps([time.perf_counter() - t0, cpu() - c0]))
"""


def _time_src(src: Path):
    """The ingest of another checkout's ``src`` folder (e.g. before a change), timed inside a child process
    after its imports: returns ``(wall, CPU seconds)``, so both versions run in the same rounds."""

    def run(paths: list[Path], workers: int, tmp: str, size: int, fps: float) -> tuple[float, float]:
        args = {"paths": [str(p) for p in paths], "out": str(Path(tmp) / "src"), "workers": workers, "size": size, "fps": fps}
        env = {**os.environ, "PYTHONPATH": str(src)}
        r = subprocess.run([sys.executable, "-c", _SRC_CODE, json.dumps(args)], env=env, capture_output=True, text=True, check=True)
        shutil.rmtree(Path(tmp) / "src")
        wall, cpu = json.loads(r.stdout.strip().splitlines()[-1])
        return wall, cpu

    return run


def _time_cli(paths: list[Path], workers: int, tmp: str, size: int, fps: float) -> float:
    t0 = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        packed = [r for r in pool.imap(_cli_one, [(str(p), tmp, size, fps) for p in paths]) if r]
    with open(Path(tmp) / "cli.tar", "wb") as f:
        for _, data in packed:
            f.write(data)
    return time.perf_counter() - t0


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on the machine skew wall times, less so CPU times)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (pool workers, ffmpeg)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_speed(name: str, paths: list[Path], workers: int, size: int, fps: float, repeats: int,
                before: Path | None = None) -> list[str]:  # fmt: skip
    """``repeats`` rounds of the three pipelines (order rotated each round, files read once before the
    first, so no pipeline pays for a cold page cache); median wall time and CPU time of each. CPU time
    (all processes) is the steadier figure on a machine shared with other jobs. ``before``: another
    checkout's ``src`` folder, run as a fourth pipeline in the same rounds."""
    seconds = _media_seconds(paths)
    for p in paths:
        p.read_bytes()
    pipelines = {"avssl ingest": _time_ours, "(a) ffmpeg CLI x2 + packing": _time_cli, _B: _time_floor}
    if not shutil.which("ffmpeg"):
        del pipelines["(a) ffmpeg CLI x2 + packing"]
    if before is not None:
        pipelines[f"avssl ingest of {before}"] = _time_src(before)
    walls: dict[str, list[float]] = {label: [] for label in pipelines}
    cpus: dict[str, list[float]] = {label: [] for label in pipelines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            labels = list(pipelines)[r % len(pipelines):] + list(pipelines)[: r % len(pipelines)]
            for label in labels:
                cpu0 = _cpu_seconds()
                got = pipelines[label](paths, workers, tmp, size, fps)
                wall, cpu = got if isinstance(got, tuple) else (got, _cpu_seconds() - cpu0)
                walls[label].append(wall)
                cpus[label].append(cpu)
    ours, ours_cpu = float(np.median(walls["avssl ingest"])), float(np.median(cpus["avssl ingest"]))
    rows, n = [], len(paths)
    main = ["avssl ingest", "(a) ffmpeg CLI x2 + packing", _B]
    for label in main + [label for label in pipelines if label not in main]:
        if label not in walls:
            rows.append(f"| {name} | {label} | not run (no ffmpeg on PATH) | | | | | | |")
            continue
        wall = float(np.median(walls[label]))
        per_round = ", ".join(f"{w / o:.2f}" for w, o in zip(walls[label], walls["avssl ingest"]))
        cpu_rounds = ", ".join(f"{c / o:.2f}" for c, o in zip(cpus[label], cpus["avssl ingest"]))
        cpu = float(np.median(cpus[label]))
        rows.append(f"| {name} | {label} | {n / wall:.2f} | {seconds / wall:.1f}x | {wall / ours:.2f} | {per_round} "
                    f"| {min(walls[label]):.1f} s | {cpu:.1f} s ({cpu / ours_cpu:.2f}) | {cpu_rounds} |")
    print(f"{name}: {n} files ({seconds:.0f} s of media), {repeats} rounds; load average after: {_load()}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- memory


def _generate_long(path: Path, minutes: float) -> Path:
    """A ``minutes`` long 96x64 10 fps H.264 + 44.1 kHz mono AAC video with moving content (kept if present)."""
    if not path.exists():
        n = int(round(minutes * 60 * 10))
        yy, xx = np.mgrid[0:64, 0:96]
        frames = np.empty((n, 64, 96, 3), np.uint8)
        for t in range(n):
            frames[t, ..., 0], frames[t, ..., 1], frames[t, ..., 2] = (xx + 7 * t) % 256, (yy + 3 * t) % 256, (11 * t) % 256
        audio = (0.2 * np.random.default_rng(0).standard_normal(int(minutes * 60 * 44100))).astype(np.float32)
        encode_video(path.with_suffix(".part.mp4"), frames, 10, audio, 44100)
        path.with_suffix(".part.mp4").rename(path)
    return path


def _child_peak_rss(video: Path | None, out: Path) -> dict:
    """Run ingest of ``video`` (or only the imports, when None) in a fresh process; its peak RSS in MiB."""
    code = ("import json, resource, sys, time\n"
            "from avssl.config import load_config\nfrom avssl.ingest.run import ingest\n"
            "t0 = time.perf_counter()\n"
            "m = ingest([sys.argv[1]], sys.argv[2], load_config(None, []), workers=1, progress=False) if sys.argv[1] else {}\n"
            "rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
            "print(json.dumps({'rss_mib': rss / 1024,"  # the decoding worker (a child) or the process itself
            " 'seconds': time.perf_counter() - t0, 'samples': m.get('total_samples', 0)}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(video or ""), str(out)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_memory(minutes: list[float], videos: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = videos or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        idle = _child_peak_rss(None, Path(tmp) / "none")["rss_mib"]
        print(f"{machine()}; default config (10 s clips, 64 px, 10 fps, 16 kHz, jpeg, 128 samples per shard), "
              f"workers=1; a child that only imports avssl peaks at {idle:.0f} MiB\n")
        print("| video length | clips | peak RSS (MiB) | peak - import-only child (MiB) | ingest seconds |")
        print("|---|---:|---:|---:|---:|")
        for m in minutes:
            video = _generate_long(folder / f"long-{m:g}min.mp4", m)
            r = _child_peak_rss(video, Path(tmp) / f"out-{m:g}")
            print(f"| {m:g} min | {r['samples']} | {r['rss_mib']:.0f} | {r['rss_mib'] - idle:.0f} | {r['seconds']:.1f} |", flush=True)
            shutil.rmtree(Path(tmp) / f"out-{m:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["formats", "speed", "memory"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data root (has videos/)")
    parser.add_argument("--generated", type=int, default=16, help="number of generated 10 s 360p videos (0: none)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--before", type=Path, default=None,
                        help="speed: another checkout's src folder (e.g. `git archive` of an older commit), run in the same rounds")
    parser.add_argument("--repeats", type=int, default=3, help="speed: rounds per pipeline (the median is reported)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60], help="memory: video lengths")
    parser.add_argument("--videos", type=Path, default=None, help="memory: keep/reuse the generated videos here")
    parser.add_argument("--device", default="cpu", help="accepted for symmetry with other benchmarks; ingest is CPU work")
    args = parser.parse_args()
    if args.what == "formats":
        bench_formats(args.data, args.size, args.fps)
        return
    if args.what == "memory":
        bench_memory(args.minutes, args.videos)
        return
    print(f"{machine()}; workers={args.workers}; {args.size}x{args.size} at {args.fps} fps; "
          f"ffmpeg: {subprocess.run(['ffmpeg', '-version'], capture_output=True, text=True).stdout.split(chr(10))[0] if shutil.which('ffmpeg') else 'absent'}\n")
    print(f"load average before: {_load()}\n")
    print("| inputs | pipeline | files per second | real-time factor | wall time relative to avssl ingest (median) "
          "| per round | best wall | CPU time, all processes (relative) | CPU relative, per round |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    rows = []
    real = _videos(args.data) if (args.data / "videos").is_dir() else []
    if real:
        rows += bench_speed(f"{len(real)} real clips", real, args.workers, args.size, args.fps, args.repeats, args.before)
    with tempfile.TemporaryDirectory() as tmp:
        gen = _generate(Path(tmp) / "gen", args.generated)
        if gen:
            rows += bench_speed(f"{len(gen)} generated 10 s 640x360 30 fps", gen, args.workers, args.size, args.fps,
                                args.repeats, args.before)  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main()
