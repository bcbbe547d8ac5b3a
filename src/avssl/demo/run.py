"""``avssl demo``: the whole method end to end, and the proof that the video helped.

:func:`run_demo_pipeline` generates the built-in audio-visual world (:mod:`avssl.demo.synthetic`) or
takes the user's videos, ingests them (:func:`avssl.ingest.run.ingest`), pretrains twice for the same
number of optimizer steps, with the same batch size, data and seed (:func:`avssl.train.pretrain.pretrain`): (a) audio-visual (spec, wave and video towers,
all three pairs) and (b) audio-only multi-format (spec-wave), both with the same augmentation
and mixing, so the only difference is the video. The budget is steps, never seconds: the same
command gives the same numbers on an idle and on a busy machine; time and counted FLOPs are
reported beside the results (:mod:`avssl.train.flops`). Then it evaluates (a), (b), a random-init model
of (a)'s architecture and the ``logmel-stats`` baseline with the linear-probe protocol of
:func:`avssl.evaluate.run.evaluate` on the held-out clips (a ``csv:`` task on the world's
``labels.csv``), measures audio-to-video retrieval on the held-out clips, and writes a report
folder. With ``videos`` (no labels) the probe is skipped and retrieval runs on the ingested clips.

Report folder ``<out>/report``: ``summary.md``, ``results.json``, ``curves.png`` (training
losses from ``metrics.jsonl``), ``probe.png`` (probe accuracy per model), ``retrieval.png``
(audio queries and the frames of the videos they retrieve), ``configs/`` (the resolved configs
of both runs and the world's ``world.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from avssl.config import Config, apply_overrides, load_config
from avssl.overrides import parse_set
from avssl.demo.report import demo_plots, results_table, summary_markdown
from avssl.data.shards import read_clips

log = logging.getLogger(__name__)

# Steps of each pretraining run: projected from earlier idle step rates to take about 9 minutes in all on
# an idle 2-core machine (docs/demo.md). Time never decides how long a model trains.
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


# ------------------------------------------------------------------------------------ pipeline


def _pretrain_runs(cfgs: dict[str, Config], shards: Path, runs_dir: Path, progress: bool) -> dict[str, dict[str, Any]]:
    """Pretrain every config for its ``train.steps``; each run's steps, counted GFLOPs, seconds and final loss."""
    from avssl.checkpoint import load_checkpoint
    from avssl.train.flops import train_step_flops
    from avssl.train.pretrain import pretrain, read_metrics

    out = {}
    for name, cfg in cfgs.items():
        folder = runs_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        log.info("pretraining %s for %d steps (%s)", name, cfg.train.steps, ", ".join(cfg.loss.pairs))
        t0 = time.perf_counter()
        ckpt = pretrain(cfg, shards, folder, progress=progress)
        rows = read_metrics(folder)
        steps = int(load_checkpoint(ckpt)["step"])
        gflops = train_step_flops(cfg)["gflops_per_step"]
        out[name] = {"checkpoint": ckpt, "folder": folder, "seconds": time.perf_counter() - t0, "steps": steps,
                     "gflops_per_step": gflops, "tflops": gflops * steps / 1e3,
                     "final_loss": rows[-1]["loss"] if rows else float("nan")}
    return out


def _world_labels(world: Path, clips: list) -> list[str]:
    """The label of each ingested clip, matched through its source path to ``labels.csv``."""
    from avssl.demo.synthetic import read_labels

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
    ``sound_bank``: real recordings as the world's class audio (see :mod:`avssl.demo.synthetic`).
    ``world``: overrides of :data:`WORLD` (``num_classes``, ``clips_per_class``, ``seconds``,
    ``size``, ``fps``). ``overrides``: ``--set``-style ``a.b=c`` strings applied to both runs.
    """
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    out, timings = Path(out), {}
    report = out / "report"
    (report / "configs").mkdir(parents=True, exist_ok=True)
    world_args = {**WORLD, **(world or {})}
    cfgs = demo_configs(seed, world_args["seconds"] if videos is None else 3.0, overrides, steps)
    with _timed(timings, "generate"):  # 1. the data: the synthetic world (train/test split) or the user's videos
        world_dir, train_inputs, test_inputs = _demo_data(out, videos, world_args, seed, sound_bank,
                                                          cfgs["audio-visual"].audio.sample_rate, progress)
    with _timed(timings, "ingest"):  # 2. the real path: decode, resample, downscale, shard
        manifest, test_data_shards = _ingest_splits(out / "shards", train_inputs, test_inputs, cfgs["audio-visual"], progress)
    with _timed(timings, "pretrain"):  # 3. pretrain (a) and (b) for the same number of steps
        runs = _pretrain_runs(cfgs, out / "shards" / "train", out / "runs", progress)
    _copy_configs(runs, report / "configs")
    with _timed(timings, "probe"):  # 4. linear probe on held-out clips (labelled world only)
        probe_rows = [] if world_dir is None else _probe_runs(runs, world_dir, out / "eval", probe_seeds, progress)
    with _timed(timings, "retrieval"):  # 5. audio -> video retrieval with (a), and its random-init twin
        clips = read_clips(test_data_shards)
        labels = _world_labels(world_dir, clips) if world_dir is not None else None
        retrieval_rows = _retrieval_runs(runs["audio-visual"]["checkpoint"], clips, labels)
    plots = demo_plots(report, runs, clips, retrieval_rows["audio-visual"], labels, probe_rows)  # 6. the report
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


def _copy_configs(runs: dict[str, dict[str, Any]], folder: Path) -> None:
    """Each run's resolved ``config.yaml`` as ``folder/<run name>.yaml``."""
    for name, run in runs.items():
        shutil.copy(run["folder"] / "config.yaml", folder / f"{name}.yaml")


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block takes as ``timings[name]``."""
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def _demo_data(out: Path, videos: str | Path | None, world_args: dict[str, Any], seed: int,
               sound_bank: str | Path | None, sample_rate: int, progress: bool) -> tuple[Path | None, list[Path], list[Path] | None]:
    """``(world folder or None, training inputs, held-out inputs or None)``: the synthetic world generated
    into ``out/world`` (its ``world.json`` copied to ``out/report/configs``), or the user's ``videos`` folder."""
    if videos is None:
        from avssl.demo.synthetic import generate_world

        world_dir = generate_world(out / "world", seed=seed, sound_bank=sound_bank, progress=progress,
                                   num_classes=world_args["num_classes"], clips_per_class=world_args["clips_per_class"],
                                   seconds=world_args["seconds"], size=world_args["size"], fps=world_args["fps"],
                                   sample_rate=sample_rate)
        shutil.copy(world_dir / "world.json", out / "report" / "configs" / "world.json")
        return world_dir, [world_dir / "train"], [world_dir / "test"]
    videos = Path(videos)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos} is not a folder; pass a folder of video files with sound")
    return None, [videos], None


def _ingest_splits(shards: Path, train_inputs: list[Path], test_inputs: list[Path] | None, cfg: Config,
                   progress: bool) -> tuple[dict[str, Any], Path]:
    """Ingest the training inputs into ``shards/train`` and the held-out ones into ``shards/test``; returns the
    training manifest and the held-out shard folder (the training one when there are no held-out inputs)."""
    from avssl.ingest.run import ingest

    manifest = ingest(train_inputs, shards / "train", cfg, progress=progress)
    if manifest.get("total_samples", 0) == 0:
        raise RuntimeError(f"ingest of {train_inputs[0]} produced no clips; see {shards / 'train'}/manifest.json")
    if test_inputs is None:
        return manifest, shards / "train"
    ingest(test_inputs, shards / "test", cfg, progress=progress)
    return manifest, shards / "test"


def _probe_runs(runs: dict[str, dict[str, Any]], world_dir: Path, out: Path, probe_seeds: int,
                progress: bool) -> list[dict]:
    """Linear probes (:func:`avssl.evaluate.run.evaluate` into ``out``) of (a), (b), (a)'s random-init twin and
    ``logmel-stats`` on the world's held-out clips; one row per model with the accuracy's mean, std and chance."""
    from avssl.evaluate.run import evaluate

    ckpt_av = str(runs["audio-visual"]["checkpoint"])
    specs = {"audio-visual": ckpt_av, "audio-only": str(runs["audio-only"]["checkpoint"]),
             "random-init": f"random-init:{ckpt_av}", "logmel-stats": "logmel-stats"}
    records = evaluate(list(specs.values()), [f"csv:{world_dir / 'labels.csv'}"], None, out,
                       seeds=probe_seeds, progress=progress)
    by_spec = {r["model"]: r for r in records}
    return [{"name": name, "model": spec, "mean": by_spec[spec]["mean"], "std": by_spec[spec]["std"],
             "chance": by_spec[spec]["chance"]} for name, spec in specs.items()]


def _retrieval_runs(checkpoint: Path, clips: list, labels: list[str] | None) -> dict[str, dict[str, Any]]:
    """:func:`retrieval` among ``clips`` with the checkpoint's model (``audio-visual``) and with a seed-0
    random init of its architecture (``random-init``)."""
    from avssl.checkpoint import model_from_checkpoint, random_model
    from avssl.train.retrieval import retrieval

    model, cfg_run = model_from_checkpoint(checkpoint)
    return {
        "audio-visual": retrieval(model, cfg_run, clips, labels=labels),
        "random-init": retrieval(random_model(cfg_run, 0), cfg_run, clips, labels=labels),
    }


# ------------------------------------------------------------------------------------ CLI


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("avssl-demo"), help="output folder (default: avssl-demo)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps of each pretraining run (default {DEFAULT_STEPS}: about 5 minutes in all "
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
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (world, ingest, pretraining, probes)")


def run_demo(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            print(f"avssl demo: {args.out} exists and is not empty; pass --force to replace it or choose another --out")
            return 2
        shutil.rmtree(args.out)
    results = run_demo_pipeline(
        args.out, args.steps, args.seed, args.videos, sound_bank=args.sound_bank, overrides=args.overrides,
        world={"num_classes": args.classes, "clips_per_class": args.clips_per_class, "seconds": args.seconds},
        probe_seeds=args.probe_seeds, progress=not args.no_progress,
    )
    print()
    print(results_table(results))
    print(f"\nreport: {args.out / 'report' / 'summary.md'} ({results['timings_seconds']['total']:.0f} s)")
    return 0
