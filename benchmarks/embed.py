"""Embedding speed: real-time factor (seconds of audio per second of compute) per preset, torch vs ONNX,
beside reference architectures users would otherwise run, on 1 and 2 CPU threads.

The references (a VGGish-style CNN, PANNs CNN14, an OpenL3-style audio CNN) are built here with RANDOM
weights at their published input settings (rate, front-end, window framing): an architecture-only speed
comparison, not a quality one. Every front-end is a log-mel ``avssl.media.audio.LogMel`` with that model's
settings; resampling and decoding are excluded for everyone (inputs are already at each model's rate).

Rows per avssl preset:
* ``tower``: the spectrogram tower over non-overlapping windows (what the ONNX graph computes), torch and ONNX;
* ``embed()``: the user-facing ``Embedder.embed`` on 10 s clips (half-window overlap: ~2x the tower's work).

Usage: ``python benchmarks/embed.py [--presets tiny small paper] [--threads 1 2] [--device cuda] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avssl.media.audio import LogMel
from avssl.config import AudioConfig, load_config
from avssl.embed.embedder import Embedder
from avssl.export import export_onnx
from avssl.models import build_model

CLIP_SECONDS = 10.0
CLIPS = 2  # clips of CLIP_SECONDS per call for the avssl presets


def conv_block(cin: int, cout: int, n: int = 2) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers


class LogMelCNN(nn.Module):
    """waveform [B, N] -> log-mel [B, 1, T, M] -> ``body`` -> ``head`` (random weights)."""

    def __init__(self, audio: AudioConfig, body: nn.Module, head: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.logmel, self.body, self.head = LogMel(audio), body, head

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.logmel(wave).transpose(1, 2)[:, None]))


class VGGishHead(nn.Module):
    """VGGish: flatten [512, 6, 4] -> 4096 -> 4096 -> 128."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                nn.Linear(4096, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Cnn14Head(nn.Module):
    """PANNs CNN14: mean over frequency, max + mean over time, fc 2048 -> 2048 (embedding) -> 527."""

    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(2048, 2048), nn.Linear(2048, 527)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=3)
        x = F.relu(self.fc1(x.amax(dim=2) + x.mean(dim=2)))
        return torch.sigmoid(self.out(x))


def references() -> dict[str, tuple[nn.Module, int, int, float, str]]:
    """name -> (model, sample rate, samples per input window, audio seconds advanced per window, setting)."""
    vgg_body = nn.Sequential(  # VGGish (Hershey et al. 2017): 0.96 s examples of 96 x 64 log-mel, 10 ms hop
        *conv_block(1, 64, 1), nn.MaxPool2d(2), *conv_block(64, 128, 1), nn.MaxPool2d(2),
        *conv_block(128, 256, 2), nn.MaxPool2d(2), *conv_block(256, 512, 2), nn.MaxPool2d(2))
    vgg_audio = AudioConfig(16000, 512, 400, 160, "hann", 64, 125.0, 7500.0, 0.01)
    vgg_win = 15360 - 160  # 95 hops + 1 centred frame = 96 frames
    cnn14_body = nn.Sequential(  # PANNs CNN14 (Kong et al. 2020): 32 kHz, 1024-point FFT, hop 320, 64 mels
        *[m for cin, cout in [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]
          for m in (*conv_block(cin, cout), nn.AvgPool2d(2))], *conv_block(1024, 2048))
    cnn14_audio = AudioConfig(32000, 1024, 1024, 320, "hann", 64, 50.0, 14000.0, 1e-10)
    l3_body = nn.Sequential(  # OpenL3 (Cramer et al. 2019) mel256: 1 s at 48 kHz, hop 242, 256 mels
        nn.BatchNorm2d(1), *conv_block(1, 64), nn.MaxPool2d(2), *conv_block(64, 128), nn.MaxPool2d(2),
        *conv_block(128, 256), nn.MaxPool2d(2), *conv_block(256, 512), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    l3_audio = AudioConfig(48000, 2048, 2048, 242, "hann", 256, 0.0, 24000.0, 1e-10)
    vgg = LogMelCNN(vgg_audio, vgg_body, VGGishHead())
    cnn14 = LogMelCNN(cnn14_audio, cnn14_body, Cnn14Head())
    l3 = LogMelCNN(l3_audio, l3_body, nn.Identity())
    return {
        "VGGish-style CNN": (vgg, 16000, vgg_win, 0.96, "16 kHz, 64 mels, 0.96 s windows, hop 0.96 s"),
        "PANNs CNN14": (cnn14, 32000, int(CLIP_SECONDS * 32000), CLIP_SECONDS, "32 kHz, 64 mels, whole 10 s clip"),
        "OpenL3-style CNN (hop 0.1 s)": (l3, 48000, 48000, 0.1, "48 kHz, 256 mels, 1 s windows, hop 0.1 s (default)"),
        "OpenL3-style CNN (hop 1 s)": (l3, 48000, 48000, 1.0, "as above, hop 1 s (no overlap; generous)"),
    }


def timed_round_robin(fns: list[Callable[[], object]], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Fastest of ``repeats`` calls of each function (after one warm-up each), calling them in turn so
    that load from other processes on a shared machine falls on every case alike."""
    for fn in fns:
        fn()
    sync()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _rtf(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.2g}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-references", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp())

    # (name, input setting, backend, factory(threads) -> fn, audio seconds per call)
    cases: list[tuple[str, str, str, Callable[[int], Callable[[], object]], float]] = []
    for preset in args.presets:
        cfg = load_config(preset)
        torch.manual_seed(0)
        model = build_model(replace(cfg, model=replace(cfg.model, views=["spec"])))
        emb = Embedder.from_model(model, cfg).to(device)
        sr, w = emb.sample_rate, emb.window
        clips = torch.randn(CLIPS, int(CLIP_SECONDS * sr), generator=g) * 0.1
        windows = clips[:, : (clips.shape[1] // w) * w].reshape(-1, w)
        setting = f"{sr // 1000} kHz, {cfg.audio.n_mels} mels, {w / sr:g} s windows"

        def tower(threads, emb=emb, x=windows.to(device)):
            def fn():
                with torch.inference_mode():
                    emb.tower(x)
            return fn

        def embed(threads, emb=emb, c=clips.numpy()):
            return lambda: emb.embed(c, emb.sample_rate)

        cases.append((f"avssl {preset} tower", setting + ", no overlap", "torch", tower, windows.numel() / sr))
        if device.type == "cpu":
            import onnxruntime as ort

            path = export_onnx(emb, tmp / f"{preset}.onnx", check=False)

            def onnx(threads, path=path, xn=windows.numpy()):
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                return lambda: sess.run(None, {"audio": xn})

            cases.append((f"avssl {preset} tower", setting + ", no overlap", "onnx", onnx, windows.numel() / sr))
        cases.append((f"avssl {preset} embed()", setting + ", hop half a window", "torch", embed, clips.numel() / sr))
    if not args.no_references:
        for name, (model, sr, win, adv, setting) in references().items():
            model = model.eval().to(device)
            n = 8 if adv < 1 else 1  # windows per call (the 0.1 s-hop OpenL3 case: 8 windows = 0.8 s of audio)

            def ref(threads, model=model, x=(torch.randn(n, win, generator=g) * 0.1).to(device)):
                def fn():
                    with torch.inference_mode():
                        model(x)
                return fn

            cases.append((name, setting, "torch", ref, n * adv))

    gflops = {}  # architecture cost, independent of machine load: GFLOP (conv/matmul) per second of audio
    for name, _, backend, make, seconds in cases:
        if backend == "torch":
            with FlopCounterMode(display=False) as counter:
                make(1)()
            gflops[name] = counter.get_total_flops() / seconds / 1e9
    results: dict[tuple[str, str, int], float] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = timed_round_robin([make(threads) for _, _, _, make, _ in cases], args.repeats, sync)
        for (name, _, backend, _, seconds), t in zip(cases, times):
            results[name, backend, threads] = seconds / t

    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {device}, "
        f"1-minute load average at the end {loadavg:.1f}. Real-time factor (RTF) = seconds of audio / seconds of "
        f"compute, fastest of {args.repeats} (higher is faster). References: random weights, architecture-only speed.",
        "",
        "| model | input setting | GFLOP / audio s | "
        + " | ".join(f"{b} RTF, {t} thr" for t in args.threads for b in ("torch", "ONNX")) + " |",
        "|---|---|---|" + "---|" * (2 * len(args.threads)),
    ]
    seen = []
    for name, setting, *_ in cases:
        if name in seen:
            continue
        seen.append(name)
        cells = [_rtf(results[k]) if (k := (name, b, t)) in results else "-" for t in args.threads for b in ("torch", "onnx")]
        lines.append(f"| {name} | {setting} | {gflops[name]:.3g} | " + " | ".join(cells) + " |")
    lines.append("")
    for t in args.threads:
        small = results.get(("avssl small tower", "torch", t))
        if small:
            refs = [n for n in seen if not n.startswith("avssl")]
            ratio = ", ".join(f"{_rtf(small / results[n, 'torch', t])} {n}" for n in refs)
            lines.append(f"- {t} thread(s): the small tower (torch) runs at {ratio or 'n/a'} speed"
                         + (f"; ONNX/torch = {results['avssl small tower', 'onnx', t] / small:.2f}"
                            if ("avssl small tower", "onnx", t) in results else "")
                         + f"; embed() = {results['avssl small embed()', 'torch', t] / small:.2f}x the tower.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
