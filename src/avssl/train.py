"""Pretraining: one explicit loop that runs on a laptop CPU and, under ``torchrun``, on many GPU nodes.

``pretrain(cfg, data, out)`` streams shards (:mod:`avssl.data`), augments and mixes on the device
(:mod:`avssl.augment`), embeds every view of ``cfg.model.views`` (:mod:`avssl.models`) and sums the
named InfoNCE losses of ``cfg.loss.pairs`` (:mod:`avssl.losses`, which gathers negatives across
ranks). The same loop runs audio-visual (``spec``/``wave``/``video``), audio-only multi-format
(``spec-wave``) and audio-only two-crop (a pair of one view with itself, e.g. ``spec-spec``: two
independent crops of each clip's audio) runs, with or without mixing.

The run folder holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per log step),
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
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import distributed as dist
from .augment import augment, mix
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, load_config, save_config
from .data import Batch, make_loader
from .losses import AUDIO_VIEWS, SECOND_CROP, ContrastiveLoss, parse_pair
from .models import build_model
from .models.spec import SpecMask

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint-prev.pt"
STOP_CHECK_EVERY = 10  # steps between the ranks' stop votes (signal / time limit) when distributed


# ------------------------------------------------------------------------------- plan + optimizer


def plan_views(cfg: Config) -> bool:
    """Validate ``loss.pairs`` against ``model.views``; return whether the run is two-crop.

    A pair names two views (``"spec-video"``); a view paired with itself (``"spec-spec"``) means
    two independent audio crops of each clip (COLA-style), which only audio views allow.
    Raises :class:`ConfigError` naming the pair.
    """
    views = set(cfg.model.views)
    if not cfg.loss.pairs:
        raise ConfigError("loss.pairs is empty; name at least one pair such as spec-video")
    two_crop = False
    for pair in cfg.loss.pairs:
        try:
            keys = parse_pair(pair)
        except ValueError as e:
            raise ConfigError(f"loss.pairs: {e}") from None
        missing = [k.removesuffix(SECOND_CROP) for k in keys if k.removesuffix(SECOND_CROP) not in views]
        if missing:
            raise ConfigError(f"loss.pairs: {pair!r} uses {missing[0]!r}, which is not in model.views={sorted(views)}")
        two_crop |= keys[1].endswith(SECOND_CROP)
    return two_crop


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017).

    Groups with ``lars=False`` (biases, norm parameters) get neither the trust ratio nor weight decay.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    pn, dn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    """AdamW or LARS; weight decay (and LARS adaptation) only on parameters with ``ndim > 1``."""
    o = cfg.optim
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    plain = [p for p in params if p.requires_grad and p.ndim <= 1]
    if o.name == "adamw":
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    if o.name == "lars":
        groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0, "lars": False}]
        return LARS(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=o.betas[0])
    raise ConfigError(f"optim.name={o.name!r} is not supported; use adamw or lars")


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


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(out: Path, state: dict[str, Any]) -> Path:
    """Keep the current checkpoint as ``checkpoint-prev.pt`` (hard link, else copy), then write atomically."""
    path, prev = out / CHECKPOINT, out / PREVIOUS
    if path.exists():
        prev.unlink(missing_ok=True)
        try:
            os.link(path, prev)
        except OSError:
            shutil.copy2(path, prev)
    return save_checkpoint(state, path)


def _load_for_resume(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.exists():
        log.info("%s: no checkpoint to resume from; starting from step 0", out)
        return None
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        prev = out / PREVIOUS
        hint = (
            f"; the previous good checkpoint is kept at {prev}: move it to {path} to resume from it"
            if prev.exists()
            else ""
        )
        raise CheckpointError(f"{e}{hint}") from e


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, Any]]:
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


def _embed(model: nn.Module, batch: Batch, two_crop: bool, use_video: bool) -> dict[str, torch.Tensor]:
    """Embeddings of every view; in two-crop runs the audio views on ``audio2`` get the suffix ``2``."""
    emb = model(batch.audio, batch.frames if use_video else None)
    if two_crop:
        second = model(batch.audio2, None)
        emb.update({v + SECOND_CROP: e for v, e in second.items() if v in AUDIO_VIEWS})
    return {k: v.float() for k, v in emb.items()}


def _augment_and_mix(batch: Batch, cfg: Config, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """Per-example augmentation (each crop on its own), then mixing; both crops of a clip mix alike."""
    crop, sr, fps = cfg.data.crop_seconds, cfg.audio.sample_rate, cfg.video.fps
    batch = augment(batch, cfg.augment, generator, crop, sr, fps)
    if batch.audio2 is None:
        return mix(batch, cfg.augment, generator)
    second = replace(batch, audio=batch.audio2, frames=batch.frames[:, :0], audio2=None)
    audio2 = augment(second, cfg.augment, generator, crop, sr, fps).audio
    n = batch.audio.shape[1]  # mix the two crops side by side: one partner and weight per clip
    both = replace(batch, audio=torch.cat([batch.audio, audio2], dim=1), audio2=None)
    mixed, mix_matrix = mix(both, cfg.augment, generator)
    return replace(mixed, audio=mixed.audio[:, :n], audio2=mixed.audio[:, n:]), mix_matrix


class Trainer:
    """Model, loss, optimizer, schedule and augmentation generator for one rank, and one optimizer step.

    ``step(batch)`` augments and mixes ``batch`` on the device, embeds every view (bf16 autocast on
    CUDA unless ``train.precision`` says otherwise), sums the named losses, back-propagates, clips
    the gradient norm and steps optimizer and schedule. ``model`` is the unwrapped model (what
    checkpoints store); ``train_model`` the DDP / compiled wrapper that runs the forward pass.
    """

    def __init__(
        self, cfg: Config, device: torch.device, *, rank: int = 0, world: int = 1, local_rank: int = 0
    ) -> None:
        if cfg.train.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision={cfg.train.precision!r}; use auto, bf16 or fp32")
        self.cfg, self.device, self.world = cfg, device, world
        self.two_crop = plan_views(cfg)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg).to(device)
        if world > 1:  # a positive pair shares its rank's batch statistics: per-rank BN leaks "same rank"
            if not cfg.train.sync_bn:
                raise ConfigError("train.sync_bn=false would normalise with per-rank BatchNorm statistics under "
                                  f"{world} processes, which lets the loss tell ranks apart; keep train.sync_bn=true")
            model = dist.convert_sync_batchnorm(model, device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss_fn = ContrastiveLoss(cfg.loss).to(device)
        self.params = [p for p in [*model.parameters(), *self.loss_fn.parameters()] if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            partial(lr_factor, warmup=cfg.optim.warmup_steps, total=cfg.train.steps, min_ratio=cfg.optim.min_lr_ratio),
        )
        self.generator = torch.Generator()  # on the CPU: augment draws there and moves the numbers to the device
        self.generator.manual_seed(cfg.train.seed * 1000 + rank)
        for m in model.modules():  # spec masks too: distinct per rank, and in the checkpointed generator state
            if isinstance(m, SpecMask):
                m.use_generator(self.generator)
        self.train_model: nn.Module = model
        if world > 1:
            ids = [local_rank] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
        self.autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext
        self.train_model.train()

    def step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimizer step on a device batch; returns ``({"loss", "nce/...", "grad_norm"}, embeddings)``."""
        cfg = self.cfg
        batch, mix_matrix = _augment_and_mix(batch, cfg, self.generator)
        with self.autocast():
            emb = _embed(self.train_model, batch, self.two_crop, "video" in cfg.model.views)
        losses = self.loss_fn(emb, mix_matrix, batch.source_ids().to(self.device))
        total = torch.stack(list(losses.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.world > 1:  # the loss module (learnable temperature) is not inside DDP
            for p in self.loss_fn.parameters():
                if p.grad is not None:
                    p.grad = dist.all_reduce_mean(p.grad)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.schedule.step()
        return {"loss": total, **losses, "grad_norm": grad_norm}, emb

    def state_dict(self) -> dict[str, Any]:
        """Everything but the RNG states and step (see :func:`pretrain`)."""
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0], self.generator)


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
    ``data`` and ``manifest`` are as in :func:`avssl.data.resolve_shards`.
    Stops early, after saving a checkpoint, on SIGTERM/SIGINT or after ``max_seconds`` seconds
    of training. Under ``torchrun`` every rank calls this; only rank 0 writes files.
    Raises :class:`avssl.config.ConfigError`, :class:`avssl.data.DataError` or
    :class:`avssl.checkpoint.CheckpointError` with a message that names the problem.
    """
    two_crop = plan_views(cfg)
    out = Path(out)
    rank, world, local_rank, device = dist.init_distributed()
    main = dist.is_main_process()
    state = _load_for_resume(out) if resume else None
    if not resume and (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out} already holds {CHECKPOINT}; pass --resume to continue it or choose another --out")
    if state is not None:
        _warn_config_changes(state["config"], cfg)
    start = int(state["step"]) if state is not None else 0
    loader = make_loader(
        data, cfg, rank=rank, world_size=world, start_batch=start, audio_crops=2 if two_crop else 1,
        manifest=manifest, pin_memory=device.type == "cuda",
    )
    if state is not None and state.get("data_layout") != _data_layout(cfg, world):
        log.warning("resuming with another world size / worker count: the data order differs from an uninterrupted run")
    trainer = Trainer(cfg, device, rank=rank, world=world, local_rank=local_rank)
    if state is not None:
        trainer.load_state_dict(state, rank)
        log.info("resumed from %s at step %d", out / CHECKPOINT, start)
        del state

    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT.split('.')[0]}*.tmp"):  # a save cut short by a kill: never finished
            log.info("removing %s, an unfinished checkpoint write", stale)
            stale.unlink()
        save_config(cfg, out / "config.yaml")
        writer = MetricsWriter(out, start)

    def checkpoint(step: int) -> None:
        rngs = [_rng_state(trainer.generator)]
        if world > 1:  # every rank's generator, so each resumes its own stream
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, _rng_state(trainer.generator))
        if main:
            _save(out, {**trainer.state_dict(), "step": step, "rng": rngs, "data_layout": _data_layout(cfg, world)})
        dist.barrier()

    sums: dict[str, torch.Tensor] = {}
    n_sum, wait, t_log, t_start = 0, 0.0, time.perf_counter(), time.perf_counter()
    step, stopped = start, None
    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)
    batches = iter(loader)
    with _stop_on_signals() as flag:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = next(batches).to(device, non_blocking=True)
            wait += time.perf_counter() - t0
            scalars, emb = trainer.step(batch)
            step += 1
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_sum += 1
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                row = _log_row(step, sums, n_sum, emb, trainer.optimizer, loader, world, wait, t_log)
                sums, n_sum, wait, t_log = {}, 0, 0.0, time.perf_counter()
                if main:
                    writer.write(row)
                    log.info("step %d loss %.4f lr %.2e %.1f clips/s data-wait %.0f%%", step, row["loss"], row["lr"],
                             row["clips_per_s"], 100 * row["data_wait"])
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", clips_s=f"{row['clips_per_s']:.0f}")
            if bar is not None:
                bar.update(1)
            over_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
            stop_now = float(flag["signal"] is not None or over_time)
            if world > 1:  # ranks agree on the stop step (else the next collective hangs); a sync, so not every step
                stop_now = float(dist.all_reduce_mean(torch.tensor(stop_now, device=device)).item()) if (
                    step % STOP_CHECK_EVERY == 0) else 0.0
            if stop_now > 0 and step < cfg.train.steps:
                stopped = flag["signal"] or f"time limit {max_seconds}s"
                break
            if step % cfg.train.ckpt_every == 0 and step < cfg.train.steps:
                checkpoint(step)
        checkpoint(step)
    del batches
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if stopped:
        log.warning("stopped at step %d of %d (%s); continue with --resume", step, cfg.train.steps, stopped)
    return out / CHECKPOINT


def _data_layout(cfg: Config, world: int) -> dict[str, int]:
    return {"world_size": world, "num_workers": cfg.data.num_workers, "batch_size": cfg.data.batch_size}


def _warn_config_changes(saved: dict[str, Any], cfg: Config) -> None:
    now = cfg.to_dict()
    changed = [f"{s}.{k}" for s in now for k in now[s] if saved.get(s, {}).get(k) != now[s][k]]
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
    parser.add_argument("--config", default="small", help="preset name (tiny | small | paper) or a YAML file")
    parser.add_argument("--data", required=True, help="shard folder, brace pattern of shards, or shard URLs")
    parser.add_argument("--manifest", default=None, help="folder of manifest.json for --data URLs (default: beside them)")
    parser.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--max-seconds", type=float, default=None, help="save and stop after this much training time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    path = pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress,
                    max_seconds=args.max_seconds, manifest=args.manifest)
    if dist.is_main_process():
        log.info("checkpoint: %s", path)
    return 0
