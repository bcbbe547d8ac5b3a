"""How the audio-visual gain grows with data (issue 25 §5): two cells at nested subsets of the pretraining videos.

The best audio-visual cell and its audio-only twin (the recipe ``scaling``: cells ``audio-visual`` and
``audio-only``) are pretrained for the same steps on 64, 128 and all 258 videos of ``avepm/pretrain.txt``
(nested: the 64 are the first 64 of the 128), 3 seeds each, and read out by the 5-task mean and the
held-out audio -> video retrieval top-5. Steps:

  subsets  OUT/lists/videos-N.txt: nested subsets of --list (absolute paths), one seeded order, stratified by
           class when a labels CSV names every listed file's class (AVE-PM: 86 classes x 3 train videos, so
           64 videos are 64 distinct classes and 128 are every class once plus 42 twice); else a plain permutation
  run      per size: `avssl ingest` the list into OUT/shards/N (skipped when OUT/shards/N/manifest.json
           exists), then `avssl sweep RECIPE --data OUT/shards/N ... --out OUT/sweeps/N` (which reuses the cells
           it finished); every command is printed before it runs, --dry-run prints them only
  report   reads OUT/sweeps/N/results.jsonl (the per-task score of every cell and seed) and
           OUT/sweeps/N/cells/<key>/cell.json (the retrieval, which results.jsonl does not carry); per size
           and cell the 5-task mean and the a2v top-5 per seed, mean ± std over seeds (ddof 0, as the sweep
           table), the audio-visual minus audio-only difference seed by seed (the gain), a least-squares line
           of each against log2(videos) with a bootstrap over seeds (seeds resampled within each size, line
           refitted) for a 90 % interval of the slope and of the value at --factor x the largest size;
           writes OUT/scaling.md (printed too) and OUT/scaling.png
  all      subsets + run + report

    python experiments/data_scaling.py all --out sweeps/scaling
    python experiments/data_scaling.py all --out sweeps/scaling --dry-run     # the commands only
    python experiments/data_scaling.py report --out sweeps/scaling            # after (some) sweeps finished
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

TASKS = "avepm,avepm-groups,fsdd-digits,fsdd-speakers,instruments"
INGEST_SET = ["video.size=32", "video.fps=8", "ingest.clip_seconds=10"]  # RESULTS.md's shards/avepm-train-32
AV, AO = "audio-visual", "audio-only"
Series = dict[int, list[float]]  # number of videos -> one value per seed (seed order)


# ------------------------------------------------------------------------------------ subsets


def read_list(list_file: Path) -> list[Path]:
    """The files a list file names, as absolute paths (relative lines resolve against the list file's folder,
    as ``avssl ingest`` reads them: :func:`avssl.ingest.inputs.list_file_entries`)."""
    from avssl.ingest.inputs import list_file_entries

    return [Path(os.path.abspath(p)) for _, p in list_file_entries(Path(os.path.abspath(list_file)))]


def read_classes(labels_csv: Path, column: str = "label") -> dict[Path, str]:
    """Absolute path -> class, from a CSV with a ``path`` column (relative to the CSV's folder) and ``column``."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return {Path(os.path.abspath(labels_csv.parent / r["path"])): r[column] for r in rows}


def nested_order(files: list[Path], classes: dict[Path, str] | None, seed: int) -> list[Path]:
    """One seeded order of ``files``; every prefix is a subset. With ``classes`` (one for every file) the order is
    stratified: within each class a random order, and the i-th of a class of n files gets the key
    ``(i + u) / n`` (u uniform in [0, 1)), so any prefix holds each class in proportion, to within one file."""
    rng = np.random.default_rng(seed)
    if classes is None:
        return [files[i] for i in rng.permutation(len(files))]
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(classes[f], []).append(f)
    keyed = []
    for name in sorted(by_class):
        members = [by_class[name][i] for i in rng.permutation(len(by_class[name]))]
        keyed += [((i + rng.random()) / len(members), f) for i, f in enumerate(members)]
    return [f for _, f in sorted(keyed, key=lambda kv: kv[0])]


def write_subsets(list_file: Path, sizes: list[int], out: Path, seed: int = 0,
                  labels: Path | None = None) -> dict[int, Path]:
    """``out/lists/videos-N.txt`` for every size N (a size above the list's length is refused); returns them.
    Stratified by ``labels`` when it names a class for every listed file. A list that would change under a
    finished shard folder is refused (delete ``out/shards/N`` to redo it)."""
    files = read_list(list_file)
    if max(sizes) > len(files):
        raise SystemExit(f"{list_file} names {len(files)} files; sizes {sizes} ask for more")
    classes = read_classes(labels) if labels is not None and labels.is_file() else None
    if classes is not None and not all(f in classes for f in files):
        print(f"{labels} does not name every listed file: plain permutation, not stratified")
        classes = None
    order = nested_order(files, classes, seed)
    print(f"{len(files)} files in {list_file}; order: seed {seed}, "
          + (f"stratified by class ({len(set(classes.values()))} classes in {labels})" if classes
             else "not stratified"))
    lists = {}
    for n in sorted(sizes):
        path, text = out / "lists" / f"videos-{n}.txt", "".join(f"{f}\n" for f in order[:n])
        if path.is_file() and path.read_text() != text and (out / "shards" / str(n) / "manifest.json").is_file():
            raise SystemExit(f"{path} would change but {out / 'shards' / str(n)} was ingested from it: "
                             "delete that folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        lists[n] = path
    return lists


# ------------------------------------------------------------------------------------ run


def write_recipe(path: Path, av: list[str], ao: list[str]) -> Path:
    """A recipe with the two cells from ``KEY=VALUE`` lists (values are YAML) and the ``scaling`` recipe's read-out."""
    def flat(items: list[str]) -> dict:
        return {k.strip(): yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items)}

    recipe = {"description": "data scaling: two cells given on the command line",
              "set": {"embed.features": "layers", "embed.select_layer": True},
              "cells": [{"name": AV, "set": flat(av)}, {"name": AO, "set": flat(ao)}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def commands(args: argparse.Namespace, n: int, recipe: str) -> tuple[list[str], list[str]]:
    """The ingest and sweep commands of size ``n``."""
    avssl = [sys.executable, "-m", "avssl"]
    ingest = [*avssl, "ingest", str(args.out / "lists" / f"videos-{n}.txt"), "--out", str(args.out / "shards" / str(n)),
              "--config", args.ingest_config, *[x for s in INGEST_SET + args.ingest_set for x in ("--set", s)]]
    sweep = [*avssl, "sweep", recipe, "--data", str(args.out / "shards" / str(n)), "--tasks", args.tasks,
             "--seeds", str(args.seeds), "--probe-seeds", str(args.probe_seeds), "--threads", str(args.threads),
             "--set", f"train.steps={args.steps}", *[x for s in args.sweep_set for x in ("--set", s)],
             "--retrieval", args.retrieval, "--out", str(args.out / "sweeps" / str(n))]
    if args.data_root is not None:
        sweep += ["--data-root", str(args.data_root)]
    return ingest, sweep


def run_sizes(args: argparse.Namespace) -> int:
    """Ingest and sweep every size, smallest first; a size whose sweep has failed cells does not stop the others.
    Returns 0, or the first non-zero exit status."""
    recipe = args.recipe
    if args.audio_visual or args.audio_only:
        if not (args.audio_visual and args.audio_only):
            raise SystemExit("give both --audio-visual and --audio-only, or neither (the recipe's cells)")
        recipe = str(write_recipe(args.out / "recipe.yaml", args.audio_visual, args.audio_only))
    status = 0
    for n in sorted(args.sizes):
        if not (args.out / "lists" / f"videos-{n}.txt").is_file() and not args.dry_run:
            raise SystemExit(f"{args.out}/lists/videos-{n}.txt is missing: run the subsets step first")
        ingest, sweep = commands(args, n, recipe)
        steps = [sweep] if (args.out / "shards" / str(n) / "manifest.json").is_file() else [ingest, sweep]
        for cmd in steps:
            print("$ " + shlex.join(cmd), flush=True)
            if args.dry_run:
                continue
            rc = subprocess.run(cmd, check=False).returncode
            if (rc and cmd is ingest) or rc not in (0, 1):  # no shards, or a sweep that never started: stop
                return rc
            status = status or rc
    return status


# ------------------------------------------------------------------------------------ report


def load_sweep(folder: Path, tasks: list[str], retrieval: str) -> tuple[dict[tuple[str, int], dict], float | None]:
    """``{(cell name, seed): {"mean": 5-task mean %, "a2v_top5": %}}`` of a sweep's finished cells (a value is
    missing where the cell lacks a task or the retrieval set), and the retrieval's chance top-5 (%)."""
    scores: dict[tuple[str, int], dict[str, dict]] = {}
    keys: dict[tuple[str, int], str] = {}
    for line in (folder / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("status") == "done" and row.get("task"):
            scores.setdefault((row["name"], row["seed"]), {})[row["task"]] = 100 * row["mean"]
            keys[(row["name"], row["seed"])] = row["key"]
    out, chance = {}, None
    for cell, by_task in scores.items():
        out[cell] = {"mean": float(np.mean([by_task[t] for t in tasks])) if all(t in by_task for t in tasks) else None}
        path = folder / "cells" / keys[cell] / "cell.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if retrieval in record.get("retrieval", {}):
            out[cell]["a2v_top5"] = 100 * record["retrieval"][retrieval]["a2v_top5"]
            chance = 100 * record["retrieval"][retrieval]["chance_top5"]
    return out, chance


def series(sweeps: dict[int, dict], name: str, metric: str, minus: str | None = None) -> Series:
    """Per number of videos, the seeds' values of ``metric`` for cell ``name``, or of ``name - minus`` paired by
    seed (seeds where both have it); sizes without a value are left out."""
    out: Series = {}
    for n, cells in sorted(sweeps.items()):
        values = []
        for (cell, seed), v in sorted(cells.items(), key=lambda kv: kv[0][1]):
            if cell == name and v.get(metric) is not None:
                other = cells.get((minus, seed), {}).get(metric) if minus else 0.0
                if other is not None:
                    values.append(v[metric] - other)
        if values:
            out[n] = values
    return out


def _line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``y = a + b x`` along the last axis of ``y`` (``x``, ``w``: one value per size)."""
    xm = (w * x).sum() / w.sum()
    ym = (w * y).sum(-1) / w.sum()
    b = (w * (x - xm) * (y - ym[..., None])).sum(-1) / (w * (x - xm) ** 2).sum()
    return ym - b * xm, b


def fit(s: Series) -> tuple[float, float]:
    """Least squares of every seed's value against log2(videos): (intercept, slope per doubling)."""
    x = np.log2(list(s))
    a, b = _line(x, np.array([np.mean(v) for v in s.values()]), np.array([len(v) for v in s.values()], float))
    return float(a), float(b)


def bootstrap(s: Series, at: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(slopes [draws], predictions [draws, len(at)])`` at log2(videos) ``at``: seeds resampled with replacement
    within each size and the line refitted; None when no size has two seeds (nothing to resample)."""
    if max(len(v) for v in s.values()) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.stack([np.asarray(v)[rng.integers(0, len(v), (draws, len(v)))].mean(1) for v in s.values()], 1)
    a, b = _line(np.log2(list(s)), means, np.array([len(v) for v in s.values()], float))
    return b, a[:, None] + b[:, None] * at[None, :]


def analyse(s: Series, target: int, draws: int, seed: int) -> dict:
    """The fit of a series, its value at ``target`` videos, and their 90 % bootstrap intervals (None: one seed)."""
    a, b = fit(s)
    boot = bootstrap(s, np.array([np.log2(target)]), draws, seed)
    res = {"slope": b, "predicted": a + b * np.log2(target), "slope_90": None, "predicted_90": None}
    if boot is not None:
        res["slope_90"] = tuple(np.percentile(boot[0], [5, 95]))
        res["predicted_90"] = tuple(np.percentile(boot[1][:, 0], [5, 95]))
    return res


def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.1f} ± {np.std(v):.1f} (n={len(v)})"


def _interval(ci: tuple[float, float] | None, fmt: str = "+.2f") -> str:
    return "-" if ci is None else f"{ci[0]:{fmt}} to {ci[1]:{fmt}}"


def sentence(label: str, s: Series, res: dict, target: int, factor: float, unit: str,
             chance: float | None = None) -> str:
    """The plain sentence on what ``target`` videos would give, with its interval and how rough it is; with
    ``chance`` (retrieval), a warning when the prediction or its interval reaches down to chance."""
    seeds = sorted({len(v) for v in s.values()})
    n_seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    ci = res["predicted_90"]
    how = (f"90 % interval {ci[0]:.1f} to {ci[1]:.1f}" if ci is not None else
           "no interval: one seed per size leaves nothing for the bootstrap to resample")
    text = (f"**{label}**: extrapolating the log-linear trend, {factor:g}x more video ({target} videos) predicts "
            f"{res['predicted']:.1f}{unit} ({how}); with {len(s)} sizes and {n_seeds} seed{'s' * (n_seeds != '1')} "
            "this is a rough projection, not a measurement.")
    if chance is not None and (ci[0] if ci is not None else res["predicted"]) <= chance:
        text += (f" Chance is {chance:.1f}{unit}, inside that reach (a line below it is no prediction at all): "
                 "the trend does not say that more video lifts this above chance.")
    return text


def plot(panels: list[tuple[str, dict[str, Series]]], fits: dict, target: int, chance: float | None,
         path: Path, draws: int, seed: int) -> Path:
    """One panel per metric: each series' mean ± std per size, its fitted line and 90 % bootstrap band out to
    ``target`` videos (log axis); chance as a dashed line on the retrieval panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (metric, by_cell) in zip(axes[0], panels):
        measured = sorted({n for s in by_cell.values() for n in s})
        for i, (name, s) in enumerate(by_cell.items()):
            sizes = np.array(list(s))
            grid = np.log2(np.geomspace(sizes.min(), target, 50))
            a, b = fit(s)
            boot = bootstrap(s, grid, draws, seed)
            ax.errorbar(sizes * (1 + 0.03 * (2 * i - 1)), [np.mean(v) for v in s.values()],
                        yerr=[np.std(v) for v in s.values()], fmt="o", capsize=3, color=f"C{i}",
                        label=name if boot is not None else f"{name} (one seed: no band)")
            inside = 2 ** grid <= sizes.max() * 1.0001
            ax.plot(2 ** grid[inside], a + b * grid[inside], color=f"C{i}", lw=1)
            ax.plot(2 ** grid[~inside], a + b * grid[~inside], color=f"C{i}", lw=1, ls=":")  # extrapolated
            if boot is not None:
                lo, hi = np.percentile(boot[1], [5, 95], axis=0)
                ax.fill_between(2 ** grid, lo, hi, color=f"C{i}", alpha=0.2)
        if metric.startswith("a2v") and chance is not None:
            ax.axhline(chance, ls="--", color="grey", lw=1, label=f"chance ({chance:.1f} %)")
        ax.set_xscale("log")
        ax.set_xticks([*measured, target], [str(n) for n in [*measured, target]])
        ax.minorticks_off()
        ax.set_xlabel("pretraining videos (log scale; dotted: extrapolated)")
        ax.set_ylabel(f"{metric} (%)")
        gain = fits.get((metric, "gain"))
        ax.set_title(metric if gain is None else
                     f"{metric}; gain {gain['slope']:+.2f} per doubling (90 %: {_interval(gain['slope_90'])})",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, tasks: list[str], retrieval: str, factor: float = 10.0, draws: int = 2000,
           seed: int = 0, av: str = AV, ao: str = AO) -> str:
    """Write ``out/scaling.md`` and ``out/scaling.png`` from ``out/sweeps/N``; returns the markdown."""
    sweeps, chance = {}, None
    for folder in sorted((p for p in (out / "sweeps").glob("*") if p.name.isdigit()), key=lambda p: int(p.name)):
        if (folder / "results.jsonl").is_file():
            sweeps[int(folder.name)], c = load_sweep(folder, tasks, retrieval)
            chance = c if c is not None else chance
    if not sweeps:
        raise SystemExit(f"no {out}/sweeps/N/results.jsonl yet: run the run step (or wait for a sweep's first cell)")
    target = round(factor * max(sweeps))
    found = f"chance {chance:.1f} %" if chance is not None else "none found"
    lines = [(f"# How the audio-visual gain grows with data\n\nSizes (videos): {', '.join(map(str, sweeps))}; "
              f"5-task mean over {', '.join(tasks)}; a2v top-5 on `{retrieval}` ({found}). Mean ± std over seeds "
              f"(ddof 0; n seeds); gain = {av} minus {ao}, seed by seed.")]
    panels, fits, sentences = [], {}, []
    for metric, label in (("mean", "5-task mean"), ("a2v_top5", "a2v top-5")):
        by_cell = {k: v for k, v in ((av, series(sweeps, av, metric)), (ao, series(sweeps, ao, metric)),
                                     ("gain", series(sweeps, av, metric, minus=ao))) if v}
        lines += [f"\n## {label} (%)\n", "| videos | " + " | ".join(by_cell) + " |", "|---|" + "---|" * len(by_cell)]
        lines += ["| " + " | ".join([str(n)] + [_ms(s[n]) if n in s else "-" for s in by_cell.values()]) + " |"
                  for n in sweeps]
        fitted = {k: s for k, s in by_cell.items() if len(s) >= 2}
        if fitted:
            lines += ["", f"| {label} | slope per doubling | 90 % interval | at {target} videos | 90 % interval |",
                      "|---|---|---|---|---|"]
        for name, s in fitted.items():
            res = fits[(label, name)] = analyse(s, target, draws, seed)
            lines.append(f"| {name} | {res['slope']:+.2f} | {_interval(res['slope_90'])} | {res['predicted']:.1f} | "
                         f"{_interval(res['predicted_90'], '+.1f' if name == 'gain' else '.1f')} |")
            unit = " points" if name == "gain" else " %"
            floor = chance if metric == "a2v_top5" and name != "gain" else None
            sentences.append(sentence(f"{label}, {name}", s, res, target, factor, unit, floor))
        if len(fitted) < len(by_cell) or not by_cell:
            lines.append(f"\n{label}: a line needs at least 2 sizes; " + (", ".join(
                k for k in by_cell if k not in fitted) or "no cell") + " has fewer.")
        fitted = {k: s for k, s in fitted.items() if k != "gain"}
        if fitted:
            panels.append((label, fitted))
    lines += [f"\n## What {factor:g}x more video predicts\n",
              *(f"- {s}" for s in sentences),
              (f"\nThe interval resamples the seeds within each size ({draws} draws); it holds the seed noise "
               "only, not the doubt that the trend stays log-linear beyond the sizes measured, and with few seeds it "
               "understates even that (it can only redraw the seeds it has).")]
    text = "\n".join(lines) + "\n"
    (out / "scaling.md").write_text(text)
    if panels:
        plot(panels, fits, target, chance, out / "scaling.png", draws, seed)
    return text


# ------------------------------------------------------------------------------------ command line


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    if len(sizes) < 1 or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive integers, got {text!r}")
    return sizes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("subsets", "run", "report", "all"), help="what to do (see below)")
    p.add_argument("--out", type=Path, default=Path("sweeps/scaling"),
                   help="folder of lists/, shards/N/, sweeps/N/, scaling.md, scaling.png (default sweeps/scaling)")
    g = p.add_argument_group("subsets")
    g.add_argument("--list", type=Path, default=None,
                   help="list file of the pretraining videos (default: DATA_ROOT/avepm/pretrain.txt, DATA_ROOT = "
                   "--data-root, else $AVSSL_SHARED_DATA, else ../shared/data beside the repository)")
    g.add_argument("--sizes", type=_sizes, default=[64, 128, 258],
                   help="comma-separated numbers of videos, nested (default 64,128,258: 258 = all of pretrain.txt)")
    g.add_argument("--seed", type=int, default=0, help="seed of the one order the subsets are prefixes of (default 0)")
    g.add_argument("--labels", type=Path, default=None,
                   help="CSV with path,label columns to stratify by (default: labels.csv beside the list file, if "
                   "there and naming every listed file; else a plain permutation)")
    g = p.add_argument_group("run (ingest, then sweep, per size)")
    g.add_argument("--ingest-config", default="tiny", help="avssl ingest --config (default tiny)")
    g.add_argument("--ingest-set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"avssl ingest --set after the defaults {' '.join(INGEST_SET)} (a later key wins); repeatable")
    g.add_argument("--recipe", default="scaling",
                   help="sweep recipe with the two cells (default scaling: src/avssl/configs/recipes/scaling.yaml)")
    g.add_argument("--audio-visual", nargs="+", default=[], metavar="KEY=VALUE",
                   help="instead of --recipe: the audio-visual cell's overrides, e.g. 'model.views=[spec,video]' "
                   "'loss.pairs=[spec-video,spec-spec]' (written to OUT/recipe.yaml with --audio-only; "
                   "give the step first)")
    g.add_argument("--audio-only", nargs="+", default=[], metavar="KEY=VALUE", help="the audio-only twin's overrides")
    g.add_argument("--tasks", default=TASKS, help=f"evaluation tasks (default {TASKS})")
    g.add_argument("--seeds", type=int, default=3, help="pretraining seeds per cell and size (default 3)")
    g.add_argument("--probe-seeds", type=int, default=1, help="probe seeds per fold (default 1)")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads per sweep (default 1)")
    g.add_argument("--steps", type=int, default=1000, help="train.steps, the same at every size (default 1000)")
    g.add_argument("--sweep-set", action="append", default=[], metavar="KEY=VALUE", help="more avssl sweep --set")
    g.add_argument("--retrieval", default="avepm", help="held-out retrieval set (default avepm: the AVE-PM test clips)")
    g.add_argument("--data-root", type=Path, default=None, help="avssl sweep --data-root (task datasets)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the ingest and sweep commands without running them (the subsets step still writes "
                   "its lists: they are cheap and the commands name them)")
    g = p.add_argument_group("report")
    g.add_argument("--factor", type=float, default=10.0, help="extrapolate to this many times the largest size (10)")
    g.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default 2000)")
    g.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    g.add_argument("--av-cell", default=AV, help=f"name of the audio-visual cell in the sweeps (default {AV})")
    g.add_argument("--ao-cell", default=AO, help=f"name of the audio-only cell in the sweeps (default {AO})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.step in ("subsets", "all"):
        if args.list is None:
            from avssl.evaluate.tasks import default_data_root

            args.list = (args.data_root or default_data_root()) / "avepm" / "pretrain.txt"
        labels = args.labels or args.list.parent / "labels.csv"
        write_subsets(args.list, args.sizes, args.out, args.seed, labels)
    status = run_sizes(args) if args.step in ("run", "all") else 0
    if args.step == "report" or (args.step == "all" and not args.dry_run):
        print(report(args.out, args.tasks.split(","), args.retrieval, args.factor, args.draws, args.bootstrap_seed,
                     args.av_cell, args.ao_cell))
        print(f"wrote {args.out / 'scaling.md'} and {args.out / 'scaling.png'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
