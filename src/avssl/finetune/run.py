"""``avssl finetune``: a pretrained (or random-init) audio tower trained end to end with a linear head on a labelled
task, into one self-contained classifier model file (``OUT/model.pt``, :func:`avssl.finetune.classifier.load_classifier`).

The recipe (every setting in the typed ``finetune`` config section, :class:`avssl.config.FinetuneConfig`;
docs/finetune.md): AdamW with the tower at ``lr * tower_lr_scale`` and the head at ``lr``, linear warm-up and
cosine decay over the epoch budget; each step draws a batch from seeded permutations of the training clips, cuts
a random window of each (the embedding window), mixes the batch with mixup and masks spectrogram stripes;
after each epoch the classifier scores the validation clips exactly as it will score new files (every window,
:class:`avssl.finetune.classifier.Classifier`), and the best epoch is kept (early stopping after ``patience`` epochs without
a gain). At the end the best epoch is written as ``model.pt`` and scored on the test clips (``results.json``).

The run folder holds ``config.yaml``, ``metrics.jsonl`` (one row per epoch), ``skipped.jsonl`` (clips that could not
be decoded), ``checkpoint.pt`` (every epoch and on SIGTERM/SIGINT, atomic, the previous kept as
``checkpoint-prev.pt``), then ``model.pt`` and ``results.json``. ``resume=True`` continues exactly where the
checkpoint stopped: a killed and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avssl.atomic import write_text
from avssl.checkpoint import (CHECKPOINT, CheckpointError, architecture_config, load_checkpoint, load_for_resume,
                         random_model, save_classifier, save_rotating, tower_state)
from avssl.config import Config, ConfigError, FinetuneConfig, apply_overrides, preset_path, save_config
from avssl.overrides import parse_set
from avssl.finetune.data import Split, batch_indices, decode_examples, pick_fold, random_crops, split_task
from avssl.finetune.finetuner import Finetuner
from avssl.evaluate.probe import classification_metrics
from avssl.evaluate.tasks import default_data_root, load_task
from avssl.train.pretrain import MetricsWriter, stop_on_signals

log = logging.getLogger(__name__)

MODEL_FILE, RESULTS_FILE = "model.pt", "results.json"
TUNABLE = ("finetune", "embed")  # the config sections a fine-tuning run may change (the rest is the checkpoint's)


# ---------------------------------------------------------------------------------------- config and start


def tuning_overrides(config: str | None, sets: list[str]) -> dict[str, Any]:
    """The ``finetune``/``embed`` sections of a preset or YAML file plus ``--set`` overrides; other keys are refused
    (the architecture and front-end are the checkpoint's)."""
    import yaml

    out: dict[str, Any] = {}
    if config:
        out = {k: v for k, v in (yaml.safe_load(preset_path(config).read_text()) or {}).items() if k in TUNABLE}
    for key, value in parse_set(sets).items():
        if key not in TUNABLE:
            raise ConfigError(f"--set {key}.*: a fine-tuning run takes its architecture and front-end from the "
                              f"checkpoint; only {', '.join(s + '.*' for s in TUNABLE)} can be set")
        out[key] = {**out.get(key, {}), **value}
    return out


def starting_point(spec: str, overrides: dict[str, Any]) -> tuple[Config, nn.Module]:
    """``(config, tower)`` from a checkpoint path or ``random-init:PRESET_OR_CKPT`` (the architecture untrained,
    initialised with ``finetune.seed``), with ``overrides`` applied to its config."""
    if spec.startswith("random-init:"):
        cfg, state = architecture_config(spec.split(":", 1)[1]), None
    else:
        state = load_checkpoint(spec)
        cfg = Config.from_dict(state["config"])
    cfg = apply_overrides(cfg, overrides)
    view = cfg.finetune.view
    if view not in cfg.model.views:
        raise ConfigError(f"{spec}: the model has views {cfg.model.views}, not finetune.view={view!r}")
    tower = random_model(cfg, cfg.finetune.seed, views=[view]).towers[view]
    if state is not None:
        tower.load_state_dict(tower_state(state, view))
    return cfg, tower


# ---------------------------------------------------------------------------------------- the run


def finetune(start: str, task_name: str, out: str | Path, *, data_root: str | Path | None = None,
             fold: str | None = None, config: str | None = None, sets: list[str] | None = None,
             seed: int | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``start`` (a checkpoint or ``random-init:PRESET_OR_CKPT``) on ``task_name`` (any task ``avssl eval``
    accepts) into the run folder ``out``; returns the results (also ``out/results.json``). ``config`` / ``sets``:
    the ``finetune`` and ``embed`` settings (a preset or YAML file, ``section.key=value`` strings); ``seed``
    overrides ``finetune.seed``. ``fold``: which of the task's folds (default its first)."""
    out = Path(out)
    overrides = tuning_overrides(config, list(sets or []))
    if seed is not None:
        overrides.setdefault("finetune", {})["seed"] = int(seed)
    if (out / MODEL_FILE).exists() and (out / RESULTS_FILE).exists():
        if resume:
            log.info("%s is finished: %s", out, out / MODEL_FILE)
            return json.loads((out / RESULTS_FILE).read_text())
        raise CheckpointError(f"{out} already holds a finished run ({MODEL_FILE}); choose another --out")
    state = load_for_resume(out) if resume else None
    if not resume and (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out} already holds {CHECKPOINT}; pass --resume to continue it or choose another --out")
    cfg, tower = starting_point(start, overrides)
    fc = cfg.finetune
    task, split, clips, skipped = _labelled_clips(task_name, data_root, fold, fc, cfg.audio.sample_rate, progress)
    n = len(split.train)
    steps_per_epoch = max(math.ceil(n / fc.batch_size), fc.min_epoch_steps)
    torch.manual_seed(fc.seed)  # dropout and mixup's Beta draws (saved in checkpoints)
    run = Finetuner(cfg, tower, task.classes, task.multilabel, steps_per_epoch)
    book = {"step": 0, "best": None, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "loss_sum": 0.0,
            "early_stop": False, "seconds": 0.0}
    if state is not None:
        run.load_weights(state["model_parts"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        book = state["book"]
        log.info("resumed %s at step %d", out, book["step"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_text(out / "skipped.jsonl", "".join(json.dumps(r) + "\n" for r in skipped))
    log.info("finetune %s on %s (%s): %d train / %d valid / %d test clips, %d epochs of %d steps", start, task.name,
             pick_fold(task, fold).name, n, len(split.valid), len(split.test), fc.epochs, steps_per_epoch)
    train_clips = [clips[int(i)] for i in split.train]
    if state is None:
        run.estimate_bn_stats(train_clips, run.embedder.window)
    y_all = task.targets()
    stopped = _train(run, book, out, task, train_clips, y_all[split.train], [clips[int(i)] for i in split.valid],
                     y_all[split.valid], progress)
    if stopped:
        log.warning("stopped at step %d of %d (%s); continue with --resume", book["step"], run.total_steps, stopped)
        return {"stopped": stopped, "step": book["step"]}
    return _finish(run, book, task, split, clips, skipped, cfg, start, out, fold)


def _labelled_clips(task_name: str, data_root, fold: str | None, fc: FinetuneConfig, sample_rate: int, progress: bool
                    ) -> tuple[Any, Split, dict[int, np.ndarray], list[dict]]:
    """The task, its split (less the clips that could not be decoded), every used clip's audio by example index,
    and the skipped clips."""
    task = load_task(task_name, data_root if data_root is not None else default_data_root())
    split = split_task(task, fold, fc)
    wanted = np.concatenate([split.train, split.valid, split.test])
    audio, skipped = decode_examples([task.examples[i] for i in wanted], sample_rate, progress)
    clips = {int(wanted[j]): a for j, a in audio.items()}
    split = Split(*(np.array([i for i in s if int(i) in clips], np.int64) for s in (split.train, split.valid, split.test)))
    _check_split(task, split, skipped)
    return task, split, clips, skipped


def _train(run: Finetuner, book: dict, out: Path, task, train_clips: list[np.ndarray], train_y: np.ndarray,
           valid_clips: list[np.ndarray], valid_y: np.ndarray, progress: bool) -> str | None:
    """Step until the budget is spent or early stopping says stop, validating and checkpointing every epoch;
    returns the signal that stopped it early (after a checkpoint), else None."""
    fc, n, window = run.fc, len(train_clips), run.embedder.window
    writer = MetricsWriter(out, book["step"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps, initial=book["step"], desc="finetune", unit="step")
    t0, seconds0, stopped = time.perf_counter(), book["seconds"], None

    def checkpoint() -> None:
        book["seconds"] = seconds0 + time.perf_counter() - t0  # training time over every session
        save_rotating(out, {"config": run.cfg.to_dict(), "model": {}, "model_parts": run.weights(),
                            "optimizer": run.optimizer.state_dict(), "book": book,
                            "rng": {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}})

    with stop_on_signals() as flag:
        while book["step"] < run.total_steps and not book["early_stop"]:
            pos = batch_indices(n, fc.batch_size, book["step"], fc.seed)
            x = random_crops([train_clips[i] for i in pos], window, run.generator)
            book["loss_sum"] += run.step(book["step"], x, torch.from_numpy(train_y[pos]))
            book["step"] += 1
            if bar is not None:
                bar.update(1)
            if book["step"] % run.steps_per_epoch == 0:
                book["early_stop"] = _end_epoch(run, book, task, valid_y, valid_clips, writer, bar)
                checkpoint()
                if book["early_stop"]:
                    log.info("no validation gain for %d epochs: stopping early", fc.patience)
            if flag["signal"] is not None and book["step"] < run.total_steps:
                checkpoint()
                stopped = flag["signal"]
                break
    book["seconds"] = seconds0 + time.perf_counter() - t0
    if bar is not None:
        bar.close()
    writer.close()
    return stopped


def _check_split(task, split: Split, skipped: list[dict]) -> None:
    """After skipping unreadable clips: every class still has a training clip, and something is left to test."""
    if len(split.test) == 0:
        raise ValueError(f"task {task.name}: no test clip could be decoded ({len(skipped)} skipped)")
    y = task.targets(split.train)
    counts = np.bincount(y, minlength=len(task.classes)) if y.ndim == 1 else y.sum(0)
    empty = [c for c, k in zip(task.classes, counts) if k == 0]
    if empty:
        raise ValueError(f"task {task.name}: no readable training clip for classes {empty} "
                         f"({len(skipped)} clips skipped: see skipped.jsonl)")


def _end_epoch(run: Finetuner, book: dict, task, valid_y: np.ndarray, valid_clips: list[np.ndarray],
               writer: MetricsWriter, bar) -> bool:
    """Validate, log the epoch, keep the best weights; True when early stopping says stop."""
    epoch = book["step"] // run.steps_per_epoch
    row = {"step": book["step"], "epoch": epoch, "loss": book["loss_sum"] / run.steps_per_epoch,
           "lr": run.optimizer.param_groups[0]["lr"]}
    book["loss_sum"] = 0.0
    if len(valid_clips):
        score = classification_metrics(valid_y, run.scores(valid_clips))[task.metric]
        row[f"valid_{task.metric}"] = score
        better = score > book["best_score"]
    else:
        score, better = math.nan, True  # no validation set: the last epoch is kept
    if better:
        book.update(best=run.weights(), best_score=score, best_epoch=epoch, bad_epochs=0)
    else:
        book["bad_epochs"] += 1
    writer.write(row)
    log.info("epoch %d loss %.4f valid %s %s", epoch, row["loss"], task.metric, f"{score:.4f}")
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.3f}", valid=f"{score:.3f}")
    return run.fc.patience > 0 and book["bad_epochs"] >= run.fc.patience


def _finish(run: Finetuner, book: dict, task, split: Split, clips: dict, skipped: list[dict], cfg: Config, source: str,
            out: Path, fold: str | None) -> dict[str, Any]:
    """Write the best epoch as ``model.pt``, score it on the test clips, write ``results.json``."""
    if book["best"] is not None:
        run.load_weights(book["best"])
    y_test = task.targets(split.test)
    metrics = classification_metrics(y_test, run.scores([clips[int(i)] for i in split.test]))
    results = {"task": task.name, "fold": pick_fold(task, fold).name, "start": source, "metric": task.metric,
               "test": metrics[task.metric], "metrics": metrics,
               "valid": None if math.isnan(book["best_score"]) else book["best_score"], "best_epoch": book["best_epoch"],
               "steps": book["step"], "num_train": len(split.train), "num_valid": len(split.valid),
               "num_test": len(split.test), "skipped": len(skipped), "train_seconds": round(book["seconds"], 1),
               "labels_per_class": cfg.finetune.labels_per_class, "seed": cfg.finetune.seed}
    save_classifier(out / MODEL_FILE, config=cfg.to_dict(), view=cfg.finetune.view, tower=run.tower.state_dict(),
                    head=run.head.state_dict(), labels=task.classes, multilabel=task.multilabel, info=results)
    write_text(out / RESULTS_FILE, json.dumps(results, indent=1))
    log.info("%s: test %s %.4f (best epoch %d); model: %s", task.name, task.metric, results["test"],
             book["best_epoch"], out / MODEL_FILE)
    return results


# ---------------------------------------------------------------------------------------------- CLI


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("start", help="pretrained checkpoint (.pt) or random-init:PRESET_OR_CKPT")
    p.add_argument("--task", required=True, help="a task name (avssl eval --help), folder:PATH or csv:PATH")
    p.add_argument("--data-root", default=None, help="folder holding named tasks' datasets (default: ../shared/data)")
    p.add_argument("--fold", default=None, help="which fold of the task (default: its first, official or fold1)")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, model.pt, results.json)")
    p.add_argument("--config", default=None, help="preset or YAML file whose finetune/embed sections to use")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="finetune.* or embed.* override, repeatable (docs/finetune.md)")
    p.add_argument("--seed", type=int, default=None, help="finetune.seed: head init, batches, crops, few-label draw")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_finetune(args: argparse.Namespace) -> int:
    finetune(args.start, args.task, args.out, data_root=args.data_root, fold=args.fold, config=args.config,
                   sets=args.set, seed=args.seed, resume=args.resume, progress=not args.no_progress)
    return 0  # also when a signal stopped it: the checkpoint is saved, --resume continues
