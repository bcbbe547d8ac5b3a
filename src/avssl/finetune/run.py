"""``avssl finetune``: a pretrained (or random-init) audio tower trained end to end with a linear head on a labelled
task, into one self-contained classifier model file (``OUT/model.pt``, :func:`avssl.finetune.classifier.load_classifier`).

The recipe (every setting in the typed ``finetune`` config section, :class:`avssl.config.FinetuneConfig`;
docs/finetune.md): AdamW with the tower at ``lr * tower_lr_scale`` and the head at ``lr``, linear warm-up and
cosine decay over the budget; each step draws a batch from seeded permutations of the training clips, cuts
a random window of each (the embedding window), mixes the batch with mixup and masks spectrogram stripes;
after each epoch the classifier scores the validation clips exactly as it will score new files (every window,
:class:`avssl.finetune.classifier.Classifier`), and the best epoch is kept (:mod:`avssl.finetune.validation`). The
run takes at least ``epochs`` epochs and goes on while validation improves, stopping after ``patience`` epochs
without a gain, at the latest after ``max_steps`` steps (:func:`budget_epochs`). At the end the best epoch is
written as ``model.pt`` and scored on the test clips (``results.json``, with the budget used).

The run folder holds ``config.yaml``, ``metrics.jsonl`` (one row per epoch), ``skipped.jsonl`` (clips that could not
be decoded), ``checkpoint.pt`` (every epoch and on SIGTERM/SIGINT, atomic, the previous kept as
``checkpoint-prev.pt``), then ``model.pt`` and ``results.json``. ``resume=True`` continues exactly where the
checkpoint stopped: a killed and resumed run ends with the same weights as an uninterrupted one; settings other than
the run's own (seed, task, fold, labels, start checkpoint, recipe) are refused (:mod:`avssl.finetune.resume`).
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
from avssl.finetune.resume import check_resume, run_identity
from avssl.finetune.validation import LOSS, Validation, json_safe
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
    finished = (out / MODEL_FILE).exists() and (out / RESULTS_FILE).exists()
    if finished and not resume:
        raise CheckpointError(f"{out} already holds a finished run ({MODEL_FILE}); choose another --out")
    state = load_for_resume(out) if resume else None
    if not resume and (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out} already holds {CHECKPOINT}; pass --resume to continue it or choose another --out")
    cfg, tower = starting_point(start, overrides)
    fc = cfg.finetune
    task = load_task(task_name, data_root if data_root is not None else default_data_root())
    split = split_task(task, fold, fc)
    identity = run_identity(start, task, pick_fold(task, fold).name, split)
    if state is not None:
        check_resume(state, identity, cfg, str(out))
    if finished:  # and resumed with the run's own settings
        log.info("%s is finished: %s", out, out / MODEL_FILE)
        return json.loads((out / RESULTS_FILE).read_text())
    split, clips, skipped = _decode(task, split, cfg.audio.sample_rate, progress)
    steps_per_epoch = max(math.ceil(len(split.train) / fc.batch_size), fc.min_epoch_steps)
    torch.manual_seed(fc.seed)  # dropout and mixup's Beta draws (saved in checkpoints)
    run = Finetuner(cfg, tower, task.classes, task.multilabel, steps_per_epoch,
                    budget_epochs(fc, steps_per_epoch, len(split.valid) > 0))
    book = {"step": 0, "best": None, "best_key": -math.inf, "best_score": None, "best_loss": None, "best_epoch": 0,
            "bad_epochs": 0, "loss_sum": 0.0, "early_stop": False, "seconds": 0.0}
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
    log.info("finetune %s on %s (%s): %d train / %d valid / %d test clips, up to %d epochs of %d steps", start,
             task.name, identity["fold"], len(split.train), len(split.valid), len(split.test),
             run.total_steps // steps_per_epoch, steps_per_epoch)
    train_clips = [clips[int(i)] for i in split.train]
    if state is None:
        run.estimate_bn_stats(train_clips, run.embedder.window)
    y_all = task.targets()
    valid = Validation(task, [clips[int(i)] for i in split.valid], y_all[split.valid])
    stopped = _train(run, book, out, identity, train_clips, y_all[split.train], valid, progress)
    if stopped:
        log.warning("stopped at step %d of %d (%s); continue with --resume", book["step"], run.total_steps, stopped)
        return {"stopped": stopped, "step": book["step"]}
    return _finish(run, book, task, split, clips, skipped, valid, start, out, identity["fold"])


def budget_epochs(fc: FinetuneConfig, steps_per_epoch: int, validated: bool) -> int:
    """The epochs the run may take and its learning-rate schedule spans: ``finetune.epochs`` with ``max_steps=0`` or
    without a validation split, else ``max_steps`` rounded up to whole epochs, never fewer than ``epochs``."""
    if fc.max_steps == 0 or not validated:
        return fc.epochs
    return max(fc.epochs, math.ceil(fc.max_steps / steps_per_epoch))


def _decode(task, split: Split, sample_rate: int, progress: bool) -> tuple[Split, dict[int, np.ndarray], list[dict]]:
    """The split less the clips that could not be decoded, every used clip's audio by example index, and the
    skipped clips."""
    wanted = np.concatenate([split.train, split.valid, split.test])
    audio, skipped = decode_examples([task.examples[i] for i in wanted], sample_rate, progress)
    clips = {int(wanted[j]): a for j, a in audio.items()}
    split = Split(*(np.array([i for i in s if int(i) in clips], np.int64) for s in (split.train, split.valid, split.test)))
    _check_split(task, split, skipped)
    return split, clips, skipped


def _train(run: Finetuner, book: dict, out: Path, identity: dict[str, Any], train_clips: list[np.ndarray],
           train_y: np.ndarray, valid: Validation, progress: bool) -> str | None:
    """Step until the budget is spent or early stopping says stop, validating and checkpointing every epoch (with
    the run's ``identity``, :func:`avssl.finetune.resume.run_identity`); returns the signal that stopped it early
    (after a checkpoint), else None."""
    fc, n, window = run.fc, len(train_clips), run.embedder.window
    writer = MetricsWriter(out, book["step"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps, initial=book["step"], desc="finetune", unit="step")
    t0, seconds0, stopped = time.perf_counter(), book["seconds"], None

    def checkpoint() -> None:
        book["seconds"] = seconds0 + time.perf_counter() - t0  # training time over every session
        save_rotating(out, {"config": run.cfg.to_dict(), "identity": identity, "model": {},
                            "model_parts": run.weights(), "optimizer": run.optimizer.state_dict(), "book": book,
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
                book["early_stop"] = _end_epoch(run, book, valid, writer, bar)
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


def _end_epoch(run: Finetuner, book: dict, valid: Validation, writer: MetricsWriter, bar) -> bool:
    """Validate, log the epoch, keep the best weights; True when early stopping says stop (after ``patience``
    epochs without a gain, not before ``finetune.epochs`` epochs unless ``max_steps=0``)."""
    fc, epoch = run.fc, book["step"] // run.steps_per_epoch
    row = {"step": book["step"], "epoch": epoch, "loss": book["loss_sum"] / run.steps_per_epoch,
           "lr": run.optimizer.param_groups[0]["lr"]}
    book["loss_sum"] = 0.0
    if valid.criterion is None:
        key, better = math.nan, True  # no validation set: the last epoch is kept
    else:
        row.update(valid.measure(run.scores(valid.clips)))
        key = valid.key(row)
        better = key > book["best_key"]
    if better:
        book.update(best=run.weights(), best_key=key, best_score=row.get(f"valid_{valid.task.metric}"),
                    best_loss=row.get(LOSS), best_epoch=epoch, bad_epochs=0)
    else:
        book["bad_epochs"] += 1
    writer.write(json_safe(row))
    shown = {k[len("valid_"):]: v for k, v in row.items() if k.startswith("valid_")}
    log.info("epoch %d loss %.4f valid %s", epoch, row["loss"], " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.3f}", **{k: f"{v:.3f}" for k, v in shown.items()})
    minimum = fc.epochs if fc.max_steps > 0 else 0
    return fc.patience > 0 and epoch >= minimum and book["bad_epochs"] >= fc.patience


def _finish(run: Finetuner, book: dict, task, split: Split, clips: dict, skipped: list[dict], valid: Validation,
            source: str, out: Path, fold: str) -> dict[str, Any]:
    """Write the best epoch as ``model.pt``, score it on the test clips, write ``results.json`` (with the budget
    the run used and how its epoch was chosen)."""
    cfg, spe = run.cfg, run.steps_per_epoch
    if book["best"] is not None:
        run.load_weights(book["best"])
    y_test = task.targets(split.test)
    metrics = classification_metrics(y_test, run.scores([clips[int(i)] for i in split.test]))
    results = json_safe({
        "task": task.name, "fold": fold, "start": source, "metric": task.metric, "test": metrics[task.metric],
        "metrics": metrics, "selection": valid.criterion or "last epoch", "valid": book["best_score"],
        "valid_loss": book["best_loss"], "valid_classes": valid.scored_classes if valid.criterion else 0,
        "best_epoch": book["best_epoch"], "epochs": book["step"] // spe, "steps": book["step"],
        "stopped_early": book["early_stop"],
        "budget": {"min_epochs": cfg.finetune.epochs if cfg.finetune.max_steps > 0 else 0,
                   "max_epochs": run.total_steps // spe, "steps_per_epoch": spe, "max_steps": run.total_steps},
        "num_train": len(split.train), "num_valid": len(split.valid), "num_test": len(split.test),
        "skipped": len(skipped), "train_seconds": round(book["seconds"], 1),
        "labels_per_class": cfg.finetune.labels_per_class, "seed": cfg.finetune.seed})
    save_classifier(out / MODEL_FILE, config=cfg.to_dict(), view=cfg.finetune.view, tower=run.tower.state_dict(),
                    head=run.head.state_dict(), labels=task.classes, multilabel=task.multilabel, info=results)
    write_text(out / RESULTS_FILE, json.dumps(results, indent=1, allow_nan=False))
    log.info("%s: test %s %s (best epoch %d of %d, chosen on %s); model: %s", task.name, task.metric, results["test"],
             book["best_epoch"], results["epochs"], results["selection"], out / MODEL_FILE)
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
