"""Linear-probe evaluation: cached frozen embeddings, probes per fold and seed (the probe: avssl.evaluate.probe;
tables, plots: avssl.evaluate.reports).

Stage 1 embeds every split of a task once per model and caches it on disk
(``<cache>/<model id>/<task>/<split>.npz``); stage 2 (:func:`avssl.evaluate.probe.probe`) never touches the model.
The protocol (written down in ``docs/evaluation.md``): standardise with training statistics,
train a linear softmax classifier (sigmoid/BCE per class for multi-label tasks) with Adam, pick
the L2 weight and the epoch on a validation split (the task's own, or carved from train only),
report the test metric as mean +- std over seeds x folds. Baselines ``logmel-stats``,
``mfcc-stats`` (:mod:`avssl.evaluate.baselines`) and ``random-init:PRESET_OR_CKPT`` run through the same path as checkpoints.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from avssl.atomic import write_with
from avssl.media.audio import load_audio
from avssl.evaluate.baselines import BASELINES, StatsBaseline
from avssl.config import AudioConfig
from avssl.evaluate.probe import run_probes
from avssl.evaluate.reports import markdown_table, slug, write_plots
from avssl.evaluate.tasks import TASKS, Example, Task, default_data_root, load_task, shared_tasks

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------- encoders


class Encoder(Protocol):
    """What the evaluation needs of a model: ``avssl.embed.embedder.Embedder`` and the baselines fit it."""

    sample_rate: int

    def embed(self, audio: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """A list of mono clips ``float32[N_i]`` at ``sample_rate`` Hz -> ``float32[B, D]``."""


@dataclass
class ModelRef:
    """A resolved model spec: display ``name``, ``cache_id`` (changes whenever the embeddings
    would), and the ``encoder``."""

    name: str
    cache_id: str
    encoder: Encoder


def resolve_model(spec: str, *, device: str | None = None, view: str = "spec", seed: int = 0,
                  features: str | None = None, int8: bool = False, window_seconds: float | None = None) -> ModelRef:
    """``logmel-stats`` | ``mfcc-stats`` | ``random-init:PRESET_OR_CKPT`` (the architecture of a
    config preset or checkpoint, untrained, initialised with ``seed``) | a checkpoint path.
    ``features`` (``pooled`` | ``layers``, default: the config's ``embed.features``) is passed to the
    :class:`avssl.embed.embedder.Embedder` of a model; baselines ignore it. ``int8``: a model's tower runs in int8 on the
    CPU (:func:`avssl.embed.embedder.quantize_int8`; its own embedding cache); baselines ignore it too. ``window_seconds``:
    the window a model's tower sees (default: its config's ``embed.window_seconds``, else its training crop); a
    window other than that default is part of the cache id."""
    if spec in BASELINES:
        return ModelRef(spec, f"{spec}-{_config_hash(AudioConfig())}", StatsBaseline(spec))
    if spec.startswith("random-init:"):
        from avssl.checkpoint import architecture_config, random_model
        from avssl.embed.embedder import Embedder

        cfg = architecture_config(spec.split(":", 1)[1])
        if view not in cfg.model.views:
            raise ValueError(f"{spec}: the architecture has views {cfg.model.views}, not {view!r}; use --view")
        model = random_model(cfg, seed, views=[view])
        arch = {k: v for k, v in cfg.to_dict().items() if k != "finetune"}  # ids as before the section existed
        cfg_id = hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
        encoder = Embedder.from_model(model, cfg, view=view, features=features, window_seconds=window_seconds)
        encoder = encoder.to(torch.device(device or "cpu"))
        if int8:
            encoder.to_int8()
        return ModelRef(spec, slug(f"random-init-{cfg_id}-s{seed}-{view}{_features_tag(encoder, int8)}"), encoder)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"model {spec!r} is not a checkpoint file, a baseline ({', '.join(BASELINES)}) "
            "or random-init:PRESET_OR_CKPT"
        )
    from avssl.checkpoint import file_sha1
    from avssl.embed.embedder import load_model

    encoder = load_model(path, device=device, view=view, features=features, int8=int8, window_seconds=window_seconds)
    return ModelRef(spec, slug(f"{path.stem}-{file_sha1(path)[:12]}-{view}{_features_tag(encoder, int8)}"), encoder)


def probe_blocks(ref: ModelRef, select_layer: bool) -> list[int] | None:
    """The block widths :func:`run_probes` selects among: with ``select_layer``, a model read with
    ``features="layers"``; None otherwise (baselines, pooled features)."""
    return getattr(ref.encoder, "layer_dims", None) if select_layer else None


def _features_tag(encoder: Any, int8: bool = False) -> str:
    """Cache-id suffix of an embedder's feature choice, int8 and window when it is not its config's own (empty for
    the defaults, so old caches stay valid)."""
    own = int(round(encoder.cfg.embed_window_seconds * encoder.sample_rate))
    window = "" if encoder.window == own else f"-w{encoder.window / encoder.sample_rate:g}"
    return ("" if encoder.features == "pooled" else f"-{encoder.features}") + ("-int8" if int8 else "") + window


def _config_hash(cfg: AudioConfig) -> str:
    return hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------- embedding cache


class AudioCache:
    """Decoded audio kept in memory across models (a sweep evaluates many models on the same clips):
    ``cache(path, sample_rate)`` decodes once. At most ``max_bytes`` are held (64 KB per second of
    audio at 16 kHz; 2 GiB by default, about 9 hours): past that the least recently used clip goes."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self._audio: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    def __call__(self, path: Path, sample_rate: int) -> np.ndarray:
        key = (str(path), int(sample_rate))
        if key in self._audio:
            self._audio.move_to_end(key)
            return self._audio[key]
        audio = load_audio(path, sample_rate)
        self._audio[key] = audio
        self._bytes += audio.nbytes
        while self._bytes > self.max_bytes and len(self._audio) > 1:
            self._bytes -= self._audio.popitem(last=False)[1].nbytes
        return audio


def _load_clip(ex: Example, sample_rate: int, decode: Callable[[Path, int], np.ndarray]) -> np.ndarray:
    """An example's audio (mono float32 at ``sample_rate``) from ``decode``, cut to its segment if any."""
    audio = decode(ex.path, sample_rate)
    i = int(round(ex.start * sample_rate))
    j = len(audio) if ex.duration is None else i + int(round(ex.duration * sample_rate))
    return audio[i:j]


def _embed_examples(
    encoder: Encoder, examples: list[Example], batch_size: int, progress: bool, desc: str,
    audio_cache: AudioCache | None = None,
) -> np.ndarray:
    """Embed examples in order, ``batch_size`` clips (of any lengths) per call; decoding on 2 threads."""
    from tqdm import tqdm

    sr = encoder.sample_rate
    # consecutive segments of one source file decode it once (2 files held at most); a sweep's AudioCache
    # keeps every file across models
    decode = audio_cache or functools.lru_cache(maxsize=2)(load_audio)
    out: list[np.ndarray] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool, tqdm(
        total=len(examples), desc=desc, disable=not progress, unit="clip"
    ) as bar:
        for i in range(0, len(examples), batch_size):
            clips = list(pool.map(lambda ex: _load_clip(ex, sr, decode), examples[i : i + batch_size]))
            emb = np.asarray(encoder.embed(clips, sr), dtype=np.float32)
            if emb.shape[0] != len(clips) or emb.ndim != 2 or not np.isfinite(emb).all():
                raise RuntimeError(f"{desc}: the encoder returned {emb.shape} (finite: {np.isfinite(emb).all()}) "
                                   f"for {len(clips)} clips starting at {examples[i].path}")
            out.append(emb)
            bar.update(len(clips))
    return np.concatenate(out)


def embed_task(
    ref: ModelRef, task: Task, cache_dir: str | Path, *, batch_size: int = 32, progress: bool = True,
    audio_cache: AudioCache | None = None,
) -> np.ndarray:
    """Embeddings ``float32[len(task.examples), D]`` in example order, from the cache
    ``<cache_dir>/<model id>/<task.audio_id>/<split>.npz`` where present (and matching the split's
    examples), else computed and cached per split. ``audio_cache`` keeps decoded audio for later models."""
    folder = Path(cache_dir) / ref.cache_id / slug(task.audio_id)
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, np.ndarray] = {}
    for split in task.split_order:
        idx = task.indices((split,))
        keys = np.array([task.examples[i].key for i in idx])
        path = folder / f"{slug(split)}.npz"
        if path.is_file():
            with np.load(path) as z:
                if np.array_equal(z["keys"], keys):
                    parts[split] = z["embeddings"]
                    log.info("%s / %s / %s: %d cached embeddings", ref.name, task.name, split, len(idx))
                    continue
            log.warning("%s: cached keys differ from the task's %s split; re-embedding", path, split)
        emb = _embed_examples(ref.encoder, [task.examples[i] for i in idx], batch_size, progress,
                              f"{ref.name} {task.name}/{split}", audio_cache)
        write_with(path, lambda f: np.savez(f, embeddings=emb, keys=keys))  # noqa: B023 (called at once)
        parts[split] = emb
    dim = next(iter(parts.values())).shape[1]
    x = np.zeros((len(task.examples), dim), dtype=np.float32)
    for split, emb in parts.items():
        x[task.indices((split,))] = emb
    return x


# ---------------------------------------------------------------------------------------- the suite


def evaluate(
    models: list[str],
    tasks: list[str],
    data_root: str | Path | None,
    out: str | Path,
    *,
    seeds: int = 3,
    device: str | None = None,
    view: str = "spec",
    features: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    plots: bool = True,
    progress: bool = True,
    int8: bool = False,
    select_layer: bool = False,
) -> list[dict]:
    """Evaluate every model spec on every task; returns one record per (model, task).

    Records are appended to ``<out>/results.jsonl``; ``<out>/results.md`` gets this call's table
    and ``<out>/plots/`` its figures. Embeddings are cached below ``cache_dir`` (default
    ``<out>/embeddings``), so a rerun only re-probes. ``int8``: models (not baselines) embed with their towers in
    int8 on the CPU (:func:`avssl.embed.embedder.quantize_int8`; probes still run on ``device``). ``select_layer``:
    models read with ``features="layers"`` are also probed block by block (:func:`run_probes`)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "embeddings"
    refs = [resolve_model(m, device="cpu" if int8 else device, view=view, features=features, int8=int8)
            for m in models]
    records: list[dict] = []
    figures: dict[str, dict[str, Any]] = {}
    for task_name in tasks:
        task = load_task(task_name, data_root)
        figures[task.name] = {"task": task, "models": {}}
        for ref in refs:
            t0 = time.perf_counter()
            x = embed_task(ref, task, cache_dir, batch_size=batch_size, progress=progress)
            t1 = time.perf_counter()
            summary, confusion = run_probes(task, x, seeds=seeds, device=device,
                                            blocks=probe_blocks(ref, select_layer))
            t2 = time.perf_counter()
            rec = {
                "model": ref.name, "task": task.name, **summary, "model_id": ref.cache_id,
                "num_classes": len(task.classes), "num_examples": len(task.examples), "embedding_dim": int(x.shape[1]),
                "folds": len(task.folds), "seeds": seeds, "split": task.description,
                "embed_seconds": round(t1 - t0, 2), "probe_seconds": round(t2 - t1, 2),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            log.info("%s on %s: %s %.2f%% +- %.2f (chance %.2f%%)", ref.name, task.name, task.metric,
                     100 * rec["mean"], 100 * rec["std"], 100 * rec["chance"])
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            records.append(rec)
            figures[task.name]["models"][ref.name] = {"x": x, "confusion": confusion}
    (out / "results.md").write_text(markdown_table(records))
    if plots:
        write_plots(records, figures, out / "plots")
    return records


# ---------------------------------------------------------------------------------------- CLI


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL_OR_BASELINE",
                        help="checkpoint paths, logmel-stats, mfcc-stats, random-init:PRESET_OR_CKPT")
    parser.add_argument("--task", action="append", default=[],
                        help=f"repeatable: {', '.join(TASKS)}, folder:PATH, csv:PATH (see docs/evaluation.md)")
    parser.add_argument("--suite", choices=["shared"], help="shared: every task whose data is under --data-root")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding the datasets (default: $AVSSL_SHARED_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("eval-results"), help="results folder")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds per fold (default 3)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--view", default="spec", help="audio tower of a checkpoint to evaluate (spec | wave)")
    parser.add_argument("--features", default=None, choices=["pooled", "layers"],
                        help="what a model's probe sees: pooled (last block) or layers (mean+std of every block); "
                        "default: the checkpoint's embed.features")
    parser.add_argument("--select-layer", action="store_true",
                        help="with layers features: the probe also reads each block alone and keeps the read-out "
                        "with the best validation score (per fold and seed)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: OUT/embeddings)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for model forward passes (torch.set_num_threads); 1 is fastest on a busy box")
    parser.add_argument("--no-baselines", action="store_true",
                        help="do not add logmel-stats, mfcc-stats and random-init:CKPT beside each checkpoint")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--int8", action="store_true",
                        help="models embed with their towers in int8 on the CPU (faster; see docs/benchmarks-embed.md)")
    parser.add_argument("--retrieval", action="append", default=[], metavar="SET",
                        help="repeatable: audio<->video retrieval of checkpoints with a video tower on videos no "
                        "pretraining saw: avepm (the 172 AVE-PM test clips under --data-root) or a folder / list "
                        "file of videos (avssl.evaluate.retrieval; writes OUT/retrieval.md)")


def with_baselines(models: list[str]) -> list[str]:
    """The given specs plus ``logmel-stats``, ``mfcc-stats`` and ``random-init:CKPT`` for each checkpoint."""
    extra = [f"random-init:{m}" for m in models if m not in BASELINES and not m.startswith("random-init:")]
    return list(dict.fromkeys([*models, *extra, *BASELINES]))


def run_eval(args: argparse.Namespace) -> int:
    data_root = args.data_root or default_data_root()
    tasks = list(args.task)
    if args.suite == "shared":
        found = shared_tasks(data_root)
        if not found:
            log.error("--suite shared: no shared-data task found under %s (set --data-root)", data_root)
            return 2
        tasks += [t for t in found if t not in tasks]
    if not tasks and not args.retrieval:
        log.error("no task given; use --task NAME (repeatable), --suite shared or --retrieval SET")
        return 2
    models = list(args.models) if args.no_baselines else with_baselines(list(args.models))
    if not models:
        log.error("no model given (and --no-baselines)")
        return 2
    unknown = [t for t in tasks if t not in TASKS and not t.startswith(("folder:", "csv:"))]
    if unknown:
        log.error("unknown task(s) %s; tasks: %s, folder:PATH, csv:PATH", ", ".join(unknown), ", ".join(TASKS))
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        if args.retrieval:  # a missing set fails now, before any model is embedded
            from avssl.evaluate.retrieval import retrieval_inputs

            for name in args.retrieval:
                retrieval_inputs(name, data_root)
        if tasks:
            records = evaluate(models, tasks, data_root, args.out, seeds=args.seeds, device=args.device,
                               view=args.view, features=args.features, cache_dir=args.cache_dir,
                               batch_size=args.batch_size, plots=not args.no_plots, int8=args.int8,
                               select_layer=args.select_layer)
            log.info("%d results in %.1f s; table: %s\n%s", len(records), time.perf_counter() - t0,
                     args.out / "results.md", markdown_table(records))
        if args.retrieval:
            from avssl.evaluate.retrieval import retrieval_table, run_retrieval

            found = run_retrieval(models, args.retrieval, data_root, args.out)
            if not found:
                log.error("--retrieval: no model with an audio and a video tower among %s", ", ".join(models))
                return 2
            log.info("retrieval: %s\n%s", args.out / "retrieval.md", retrieval_table(found))
    except (FileNotFoundError, ValueError) as e:  # missing checkpoint, dataset or videos: the message says which
        log.error("%s", e)
        return 2
    return 0
