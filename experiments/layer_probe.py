"""Which blocks of the spectrogram tower carry what a probe reads: one linear probe per block.

For every finished cell of an ``avssl sweep`` run with ``embed.features=layers`` (trained models and
random-init alike), the cached ``layers`` embeddings (mean and standard deviation over time of every
block's output, block after block) are cut into one slice per block and each slice is probed alone
with the sweep's protocol; ``all`` is the whole vector (what the sweep table reports) and ``selected``
the read-out chosen per fold on validation data (``--select-layer``). Nothing is re-embedded: the
slices come from ``<sweep>/embeddings``.

    python experiments/layer_probe.py /work/exp/sweeps/modality --data-root ../shared/data \
        --tasks avepm-groups,fsdd-digits,instruments --out layer_probe.md

Prints (and writes with ``--out``) a markdown table: one row per variant and task, one column per
block, mean ± std over the pretraining seeds found, each seed probed once (probe seed 0).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from avssl.config import load_config
from avssl.evaluate.run import embed_task, resolve_model
from avssl.evaluate.probe import block_columns, run_probes
from avssl.evaluate.tasks import load_task


def model_spec(sweep: Path, cell: dict) -> str | None:
    """The model a finished ``layers`` cell evaluated, as an ``avssl eval`` spec (None for feature baselines)."""
    if cell.get("status") != "done" or load_config(sweep / "cells" / cell["key"] / "config.yaml").embed.features != "layers":
        return None
    if cell["kind"] == "train":
        return str(sweep / cell["run"] / "checkpoint.pt")
    if cell["model"] == "random-init":
        return f"random-init:{sweep / 'cells' / cell['key'] / 'architecture.yaml'}"
    return None


def probe_blocks(sweep: Path, tasks: list[str], data_root: str | None,
                 only: str = "") -> dict[tuple[str, str], list[list[float]]]:
    """``(variant, task) -> one [block_1, ..., block_n, last two, all, selected] accuracy list per seed``
    (cells whose name contains ``only``)."""
    loaded = {name: load_task(name, data_root) for name in tasks}
    scores: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for path in sorted((sweep / "cells").glob("*/cell.json")):
        cell = json.loads(path.read_text())
        spec = model_spec(sweep, cell)
        if spec is None or only not in cell["name"]:
            continue
        ref = resolve_model(spec, seed=cell["seed"], features="layers")
        slices = block_columns(ref.encoder.layer_dims)
        for name, task in loaded.items():
            x = embed_task(ref, task, sweep / "embeddings", progress=False)
            last2 = np.r_[slices[-2], slices[-1]]
            row = [run_probes(task, x[:, s], seeds=1)[0]["mean"] for s in [*slices, last2]]
            row.append(run_probes(task, x, seeds=1)[0]["mean"])
            row.append(run_probes(task, x, seeds=1, blocks=ref.encoder.layer_dims)[0]["mean"])  # --select-layer
            variant = cell["name"].replace(" | embed.features=layers", "").replace(" (embed.features=layers)", "")
            variant = variant.replace("|", "/")
            scores[(variant, name)].append(row)
            print(f"{cell['name']} (seed {cell['seed']}) {name}: " + " ".join(f"{100 * v:.1f}" for v in row), flush=True)
    return scores


def table(scores: dict[tuple[str, str], list[list[float]]]) -> str:
    width = max(len(rows[0]) for rows in scores.values())
    n = width - 3  # blocks
    head = [f"block {i + 1}" for i in range(n)] + [f"blocks {n - 1}+{n}", "all", "selected"]
    lines = ["| variant | task | seeds | " + " | ".join(head) + " |", "|---" * (len(head) + 3) + "|"]
    for (variant, task), rows in sorted(scores.items()):
        a = 100 * np.array(rows)
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(a.mean(0), a.std(0))]
        lines.append(f"| {variant} | {task} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path, help="an avssl sweep --out folder")
    ap.add_argument("--tasks", required=True, help="comma-separated task names (the sweep's cached ones)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="probe only the cells whose name contains this text")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    md = table(probe_blocks(args.sweep, args.tasks.split(","), args.data_root, args.only))
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
