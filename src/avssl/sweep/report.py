"""The sweep's outputs, rebuilt from its cell records: ``results.jsonl``, the ablation table and plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from avssl.atomic import write_text


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarise(records: list[dict[str, Any]], tasks: list[str], retrieval: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per variant (cells sharing a name): per task and for the mean over tasks, the mean
    and std over seeds of the headline metric (in %), plus compute; per ``retrieval`` set the audio -> video
    top-5 (%) of the cells that have it. Only finished cells count; a variant's mean over tasks uses the seeds
    that have every task."""
    retrieval = retrieval or []
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("status") != "done":
            continue
        row = rows.setdefault(r["name"], {"name": r["name"], "kind": r["kind"], "seeds": [], "per_task": {},
                                          "overall": [], "steps": [], "tflops": [], "gflops_per_step": [],
                                          "train_seconds": []})
        row["seeds"].append(r["seed"])
        for name in retrieval:
            if name in r.get("retrieval", {}):
                row["per_task"].setdefault(_retrieval_column(name), []).append(100 * r["retrieval"][name]["a2v_top5"])
        for t in tasks:
            if t in r["results"]:
                row["per_task"].setdefault(t, []).append(100 * r["results"][t]["mean"])
        if all(t in r["results"] for t in tasks):
            row["overall"].append(statistics.fmean(100 * r["results"][t]["mean"] for t in tasks))
        for k in ("steps", "tflops", "gflops_per_step", "train_seconds"):
            if k in r:
                row[k].append(r[k])
    out = []
    for row in rows.values():
        row["tasks"] = {t: _mean_std(v) for t, v in row.pop("per_task").items()}
        row["mean"] = _mean_std(row["overall"]) if row["overall"] else None
        for k in ("steps", "tflops", "gflops_per_step", "train_seconds"):
            row[k] = statistics.fmean(row[k]) if row[k] else None
        out.append(row)
    return sorted(out, key=lambda r: r["kind"] != "train")  # training variants first, in plan order


def _retrieval_column(name: str) -> str:
    return f"a2v top-5 ({name})"


def table(rows: list[dict[str, Any]], tasks: list[str], retrieval: list[str] | None = None) -> str:
    """Markdown: variants as rows; each task, the mean over tasks, each retrieval set's audio -> video top-5 and
    the compute as columns."""
    extra = [_retrieval_column(n) for n in retrieval or []]
    head = ["variant", "seeds", *tasks, "mean", *extra, "steps", "GFLOP/step", "TFLOP", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(ms: tuple[float, float] | None) -> str:
        return "-" if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f}"

    for r in rows:
        num = [f"{r[k]:{f}}" if r[k] is not None else "-" for k, f in
               (("steps", ".0f"), ("gflops_per_step", ".1f"), ("tflops", ".1f"))]
        minutes = f"{r['train_seconds'] / 60:.1f}" if r["train_seconds"] is not None else "-"
        lines.append("| " + " | ".join([r["name"].replace("|", "/"), str(len(r["seeds"])), *[cell(r["tasks"].get(t)) for t in tasks],
                                        cell(r["mean"]), *[cell(r["tasks"].get(c)) for c in extra], *num, minutes]) + " |")
    return "\n".join(lines) + "\n"


def write_report(records: list[dict[str, Any]], tasks: list[str], out: Path, retrieval: list[str] | None = None) -> None:
    """``results.jsonl`` (one row per cell and task), ``results.md`` and ``plots/`` in ``out``."""
    rows = []
    for r in records:
        base = {k: r.get(k) for k in ("name", "kind", "model", "seed", "key", "status", "error", "steps",
                                      "gflops_per_step", "tflops", "train_seconds", "overrides")}
        rows += [{**base, "task": t, **res} for t, res in r.get("results", {}).items()] or [base]
    write_text(out / "results.jsonl", "".join(json.dumps(x, default=str) + "\n" for x in rows))
    summary = summarise(records, tasks, retrieval)
    text = "Headline metric (%) per task, mean ± std over pretraining seeds (each seed: mean over probe seeds " \
           "and folds). Compute: optimizer steps, counted GFLOPs per training step, TFLOPs in all, measured " \
           "training minutes.\n\n" + table(summary, tasks, retrieval)
    for name in retrieval or []:
        chance = next((r["retrieval"][name] for r in records if name in r.get("retrieval", {})), None)
        if chance:
            text += (f"\n{_retrieval_column(name)}: share of the {chance['num_clips']} clips whose audio ranks its own "
                     f"video among the first five (chance {100 * chance['chance_top5']:.1f}%); avssl.evaluate.retrieval.\n")
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        text += "\nFailed cells:\n\n" + "".join(f"- {r['name']} (seed {r['seed']}): {r['error']}\n" for r in failed)
    write_text(out / "results.md", text)
    if summary:
        plot(summary, tasks, out / "plots")


def plot(rows: list[dict[str, Any]], tasks: list[str], folder: Path) -> list[Path]:
    """``quality_vs_compute.png``, ``quality_vs_steps.png`` (training variants; baselines as lines) and
    ``tasks.png`` (per-task bars with error bars over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    trained = [r for r in rows if r["kind"] == "train" and r["mean"] is not None]
    baselines = [r for r in rows if r["kind"] != "train" and r["mean"] is not None]
    paths = []
    for key, xlabel, name in (("tflops", "training compute (TFLOP, counted)", "quality_vs_compute.png"),
                              ("steps", "optimizer steps", "quality_vs_steps.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in trained:
            ax.errorbar(r[key], r["mean"][0], yerr=r["mean"][1], fmt="o", capsize=3, label=r["name"])
        for i, b in enumerate(baselines):
            ax.axhline(b["mean"][0], ls="--", lw=1, color=f"C{(i + len(trained)) % 10}", label=b["name"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"mean over {len(tasks)} tasks (%)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks)), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + i * width for j, t in enumerate(tasks) if t in r["tasks"]]
        ms = [r["tasks"][t] for t in tasks if t in r["tasks"]]
        ax.bar(xs, [m for m, _ in ms], width, yerr=[s for _, s in ms], capsize=2, label=r["name"],
               color=plt.cm.tab20(i % 20))  # distinct colours for up to 20 variants
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, fontsize=8)
    ax.set_ylabel("headline metric (%)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "tasks.png", dpi=110)
    plt.close(fig)
    return [*paths, folder / "tasks.png"]
