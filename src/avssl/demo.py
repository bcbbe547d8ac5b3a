"""``avssl demo``: the whole method end to end, and the proof that the video helped.

:func:`run_demo_pipeline` generates the built-in audio-visual world (:mod:`avssl.synthetic`) or
takes the user's videos, ingests them (:func:`avssl.ingest.ingest`), pretrains twice for the same
number of optimizer steps, with the same batch size, data and seed (:func:`avssl.train.pretrain`): (a) audio-visual (spec, wave and video towers,
all three pairs) and (b) audio-only multi-format (spec-wave), both with the same augmentation
and mixing, so the only difference is the video. The budget is steps, never seconds: the same
command gives the same numbers on an idle and on a busy machine; time and counted FLOPs are
reported beside the results (:mod:`avssl.flops`). Then it evaluates (a), (b), a random-init model
of (a)'s architecture and the ``logmel-stats`` baseline with the linear-probe protocol of
:func:`avssl.evaluate.evaluate` on the held-out clips (a ``csv:`` task on the world's
``labels.csv``), measures audio-to-video retrieval on the held-out clips, and writes a report
folder. With ``videos`` (no labels) the probe is skipped and retrieval runs on the ingested clips.

Report folder ``<out>/report``: ``summary.md``, ``results.json``, ``curves.png`` (training
losses from ``metrics.jsonl``), ``probe.png`` (probe accuracy per model), ``retrieval.png``
(audio queries and the frames of the videos they retrieve), ``configs/`` (the resolved configs
of both runs and the world's ``world.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, apply_overrides, load_config, parse_set

log = logging.getLogger(__name__)

# Steps of each pretraining run: chosen by measurement so the whole demo takes about 10 minutes on an
# idle 2-core machine (docs/demo.md). Time never decides how long a model trains.
DEFAULT_STEPS = 600
WORLD = {"num_classes": 8, "clips_per_class": 40, "seconds": 3.0, "size": 32, "fps": 8.0}
BASE_OVERRIDES: dict[str, Any] = {
    "video": {"size": 32, "fps": 8.0},
    "ingest": {"samples_per_shard": 64, "workers": 2, "min_seconds": 1.0},
    "model": {"preset": "tiny", "embed_dim": 64},
    "data": {"crop_seconds": 1.0, "batch_size": 32, "num_workers": 1, "shuffle_buffer": 128},
    "optim": {"lr": 2e-3, "warmup_steps": 10},
    "train": {"steps": DEFAULT_STEPS, "log_every": 10, "ckpt_every": 100000},
}
RUNS = {
    "audio-visual": {"model": {"views": ["spec", "wave", "video"]},
                     "loss": {"pairs": ["spec-video", "wave-video", "spec-wave"]}},
    "audio-only": {"model": {"views": ["spec", "wave"]}, "loss": {"pairs": ["spec-wave"]}},
}
RETRIEVAL_EXAMPLES = 6


def demo_configs(seed: int, clip_seconds: float, overrides: list[str] | None = None,
                 steps: int = DEFAULT_STEPS) -> dict[str, Config]:
    """The resolved config of each run: the ``small`` preset, the demo's sizes, ``steps`` optimizer
    steps (warm-up: a fifth of them at most), the run's views, then the user's ``--set`` overrides
    (applied to both runs)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = load_config("small", BASE_OVERRIDES)
    base = apply_overrides(base, {"ingest": {"clip_seconds": clip_seconds}, "train": {"seed": seed, "steps": steps},
                                  "optim": {"warmup_steps": min(base.optim.warmup_steps, steps // 5)}})
    base = apply_overrides(base, {"data": {"crop_seconds": min(base.data.crop_seconds, clip_seconds)}})
    user = parse_set(overrides or [])
    return {name: apply_overrides(apply_overrides(base, run), user) for name, run in RUNS.items()}


# ------------------------------------------------------------------------------------ retrieval


def read_clips(shard_folder: str | Path) -> list:
    """Every sample of a shard folder as :class:`avssl.shards.Clip`, in shard order."""
    import webdataset as wds

    from .data import resolve_shards
    from .shards import decode_sample

    urls = resolve_shards(shard_folder).urls
    return [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


@torch.no_grad()
def retrieval(model: torch.nn.Module, cfg: Config, clips: list, *, labels: list[str] | None = None, seed: int = 0,
              batch_size: int = 32) -> dict[str, Any]:
    """Audio-to-video retrieval among ``clips``: each clip's audio (``spec`` view) queries all videos.

    Each clip contributes one seeded, aligned ``cfg.data.crop_seconds`` crop (audio and the frames
    shown in it). Returns ``top1``/``top5`` (share of queries whose own video ranks first / in the
    first five), ``class_top1`` (the first video has the query's label; with ``labels``),
    ``chance_top1``/``chance_top5``, ``ranks int[N]``, ``similarity float32[N, N]`` (cosine).
    """
    from .data import crop_clip

    sr, fps, crop = cfg.audio.sample_rate, cfg.video.fps, cfg.data.crop_seconds
    model.eval()
    audio_emb, video_emb = [], []
    for i in range(0, len(clips), batch_size):
        crops = [crop_clip(c.audio, c.frames, crop, sr, fps, np.random.default_rng([seed, i + j]))
                 for j, c in enumerate(clips[i : i + batch_size])]
        audio = torch.from_numpy(np.stack([a for a, _ in crops]))
        frames = torch.from_numpy(np.stack([f for _, f in crops])).permute(0, 1, 4, 2, 3)
        emb = model(audio, frames)
        audio_emb.append(torch.nn.functional.normalize(emb["spec"].float(), dim=-1))
        video_emb.append(torch.nn.functional.normalize(emb["video"].float(), dim=-1))
    sim = (torch.cat(audio_emb) @ torch.cat(video_emb).T).numpy()
    n = len(clips)
    ranks = (sim >= sim[np.arange(n), np.arange(n)][:, None]).sum(1) - 1  # ties count against the query
    out = {"top1": float(np.mean(ranks == 0)), "top5": float(np.mean(ranks < 5)), "chance_top1": 1.0 / n,
           "chance_top5": min(5, n) / n, "num_clips": n, "ranks": ranks, "similarity": sim.astype(np.float32)}
    if labels is not None:
        lab = np.asarray(labels)
        out["class_top1"] = float(np.mean(lab[sim.argmax(1)] == lab))
        out["chance_class_top1"] = float(np.mean([np.mean(lab == x) for x in lab]))
    return out


# ------------------------------------------------------------------------------------ plots


def _metrics(run_folder: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (empty when the run stopped before its first log step)."""
    path = run_folder / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _plot_curves(runs: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, folder) in zip(axes[0], runs.items()):
        rows = _metrics(folder)
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


# ------------------------------------------------------------------------------------ pipeline


def _pretrain_runs(cfgs: dict[str, Config], shards: Path, runs_dir: Path, progress: bool) -> dict[str, dict[str, Any]]:
    """Pretrain every config for its ``train.steps``; each run's steps, counted GFLOPs, seconds and final loss."""
    from .checkpoint import load_checkpoint
    from .flops import train_step_flops
    from .train import pretrain

    out = {}
    for name, cfg in cfgs.items():
        folder = runs_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        log.info("pretraining %s for %d steps (%s)", name, cfg.train.steps, ", ".join(cfg.loss.pairs))
        t0 = time.perf_counter()
        ckpt = pretrain(cfg, shards, folder, progress=progress)
        rows = _metrics(folder)
        steps = int(load_checkpoint(ckpt)["step"])
        gflops = train_step_flops(cfg)["gflops_per_step"]
        out[name] = {"checkpoint": ckpt, "folder": folder, "seconds": time.perf_counter() - t0, "steps": steps,
                     "gflops_per_step": gflops, "tflops": gflops * steps / 1e3,
                     "final_loss": rows[-1]["loss"] if rows else float("nan")}
    return out


def _world_labels(world: Path, clips: list) -> list[str]:
    """The label of each ingested clip, matched through its source path to ``labels.csv``."""
    from .synthetic import read_labels

    by_path = {Path(r["path"]).resolve(): r["label"] for r in read_labels(world)}
    return [by_path[Path(c.meta["source"]).resolve()] for c in clips]


def run_demo_pipeline(
    out: str | Path,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    videos: str | Path | None = None,
    *,
    sound_bank: str | Path | None = None,
    world: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    probe_seeds: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; return the results (also written to ``out/report/results.json``).

    ``steps``: optimizer steps of each pretraining run (same batch size, data and seed). ``seed`` seeds the world, the models and the crops. ``videos``: a folder of
    the user's own videos instead of the synthetic world (no labels: losses and retrieval only).
    ``sound_bank``: real recordings as the world's class audio (see :mod:`avssl.synthetic`).
    ``world``: overrides of :data:`WORLD` (``num_classes``, ``clips_per_class``, ``seconds``,
    ``size``, ``fps``). ``overrides``: ``--set``-style ``a.b=c`` strings applied to both runs.
    """
    from .ingest import ingest

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    out = Path(out)
    report = out / "report"
    (report / "configs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    world_args = {**WORLD, **(world or {})}
    cfgs = demo_configs(seed, world_args["seconds"] if videos is None else 3.0, overrides, steps)
    cfg_av = cfgs["audio-visual"]

    # 1. the data: the synthetic world (train/test split) or the user's videos
    t0 = time.perf_counter()
    if videos is None:
        from .synthetic import generate_world

        world_dir = generate_world(out / "world", seed=seed, sound_bank=sound_bank, progress=progress,
                                   num_classes=world_args["num_classes"], clips_per_class=world_args["clips_per_class"],
                                   seconds=world_args["seconds"], size=world_args["size"], fps=world_args["fps"],
                                   sample_rate=cfg_av.audio.sample_rate)
        shutil.copy(world_dir / "world.json", report / "configs" / "world.json")
        train_inputs, test_inputs = [world_dir / "train"], [world_dir / "test"]
    else:
        videos = Path(videos)
        if not videos.is_dir():
            raise FileNotFoundError(f"--videos {videos} is not a folder; pass a folder of video files with sound")
        world_dir, train_inputs, test_inputs = None, [videos], None
    timings["generate"] = time.perf_counter() - t0

    # 2. ingest (the real path: decode, resample, downscale, shard)
    t0 = time.perf_counter()
    manifest = ingest(train_inputs, out / "shards" / "train", cfg_av, progress=progress)
    if manifest.get("total_samples", 0) == 0:
        raise RuntimeError(f"ingest of {train_inputs[0]} produced no clips; see {out / 'shards' / 'train'}/manifest.json")
    test_shards = out / "shards" / "test"
    if test_inputs is not None:
        ingest(test_inputs, test_shards, cfg_av, progress=progress)
    else:
        test_shards = out / "shards" / "train"
    timings["ingest"] = time.perf_counter() - t0

    # 3. pretrain (a) and (b) for the same number of steps
    t0 = time.perf_counter()
    runs = _pretrain_runs(cfgs, out / "shards" / "train", out / "runs", progress)
    timings["pretrain"] = time.perf_counter() - t0
    for name, run in runs.items():
        shutil.copy(run["folder"] / "config.yaml", report / "configs" / f"{name}.yaml")

    # 4. linear probe on held-out clips (labelled world only)
    probe_rows: list[dict] = []
    t0 = time.perf_counter()
    if world_dir is not None:
        from .evaluate import evaluate

        ckpt_av = str(runs["audio-visual"]["checkpoint"])
        specs = {"audio-visual": ckpt_av, "audio-only": str(runs["audio-only"]["checkpoint"]),
                 "random-init": f"random-init:{ckpt_av}", "logmel-stats": "logmel-stats"}
        records = evaluate(list(specs.values()), [f"csv:{world_dir / 'labels.csv'}"], None, out / "eval",
                           seeds=probe_seeds, progress=progress)
        by_spec = {r["model"]: r for r in records}
        probe_rows = [{"name": name, "model": spec, "mean": by_spec[spec]["mean"], "std": by_spec[spec]["std"],
                       "chance": by_spec[spec]["chance"]} for name, spec in specs.items()]
    timings["probe"] = time.perf_counter() - t0

    # 5. audio -> video retrieval with (a), and with its random-init twin as the reference
    t0 = time.perf_counter()
    clips = read_clips(test_shards)
    labels = _world_labels(world_dir, clips) if world_dir is not None else None
    from .checkpoint import model_from_checkpoint, random_model

    model, cfg_run = model_from_checkpoint(runs["audio-visual"]["checkpoint"])
    retrieval_rows = {
        "audio-visual": retrieval(model, cfg_run, clips, labels=labels, seed=seed),
        "random-init": retrieval(random_model(cfg_run, 0), cfg_run, clips, labels=labels, seed=seed),
    }
    timings["retrieval"] = time.perf_counter() - t0

    # 6. report
    plots = {"curves": _plot_curves({n: r["folder"] for n, r in runs.items()}, report / "curves.png"),
             "retrieval": _plot_retrieval(clips, retrieval_rows["audio-visual"], labels, report / "retrieval.png")}
    if probe_rows:
        plots["probe"] = _plot_probe(probe_rows, report / "probe.png")
    timings["total"] = time.perf_counter() - t_start
    results = {
        "seed": seed, "steps": steps, "videos": str(videos) if videos is not None else None,
        "world": None if world_dir is None else {**world_args, "sound_bank": str(sound_bank) if sound_bank else None,
                                                  "path": str(world_dir)},
        "num_train_clips": int(manifest["total_samples"]), "num_test_clips": len(clips),
        "pretrain": {n: {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for n, r in runs.items()},
        "probe": probe_rows,
        "retrieval": {n: {k: v for k, v in r.items() if k not in ("ranks", "similarity")}
                      for n, r in retrieval_rows.items()},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": round(load_start, 2), "load_average_end": round(os.getloadavg()[0], 2)},
        "plots": {k: v.name for k, v in plots.items()},
    }
    (report / "results.json").write_text(json.dumps(results, indent=2))
    (report / "summary.md").write_text(summary_markdown(results))
    log.info("demo finished in %.0f s; report in %s", timings["total"], report)
    return results


# ------------------------------------------------------------------------------------ text


def results_table(results: dict[str, Any]) -> str:
    """The short table printed at the end: probe accuracy and retrieval per model."""
    ret = results["retrieval"]
    probe = {r["name"]: r for r in results["probe"]}
    names = list(dict.fromkeys([*probe, *ret]))
    lines = ["| model | probe accuracy (%) | retrieval top-1 (%) | retrieval top-5 (%) |", "|---|---|---|---|"]
    for name in names:
        p = f"{100 * probe[name]['mean']:.1f} ± {100 * probe[name]['std']:.1f}" if name in probe else "-"
        r1 = f"{100 * ret[name]['top1']:.1f}" if name in ret else "-"
        r5 = f"{100 * ret[name]['top5']:.1f}" if name in ret else "-"
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
        "held-out clips (avssl.evaluate protocol, mean ± std over seeds). Retrieval: each "
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
    lines.append("FLOPs: matmuls and convolutions of forward + backward, counted from the model (avssl.flops).")
    lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in results["plots"].items()]
    lines += ["", "Configs used: `configs/` (resolved YAML of each run" + (", world.json" if w else "") + ")."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CLI


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("avssl-demo"), help="output folder (default: avssl-demo)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps of each pretraining run (default {DEFAULT_STEPS}: about 10 minutes in all "
                        "on an idle 2-core machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=Path, default=None,
                        help="your own videos (a folder) instead of the synthetic world: losses and retrieval only")
    parser.add_argument("--sound-bank", type=Path, default=None,
                        help="folder with one subfolder of real recordings per class, used as the classes' sounds")
    parser.add_argument("--classes", type=int, default=WORLD["num_classes"], help="synthetic world: classes")
    parser.add_argument("--clips-per-class", type=int, default=WORLD["clips_per_class"])
    parser.add_argument("--seconds", type=float, default=WORLD["seconds"], help="synthetic world: clip length")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="config override for both pretraining runs (repeatable)")
    parser.add_argument("--probe-seeds", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="delete --out first if it exists")


def run_demo(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            print(f"avssl demo: {args.out} exists and is not empty; pass --force to replace it or choose another --out")
            return 2
        shutil.rmtree(args.out)
    results = run_demo_pipeline(
        args.out, args.steps, args.seed, args.videos, sound_bank=args.sound_bank, overrides=args.overrides,
        world={"num_classes": args.classes, "clips_per_class": args.clips_per_class, "seconds": args.seconds},
        probe_seeds=args.probe_seeds,
    )
    print()
    print(results_table(results))
    print(f"\nreport: {args.out / 'report' / 'summary.md'} ({results['timings_seconds']['total']:.0f} s)")
    return 0
