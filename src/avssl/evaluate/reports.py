"""Reports of ``avssl eval`` results: the markdown table and the figures (score bars, confusion
matrices, a 2-D projection of the embeddings). Inputs are the records and embeddings that
:func:`avssl.evaluate.run.evaluate` produced; nothing here embeds or probes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

CONFUSION_MAX_CLASSES = 40


def slug(text: str) -> str:
    """A file-name-safe id: readable tail plus a short hash of the full text when it changed."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:]
    return safe if safe == text else f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def markdown_table(records: list[dict]) -> str:
    """Models as rows, tasks as columns, cells ``mean +- std`` of each task's headline metric (%)."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    models = list(dict.fromkeys(r["model"] for r in records))
    cell = {(r["model"], r["task"]): r for r in records}
    metric = {r["task"]: r["metric"] for r in records}
    lines = ["| model | " + " | ".join(f"{t} ({metric[t]}, %)" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for m in models:
        vals = [f"{100 * cell[m, t]['mean']:.1f} ± {100 * cell[m, t]['std']:.1f}" if (m, t) in cell else "-"
                for t in tasks]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    chance = {t: next(r["chance"] for r in records if r["task"] == t) for t in tasks}
    lines.append("| *chance (majority class)* | " + " | ".join(f"{100 * chance[t]:.1f}" for t in tasks) + " |")
    notes = [f"- **{t}**: {next(r for r in records if r['task'] == t)['split']}; "
             f"{next(r for r in records if r['task'] == t)['folds']} fold(s) x "
             f"{next(r for r in records if r['task'] == t)['seeds']} seeds" for t in tasks]
    return "\n".join(lines) + "\n\nMean ± std over seeds x folds of a linear probe on frozen embeddings.\n\n" + \
        "\n".join(notes) + "\n"


def project2d(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D view of ``x[test]``: linear discriminant analysis fitted on ``x[train]`` with labels
    ``y`` (shrinkage, so it works for any dimension), or PCA when there are < 3 classes.
    Returns (``float[len(test), 2]``, the method's name)."""
    mean, std = x[train].mean(0), x[train].std(0)
    z = (x - mean) / np.where(std > 1e-8, std, 1.0)
    if len(np.unique(y[train])) >= 3:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        lda = LinearDiscriminantAnalysis(n_components=2, solver="eigen", shrinkage="auto").fit(z[train], y[train])
        return lda.transform(z[test]), "LDA fitted on the training split, test clips shown"
    _, _, vt = np.linalg.svd(z[train] - z[train].mean(0), full_matrices=False)
    return z[test] @ vt[:2].T, "PCA of the training split, test clips shown"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_scores(records: list[dict], path: Path) -> Path:
    """Headline metric per task, bars per model, std error bars, chance ticks."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in records))
    models = list(dict.fromkeys(r["model"] for r in records))
    cell = {(r["model"], r["task"]): r for r in records}
    fig, ax = plt.subplots(figsize=(max(6, 2.5 + 0.6 * len(tasks) * len(models)), 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        pos = [t + (i - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        mean = [100 * cell[m, t]["mean"] if (m, t) in cell else 0 for t in tasks]
        std = [100 * cell[m, t]["std"] if (m, t) in cell else 0 for t in tasks]
        bars = ax.bar(pos, mean, width, yerr=std, capsize=3, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for t, name in enumerate(tasks):
        chance = 100 * next(r["chance"] for r in records if r["task"] == name)
        ax.hlines(chance, t - 0.45, t + 0.45, colors="k", linestyles="--", linewidth=1,
                  label="chance" if t == 0 else None)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({cell[next(m for m in models if (m, t) in cell), t]['metric']})"
                                      for t in tasks])
    ax.set_ylabel("test score, % (mean ± std)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Linear probe on frozen embeddings")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusions(name: str, task: Any, per_model: dict[str, dict], means: dict[str, float], path: Path) -> Path:
    """Row-normalised confusion matrices of one single-label task, one panel per model."""
    plt = _pyplot()
    k = len(task.classes)
    fig, axes = plt.subplots(1, len(per_model), figsize=(4.5 * len(per_model), 4.2), squeeze=False)
    for ax, (m, d) in zip(axes[0], per_model.items()):
        c = d["confusion"] / np.maximum(d["confusion"].sum(1, keepdims=True), 1)
        ax.imshow(c, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{m}\n{100 * means[m]:.1f}% accuracy", fontsize=9)
        ax.set_xticks(range(k), task.classes, rotation=90, fontsize=6)
        ax.set_yticks(range(k), task.classes, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(f"{name}: confusion (rows normalised, all folds and seeds)")
    fig.tight_layout()
    return _save(fig, path)


def plot_projections(name: str, task: Any, per_model: dict[str, dict], path: Path) -> Path:
    """:func:`project2d` of the first fold's test clips, one panel per model, coloured by class."""
    plt = _pyplot()
    k = len(task.classes)
    fold = task.folds[0]
    train, test = task.indices(fold.train), task.indices(fold.test)
    y = np.array([task.classes.index(ex.labels[0]) for ex in task.examples])  # first label if multi-label
    fig, axes = plt.subplots(1, len(per_model), figsize=(4.5 * len(per_model), 4.2), squeeze=False)
    for ax, (m, d) in zip(axes[0], per_model.items()):
        p, method = project2d(d["x"], y, train, test)
        sc = ax.scatter(p[:, 0], p[:, 1], c=y[test], cmap="tab20" if k > 10 else "tab10", s=8, vmin=0,
                        vmax=max(k - 1, 1))
        lo, hi = np.percentile(p, [1, 99], axis=0)
        pad = 0.1 * (hi - lo)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=c)
                   for i, c in enumerate(task.classes)]
        fig.legend(handles=handles, loc="center right", fontsize=7)
        fig.subplots_adjust(right=0.85)
    fig.suptitle(f"{name} ({fold.name}): {method}, coloured by class")
    return _save(fig, path)


def write_plots(records: list[dict], figures: dict[str, dict[str, Any]], folder: str | Path) -> list[Path]:
    """``accuracy.png`` (:func:`plot_scores`), ``confusion-<task>.png`` (:func:`plot_confusions`; single-label
    tasks with at most 40 classes) and ``projection-<task>.png`` (:func:`plot_projections`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [plot_scores(records, folder / "accuracy.png")]
    for name, info in figures.items():
        task, per_model = info["task"], info["models"]
        if not per_model:
            continue
        if not task.multilabel and len(task.classes) <= CONFUSION_MAX_CLASSES:
            means = {r["model"]: r["mean"] for r in records if r["task"] == name}
            written.append(plot_confusions(name, task, per_model, means, folder / f"confusion-{slug(name)}.png"))
        written.append(plot_projections(name, task, per_model, folder / f"projection-{slug(name)}.png"))
    return written
