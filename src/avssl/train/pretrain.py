"""Pretraining: one explicit loop that runs on a laptop CPU and, under ``torchrun``, on many GPU nodes.

``pretrain(cfg, data, out)`` streams shards (:mod:`avssl.data.stream`), augments and mixes on the device
(:mod:`avssl.data.augment`), embeds every view of ``cfg.model.views`` (:mod:`avssl.models`) and sums the
named InfoNCE losses of ``cfg.loss.pairs`` (:mod:`avssl.train.losses`, which gathers negatives across
ranks); one optimizer step of one rank is :class:`avssl.train.trainer.Trainer`, the optimizer and schedule
:mod:`avssl.train.optim`. The same loop runs audio-visual (``spec``/``wave``/``video``), audio-only multi-format
(``spec-wave``) and audio-only two-crop (a pair of one view with itself, e.g. ``spec-spec``: two
independent crops of each clip's audio) runs, with or without mixing.

The run folder holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per log step, and one
per validation when ``data.val`` is set: :mod:`avssl.train.validation`, which also draws ``curves.png``),
TensorBoard events (``tb/``), ``checkpoint.pt`` (latest; written atomically every
``train.ckpt_every`` steps, at the end, and on SIGTERM/SIGINT or ``max_seconds``) and
``checkpoint-prev.pt`` (the one before). ``resume=True`` continues exactly: model, loss, optimizer,
scheduler, step, RNG states and the data stream position are restored.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from avssl.checkpoint import CHECKPOINT, CheckpointError, keep_snapshot, load_for_resume, save_rotating
from avssl.config import Config, apply_overrides, load_config, save_config
from avssl.data.stream import make_loader
from avssl.train import distributed as dist
from avssl.pairs import AUDIO_VIEWS
from avssl.train.trainer import Trainer, _rng_state, plan_views
from avssl.train.validation import PREFIX as VAL_PREFIX
from avssl.train.validation import ValidationSet, load_validation, plot_curves, validate

log = logging.getLogger(__name__)

STOP_CHECK_EVERY = 10  # steps between the ranks' stop votes (signal / time limit) when distributed


# ---------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def embedding_metrics(emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diagnostics on one batch's embeddings ``{view: [B, D]}`` (scalar tensors).

    ``retrieval/a2v_top1``: share of clips whose audio embedding (``spec``, else ``wave``) is
    closest to its own video among the batch; ``align/PAIR``: mean squared distance between
    normalised positives; ``uniform/VIEW``: log mean exp(-2 * squared distance) over distinct
    pairs (Wang & Isola 2020; lower is more uniform).
    """
    z = {k: nn.functional.normalize(v.float(), dim=-1) for k, v in emb.items()}
    out: dict[str, torch.Tensor] = {}
    audio = next((v for v in AUDIO_VIEWS if v in z), None)
    if audio is not None and "video" in z:
        sim = z[audio] @ z["video"].T
        out["retrieval/a2v_top1"] = (sim.argmax(dim=1) == torch.arange(len(sim), device=sim.device)).float().mean()
    keys = sorted(z)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            out[f"align/{a}-{b}"] = (z[a] - z[b]).pow(2).sum(-1).mean()
        d2 = torch.pdist(z[a]).pow(2)
        if len(d2):
            out[f"uniform/{a}"] = d2.mul(-2).exp().mean().log()
    return out


def _step_of(row: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinity for a line a killed process left unfinished."""
    try:
        return json.loads(row)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def read_metrics(out: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """The training rows (``split="train"``) or validation rows (``"val"``: keys ``val/...``) of a run folder's
    ``metrics.jsonl``, in order (empty when the run stopped before its first log step)."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}; use train or val")
    path = Path(out) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return [r for r in rows if any(k.startswith(VAL_PREFIX) for k in r) == (split == "val")]


class MetricsWriter:
    """``metrics.jsonl`` + TensorBoard (when installed) in the run folder; main process only."""

    def __init__(self, out: Path, start_step: int) -> None:
        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop rows logged after the checkpoint we resume from: they are redone
            rows = [r for r in self.path.read_text().splitlines() if _step_of(r) <= start_step]
            self.path.write_text("".join(r + "\n" for r in rows))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)
        except ImportError:
            log.warning("tensorboard is not installed (pip install 'avssl[train]'); writing metrics.jsonl only")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------ checkpoints


@contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Within the block, SIGTERM/SIGINT set ``flag["signal"]`` instead of killing the process."""
    flag: dict[str, Any] = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        flag["signal"] = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then exiting", flag["signal"])

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------- loop


def pretrain(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    max_seconds: float | None = None,
    manifest: str | Path | None = None,
) -> Path:
    """Pretrain on the shards at ``data`` into the run folder ``out``; return ``out/checkpoint.pt``.

    Runs ``cfg.train.steps`` optimizer steps (continuing from ``out/checkpoint.pt`` when ``resume``).
    ``data`` and ``manifest`` are as in :func:`avssl.data.shardset.resolve_shards`.
    Stops early, after saving a checkpoint, on SIGTERM/SIGINT or after ``max_seconds`` seconds
    of training. Under ``torchrun`` every rank calls this; only rank 0 writes files.
    Raises :class:`avssl.config.ConfigError`, :class:`avssl.data.stream.DataError` or
    :class:`avssl.checkpoint.CheckpointError` with a message that names the problem.
    """
    two_crop = plan_views(cfg)
    out = Path(out)
    rank, world, local_rank, device = dist.init_distributed()
    main = dist.is_main_process()
    state = _resume_state(out, cfg, resume)
    start = int(state["step"]) if state is not None else 0
    loader = make_loader(
        data, cfg, rank=rank, world_size=world, start_batch=start, audio_crops=2 if two_crop else 1,
        manifest=manifest, pin_memory=device.type == "cuda",
    )
    if state is not None and state.get("data_layout") != _data_layout(cfg, world):
        log.warning("resuming with another world size / worker count: the data order differs from an uninterrupted run")
    val = load_validation(cfg.data.val, cfg, loader.shards, decode=main) if cfg.data.val else None
    trainer = Trainer(cfg, device, rank=rank, world=world, local_rank=local_rank)
    if state is not None:
        trainer.load_state_dict(state, rank)
        log.info("resumed from %s at step %d", out / CHECKPOINT, start)
        del state
    writer = _open_run_folder(out, cfg, start) if main else None
    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)
    step, stopped = _train_loop(trainer, loader, out, start, writer, bar, max_seconds, val)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
        if cfg.data.val:
            plot_curves(out)
    if stopped:
        log.warning("stopped at step %d of %d (%s); continue with --resume", step, cfg.train.steps, stopped)
    return out / CHECKPOINT


def _resume_state(out: Path, cfg: Config, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start at step 0); refuses to overwrite a run without ``resume``."""
    state = load_for_resume(out) if resume else None
    if not resume and (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out} already holds {CHECKPOINT}; pass --resume to continue it or choose another --out")
    if state is not None:
        _warn_config_changes(state["config"], cfg)
    return state


def _open_run_folder(out: Path, cfg: Config, start: int) -> MetricsWriter:
    """Create the run folder (main process), drop unfinished checkpoint writes, save ``config.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{CHECKPOINT.split('.')[0]}*.tmp"):  # a save cut short by a kill: never finished
        log.info("removing %s, an unfinished checkpoint write", stale)
        stale.unlink()
    save_config(cfg, out / "config.yaml")
    return MetricsWriter(out, start)


def _checkpoint(out: Path, trainer: Trainer, step: int) -> None:
    """Save the run at ``step`` with every rank's generator state (so each resumes its own stream), and keep a
    copy of it when ``step`` is a multiple of ``train.keep_every``."""
    world = trainer.world
    rngs = [_rng_state(trainer.generator)]
    if world > 1:
        rngs = [None] * world
        torch.distributed.all_gather_object(rngs, _rng_state(trainer.generator))
    if dist.is_main_process():
        save_rotating(out, {**trainer.state_dict(), "step": step, "rng": rngs, "data_layout": _data_layout(trainer.cfg, world)})
        if _keeps(trainer.cfg, step):
            keep_snapshot(out, step)
    dist.barrier()


def _keeps(cfg: Config, step: int) -> bool:
    return bool(cfg.train.keep_every) and step % cfg.train.keep_every == 0


def _train_loop(
    trainer: Trainer, loader, out: Path, start: int, writer: MetricsWriter | None, bar, max_seconds: float | None,
    val: ValidationSet | None = None,
) -> tuple[int, str | None]:
    """Step from ``start`` to ``cfg.train.steps`` (logging every ``train.log_every``, validating every
    ``train.val_every`` and at the end when ``data.val`` is set, checkpointing every ``train.ckpt_every`` and
    at the end); returns ``(last step, why it stopped early or None)``."""
    cfg, device, world = trainer.cfg, trainer.device, trainer.world
    interval = _Interval()
    t_start = time.perf_counter()
    step, stopped, last_val = start, None, {}
    batches = iter(loader)
    with stop_on_signals() as flag:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = next(batches).to(device, non_blocking=True)
            interval.wait += time.perf_counter() - t0
            scalars, emb = trainer.step(batch)
            step += 1
            interval.add(scalars)
            if cfg.data.val and (step == cfg.train.steps or cfg.train.val_every and step % cfg.train.val_every == 0):
                last_val = _validate(trainer, val, step, writer)
                interval.t_log += last_val.get(f"{VAL_PREFIX}seconds", 0.0)  # clips/s counts training time only
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                row = _log_row(step, interval.sums, interval.n, emb, trainer.optimizer, loader, world, interval.wait,
                               interval.t_log)
                interval = _Interval()
                if writer is not None:
                    _report(row, writer, bar, last_val)
            if bar is not None:
                bar.update(1)
            if _stop_vote(flag, t_start, max_seconds, step, device, world) > 0 and step < cfg.train.steps:
                stopped = flag["signal"] or f"time limit {max_seconds}s"
                break
            if (step % cfg.train.ckpt_every == 0 or _keeps(cfg, step)) and step < cfg.train.steps:
                _checkpoint(out, trainer, step)
        _checkpoint(out, trainer, step)
    return step, stopped


class _Interval:
    """Sums of the step scalars since the last log row, their count, the data-wait seconds and the start time."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n, self.wait, self.t_log = 0, 0.0, time.perf_counter()

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1


def _report(row: dict[str, Any], writer: MetricsWriter, bar, last_val: dict[str, float] | None = None) -> None:
    """Write a log row (main process): ``metrics.jsonl`` / TensorBoard, the log, the progress bar (with the
    last validation's loss and top-5 when there is one)."""
    writer.write(row)
    log.info("step %d loss %.4f lr %.2e %.1f clips/s data-wait %.0f%%", row["step"], row["loss"], row["lr"],
             row["clips_per_s"], 100 * row["data_wait"])
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.3f}", clips_s=f"{row['clips_per_s']:.0f}", **_val_postfix(last_val))


def _val_postfix(val: dict[str, float] | None) -> dict[str, str]:
    short = {"val_loss": f"{VAL_PREFIX}loss", "val_top5": f"{VAL_PREFIX}a2v_top5"}
    return {name: f"{val[k]:.3f}" for name, k in short.items() if val and k in val}


def _validate(trainer: Trainer, val: ValidationSet | None, step: int, writer: MetricsWriter | None) -> dict[str, float]:
    """Score the validation set (main process alone; the other ranks wait at a barrier) and write the row to
    ``metrics.jsonl`` / TensorBoard and the log; the progress bar shows it from the next log row (made at the
    same step when ``train.val_every`` is a multiple of ``train.log_every``). Returns the row (empty on other ranks)."""
    row: dict[str, float] = {}
    if val is not None:
        row = validate(trainer.model, trainer.loss_fn, val, trainer.cfg, trainer.device)
        log.info("validation at step %d: %s (%.1f s)", step, " ".join(
            f"{k[len(VAL_PREFIX):]} {v:.4f}" for k, v in row.items() if k != f"{VAL_PREFIX}seconds"),
            row[f"{VAL_PREFIX}seconds"])
        if writer is not None:
            writer.write({"step": step, **row})
    dist.barrier()
    return row


def _stop_vote(flag: dict[str, Any], t_start: float, max_seconds: float | None, step: int, device: torch.device,
               world: int) -> float:
    """> 0 when the run should stop now (a signal, or ``max_seconds`` spent). Distributed, the ranks vote
    every ``STOP_CHECK_EVERY`` steps so that all stop at the same step (else the next collective hangs)."""
    over_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
    stop_now = float(flag["signal"] is not None or over_time)
    if world > 1:  # a sync, so not every step
        stop_now = float(dist.all_reduce_mean(torch.tensor(stop_now, device=device)).item()) if (
            step % STOP_CHECK_EVERY == 0) else 0.0
    return stop_now


def _data_layout(cfg: Config, world: int) -> dict[str, int]:
    return {"world_size": world, "num_workers": cfg.data.num_workers, "batch_size": cfg.data.batch_size}


def _warn_config_changes(saved: dict[str, Any], cfg: Config) -> None:
    now = cfg.to_dict()
    changed = [f"{s}.{k}" for s in now for k in now[s]  # a key the checkpoint predates is no change
               if k in saved.get(s, {}) and saved[s][k] != now[s][k]]
    if changed:
        log.warning("resuming with a changed config: %s", ", ".join(changed))


def _log_row(step, sums, n, emb, optimizer, loader, world, wait, t_log) -> dict[str, Any]:
    """Interval means (averaged over ranks) plus throughput and embedding diagnostics."""
    diag = embedding_metrics({k: v.detach() for k, v in emb.items()})
    names = list(sums) + list(diag)
    values = torch.stack([sums[k] / n for k in sums] + [diag[k] for k in diag])
    values = dist.all_reduce_mean(values).tolist()
    elapsed = max(time.perf_counter() - t_log, 1e-9)
    row: dict[str, Any] = {"step": step, "epoch": (step - 1) // loader.epoch_batches}
    row.update(zip(names, values))
    row["lr"] = optimizer.param_groups[0]["lr"]
    row["clips_per_s"] = n * loader.batch_size * world / elapsed
    row["data_wait"] = wait / elapsed
    return row


# ---------------------------------------------------------------------------------------------- CLI


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="small", help="preset name (tiny | cpu | small | paper: src/avssl/configs) or a YAML file")
    parser.add_argument("--data", required=True, help="shard folder, brace pattern of shards, or shard URLs")
    parser.add_argument("--manifest", default=None, help="folder of manifest.json for --data URLs (default: beside them)")
    parser.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--val-data", default=None, metavar="SHARDS",
                        help="held-out shard folder scored every train.val_every steps and at the end (data.val)")
    parser.add_argument("--max-seconds", type=float, default=None, help="save and stop after this much training time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    if args.val_data is not None:
        cfg = apply_overrides(cfg, {"data": {"val": args.val_data}})
    path = pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress,
                    max_seconds=args.max_seconds, manifest=args.manifest)
    if dist.is_main_process():
        log.info("checkpoint: %s", path)
    return 0
