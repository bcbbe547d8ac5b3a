"""Windows per tower call (``Embedder.batch_size``) against the default (``avssl.embed.embedder.CPU_BATCH``), by CPU time.

For each preset (random-init ``tiny`` and ``small`` checkpoints built here), ``embed()`` is timed with 8, 16 and
32 windows per call on two inputs, interleaved over ``--repeats`` rounds: ``--files`` real Opus files one call
each (short files: a few windows each), and their audio joined into one ``--long-seconds`` clip. Reports the
fastest round's CPU seconds and each size's CPU time relative to the default in the same rounds (median).

Usage: ``python benchmarks/embed_batch.py [--files 200] [--long-seconds 120] [--repeats 5] [--data-root DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avssl.media.audio import load_audio
from avssl.embed.embedder import CPU_BATCH, load_model
from speed import machine, make_checkpoint

SIZES = (8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--long-seconds", type=float, default=120.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("AVSSL_SHARED_DATA", "../shared/data")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted((args.data_root / "unlabeled_audio" / "berklee").glob("*.opus"))[: args.files]
    if not files:
        raise SystemExit(f"no Opus files under {args.data_root}/unlabeled_audio/berklee; pass --data-root")
    short = [load_audio(f, 16000) for f in files]
    long = [np.concatenate(short)[: int(args.long_seconds * 16000)]]
    print(f"Machine: {machine()}; 1 thread; load average at the start {os.getloadavg()[0]:.1f}.\n")
    print("| preset | input | " + " | ".join(f"{b} per call: CPU s" for b in SIZES)
          + " | " + " | ".join(f"{b}: vs {CPU_BATCH}" for b in SIZES) + " |")
    print("|---|---|" + "---|" * (2 * len(SIZES)))
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("tiny", "small"):
            ckpt = make_checkpoint(preset, Path(tmp))
            models = {b: load_model(ckpt, device="cpu", batch_size=b) for b in SIZES}
            for name, clips in ((f"{len(short)} files", short), (f"{args.long_seconds:.0f} s clip", long)):
                cpu = {b: [] for b in SIZES}
                for _ in range(args.repeats):
                    for b, e in models.items():
                        t = time.process_time()
                        for c in clips:
                            e.embed(c, 16000)
                        cpu[b].append(time.process_time() - t)
                rel = {b: statistics.median(d / c for c, d in zip(cpu[b], cpu[CPU_BATCH])) for b in SIZES}
                print(f"| {preset} | {name} | " + " | ".join(f"{min(cpu[b]):.2f}" for b in SIZES) + " | "
                      + " | ".join(f"{rel[b]:.2f}x" for b in SIZES) + " |")
    print(f"\n(`{CPU_BATCH}: vs {CPU_BATCH}` is 1.00x; above 1 is faster than the default.)")


if __name__ == "__main__":
    main()
