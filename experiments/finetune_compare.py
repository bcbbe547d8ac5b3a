"""Does pretraining pay when fine-tuning? ``avssl finetune`` from a checkpoint vs from random-init (same architecture)
vs the checkpoint's linear probe, on the same splits, with several seeds, and in a few-label regime.

    python experiments/finetune_compare.py CKPT --out DIR [--tasks ...] [--seeds 3] [--labels 0 5 1]
        [--set finetune.k=v ...] [--jobs 2]

Every cell is one ``avssl finetune`` run in its own folder (``DIR/runs/TASK-kK-sS-{pretrained,random}``), run as a
subprocess with one torch thread, ``--jobs`` at a time; a rerun skips finished cells. ``--labels 0`` is every
training clip; ``k > 0`` keeps k per class (the draw follows the seed). The linear probe (``avssl.evaluate.probe.probe``)
reads the checkpoint's embeddings (``embed.features``, the fine-tuning head's input) with the same training,
validation and test clips as the fine-tuning run of that seed (:func:`avssl.finetune.data.split_task`); it is run
with every label only (with one label per class it has no validation split to pick its weight decay on).
Writes ``DIR/results.md`` (mean +- std over seeds of each task's headline metric, in %) and ``DIR/cells.jsonl``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def run_cell(ckpt: str, task: str, k: int, seed: int, start: str, out: Path, sets: list[str], data_root: str) -> dict:
    folder = out / "runs" / f"{task}-k{k}-s{seed}-{start}"
    if not (folder / "results.json").is_file():
        spec = ckpt if start == "pretrained" else f"random-init:{ckpt}"
        cmd = [sys.executable, "-m", "avssl", "finetune", spec, "--task", task, "--out", str(folder), "--seed",
               str(seed), "--no-progress", "--data-root", data_root, "--set", f"finetune.labels_per_class={k}",
               *[a for kv in sets for a in ("--set", kv)]]
        if (folder / "checkpoint.pt").exists():
            cmd.append("--resume")
        folder.parent.mkdir(parents=True, exist_ok=True)
        with (folder.parent / f"{folder.name}.log").open("w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads((folder / "results.json").read_text())
    return {"task": task, "k": k, "seed": seed, "model": f"finetune {start}", "score": res["test"],
            "steps": res["steps"], "seconds": res["train_seconds"], "best_epoch": res["best_epoch"]}


def probe_cells(ckpt: str, tasks: list[str], seeds: int, sets: list[str], data_root: str, cache: Path) -> list[dict]:
    """The checkpoint's linear probe on each fine-tuning run's own split (every label)."""
    import torch

    from avssl.evaluate.run import embed_task, resolve_model
    from avssl.finetune.run import starting_point, tuning_overrides
    from avssl.finetune.data import split_task
    from avssl.evaluate.probe import probe
    from avssl.evaluate.tasks import load_task

    torch.set_num_threads(1)
    ref = resolve_model(ckpt, device="cpu")
    cells = []
    for name in tasks:
        task = load_task(name, data_root)
        x = embed_task(ref, task, cache, progress=False)
        y = task.targets()
        for seed in range(seeds):
            cfg, _ = starting_point(ckpt, tuning_overrides(None, sets + [f"finetune.seed={seed}"]))
            s = split_task(task, None, cfg.finetune)
            res = probe(x[s.train], y[s.train], x[s.test], y[s.test], valid_x=x[s.valid], valid_y=y[s.valid],
                        num_classes=len(task.classes), seed=seed)
            cells.append({"task": name, "k": 0, "seed": seed, "model": "linear probe",
                          "score": res["metrics"][task.metric]})
    return cells


def table(cells: list[dict], tasks: list[str]) -> str:
    models = ["finetune pretrained", "finetune random", "linear probe"]
    ks = sorted({c["k"] for c in cells}, key=lambda k: (k != 0, -k))  # all, then fewer and fewer
    lines = ["| labels per class | model | " + " | ".join(tasks) + " | mean |", "|---|---|" + "---|" * (len(tasks) + 1)]
    for k in ks:
        for m in models:
            got = [c for c in cells if c["k"] == k and c["model"] == m]
            if not got:
                continue
            per_task = []
            for t in tasks:
                v = [100 * c["score"] for c in got if c["task"] == t]
                per_task.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "-")
            seeds = sorted({c["seed"] for c in got})
            means = [np.mean([100 * c["score"] for c in got if c["seed"] == s and c["task"] in tasks]) for s in seeds]
            lines.append(f"| {'all' if k == 0 else k} | {m} | " + " | ".join(per_task)
                         + f" | {np.mean(means):.1f} ± {np.std(means):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tasks", nargs="+", default=["avepm-groups", "instruments", "fsdd-digits", "fsdd-speakers"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--labels", nargs="+", type=int, default=[0, 5, 1])
    ap.add_argument("--set", action="append", default=[], help="finetune.* override for every run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data-root", default=None, help="default: $AVSSL_SHARED_DATA, else ../shared/data")
    args = ap.parse_args()
    if args.data_root is None:
        from avssl.evaluate.tasks import default_data_root

        args.data_root = str(default_data_root())
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(args.checkpoint, t, k, s, start, args.out, args.set, args.data_root)
            for k in args.labels for s in range(args.seeds) for t in args.tasks for start in ("pretrained", "random")]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        cells = list(pool.map(lambda j: run_cell(*j), jobs))
    if 0 in args.labels:
        cells += probe_cells(args.checkpoint, args.tasks, args.seeds, args.set, args.data_root, args.out / "cache")
    (args.out / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    text = table(cells, args.tasks)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
