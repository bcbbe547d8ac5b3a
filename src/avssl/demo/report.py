"""The demo's report: figures (training curves, probe accuracy, retrieval examples) and text (the table
printed at the end, ``summary.md``). :func:`avssl.demo.run.run_demo_pipeline` makes the numbers; this draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avssl.train.pretrain import read_metrics

RETRIEVAL_EXAMPLES = 6


def demo_plots(report: Path, runs: dict[str, dict[str, Any]], clips: list, retrieval: dict[str, Any],
               labels: list[str] | None, probe_rows: list[dict]) -> dict[str, Path]:
    """Write ``curves.png``, ``retrieval.png`` (of ``retrieval``, the audio-visual model's) and, with
    ``probe_rows``, ``probe.png`` into ``report``; returns ``{name: path}``."""
    plots = {"curves": _plot_curves({n: r["folder"] for n, r in runs.items()}, report / "curves.png"),
             "retrieval": _plot_retrieval(clips, retrieval, labels, report / "retrieval.png")}
    if probe_rows:
        plots["probe"] = _plot_probe(probe_rows, report / "probe.png")
    return plots


def _plot_curves(runs: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, folder) in zip(axes[0], runs.items()):
        rows = read_metrics(folder)
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], color="black", lw=2, label="total")
        for key in sorted({k for r in rows for k in r if k.startswith("nce/")}):
            ax.plot(steps, [r.get(key, np.nan) for r in rows], lw=1, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("InfoNCE loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_probe(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [r["name"] for r in rows]
    ax.bar(names, [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows], capsize=4,
           color=["tab:green", "tab:blue", "tab:gray", "tab:orange"][: len(rows)])
    ax.axhline(100 * rows[0]["chance"], color="red", ls="--", lw=1, label="chance")
    ax.set_ylabel("held-out probe accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_retrieval(clips: list, result: dict, labels: list[str] | None, path: Path, top: int = 3) -> Path:
    """Rows: audio queries. Columns: the query's own video, then the ``top`` retrieved videos
    (middle frames); green = its own video, orange = same label, red = other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clips)
    if labels is not None:  # one query per label first, so the figure shows several classes
        first = list(dict.fromkeys(labels))
        queries = [labels.index(x) for x in first][:RETRIEVAL_EXAMPLES]
    else:
        queries = list(range(min(RETRIEVAL_EXAMPLES, n)))
    fig, axes = plt.subplots(len(queries), top + 1, figsize=(1.8 * (top + 1), 1.9 * len(queries)), squeeze=False)
    sim = result["similarity"]
    for row, q in enumerate(queries):
        order = np.argsort(-sim[q])[:top]
        for col, idx in enumerate([q, *order]):
            ax = axes[row, col]
            frames = clips[idx].frames
            ax.imshow(frames[len(frames) // 2] if len(frames) else np.zeros((8, 8, 3), np.uint8))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_title(f"query: {labels[q] if labels else clips[q].key}", fontsize=7)
                continue
            colour = "green" if idx == q else ("orange" if labels and labels[idx] == labels[q] else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(f"#{col} {labels[idx] if labels else clips[idx].key} ({sim[q, idx]:.2f})", fontsize=7)
    fig.suptitle("audio -> video retrieval (audio-visual model, held-out clips)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def results_table(results: dict[str, Any]) -> str:
    """The short table printed at the end: probe accuracy and retrieval per model."""
    ret = results["retrieval"]
    probe = {r["name"]: r for r in results["probe"]}
    names = list(dict.fromkeys([*probe, *ret]))
    lines = ["| model | probe accuracy (%) | retrieval top-1 (%) | retrieval top-5 (%) |", "|---|---|---|---|"]
    for name in names:
        p = f"{100 * probe[name]['mean']:.1f} ± {100 * probe[name]['std']:.1f}" if name in probe else "-"
        r1 = f"{100 * ret[name]['a2v_top1']:.1f}" if name in ret else "-"
        r5 = f"{100 * ret[name]['a2v_top5']:.1f}" if name in ret else "-"
        lines.append(f"| {name} | {p} | {r1} | {r5} |")
    any_ret = next(iter(ret.values()))
    chance_p = f"{100 * results['probe'][0]['chance']:.1f}" if results["probe"] else "-"
    lines.append(f"| *chance* | {chance_p} | {100 * any_ret['chance_top1']:.1f} | {100 * any_ret['chance_top5']:.1f} |")
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any]) -> str:
    """``summary.md``: what ran, the table, the pretraining runs, the plots."""
    w = results["world"]
    if w is not None:
        source = (f"the synthetic world: {w['num_classes']} classes x {w['clips_per_class']} clips of {w['seconds']} s "
                  f"({'sound bank ' + w['sound_bank'] if w['sound_bank'] else 'procedural timbres'}), seed "
                  f"{results['seed']}; {results['num_train_clips']} training clips, {results['num_test_clips']} held-out")
    else:
        source = (f"your videos in {results['videos']}: {results['num_train_clips']} clips (no labels: no probe; "
                  "retrieval on the training clips)")
    lines = [
        "# avssl demo", "",
        f"Data: {source}.", f"Budget: {results['steps']} optimizer steps per pretraining run (same batch size, data "
        f"and seed); ran in {results['timings_seconds']['total']:.0f} s "
        f"(stages, s: {', '.join(f'{k} {v}' for k, v in results['timings_seconds'].items() if k != 'total')}).", "",
        f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['torch_threads']} torch threads, 1-minute "
        f"load average {results['machine']['load_average_start']} at the start, {results['machine']['load_average_end']} "
        "at the end (load changes the seconds, never the results).", "",
        "## Results", "", results_table(results), "",
        "Probe: linear classifier on frozen `spec` embeddings, trained on the training clips and tested on the "
        "held-out clips (avssl.evaluate.run protocol, mean ± std over seeds). Retrieval: each "
        f"{'held-out' if w is not None else 'ingested'} clip's audio (spec view) ranks all those clips' videos; "
        "top-k = its own video among the first k (ties count against it). random-init: (a)'s architecture, "
        "untrained.", "",
    ]
    for name, r in results["retrieval"].items():
        if "class_top1" in r:
            lines.append(f"- {name}: first retrieved video has the query's class in {100 * r['class_top1']:.1f}% "
                         f"(chance {100 * r['chance_class_top1']:.1f}%)")
    lines += ["", "## Pretraining (same steps)", "", "| run | steps | GFLOP / step | TFLOP in all | seconds | final loss |",
              "|---|---|---|---|---|---|"]
    for name, r in results["pretrain"].items():
        lines.append(f"| {name} | {r['steps']} | {r['gflops_per_step']:.1f} | {r['tflops']:.1f} | {r['seconds']:.0f} "
                     f"| {r['final_loss']:.3f} |")
    lines.append("")
    lines.append("FLOPs: matmuls and convolutions of forward + backward, counted from the model (avssl.train.flops).")
    lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in results["plots"].items()]
    lines += ["", "Configs used: `configs/` (resolved YAML of each run" + (", world.json" if w else "") + ")."]
    return "\n".join(lines) + "\n"
