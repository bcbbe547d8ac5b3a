"""Probe accuracy and embedding time of a checkpoint with and without ``int8=True`` on the shared real tasks.

Same tasks, probes, folds and seeds as ``avssl eval CKPT --suite shared`` (it calls the same functions of
``avssl.evaluate.run``); the two encoders are interleaved task by task on the same decoded audio.

Usage: ``python benchmarks/int8_probe.py CKPT [--data-root ../shared/data] [--out DIR] [--threads 1]``.
Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from avssl.checkpoint import file_sha1
from avssl.embed.embedder import load_model
from avssl.evaluate.run import AudioCache, ModelRef, embed_task
from avssl.evaluate.probe import run_probes
from avssl.evaluate.tasks import load_task, shared_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("AVSSL_SHARED_DATA", "../shared/data")))
    ap.add_argument("--out", type=Path, default=None, help="embedding cache folder (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="avssl-int8-"))
    sha = file_sha1(args.checkpoint)[:12]
    refs = [ModelRef(name, f"int8-probe-{sha}-{name}", load_model(args.checkpoint, device="cpu", int8=name == "int8"))
            for name in ("fp32", "int8")]
    rows = []
    for name in shared_tasks(args.data_root):
        task = load_task(name, args.data_root)
        audio = AudioCache()
        for ex in task.examples:  # decode once, before timing, so both encoders are timed on the model alone
            audio(ex.path, refs[0].encoder.sample_rate)
        for ref in refs:
            t0 = time.perf_counter()
            x = embed_task(ref, task, out, progress=False, audio_cache=audio)
            seconds = time.perf_counter() - t0
            summary, _ = run_probes(task, x, seeds=args.seeds, device="cpu")
            rows.append({"task": name, "model": ref.name, "mean": summary["mean"], "std": summary["std"],
                         "embed_seconds": round(seconds, 2), "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    print("| task | fp32 accuracy | int8 accuracy | int8 - fp32 | embed s fp32 | embed s int8 |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["task"] for r in rows):
        a, b = (next(r for r in rows if r["task"] == name and r["model"] == m) for m in ("fp32", "int8"))
        acc = [f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}" for r in (a, b)]
        print(f"| {name} | {acc[0]} | {acc[1]} "
              f"| {100 * (b['mean'] - a['mean']):+.1f} | {a['embed_seconds']} | {b['embed_seconds']} |")
    print(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}))


if __name__ == "__main__":
    main()
