"""``avssl sweep``: experiment grids. Each cell = one pretraining run at fixed steps + the linear-probe
evaluation on the tasks; the baselines (``logmel-stats``, ``mfcc-stats``, ``random-init``) are cells too.

A sweep is a base config (a preset plus ``--set`` overrides) and a list of variants: the named cells
of a recipe (``configs/recipes/NAME.yaml``) and/or the cartesian product of ``--grid key=v1,v2``,
each repeated for ``--seeds`` seeds (``train.seed`` = 0, 1, ...). Budgets are optimizer steps
(``train.steps``), never seconds.

Layout of ``--out`` (every file is rebuilt from the cells, so a rerun or a grown grid never redoes a
finished cell)::

    runs/<train key>/      the pretraining run (checkpoint.pt, metrics.jsonl, config.yaml); the key is
                           the hash of the resolved config without its inference-only ``embed`` section
                           and the data, so cells that differ only in ``embed.*`` share one run
    cells/<cell key>/      config.yaml, cell.json (name, overrides, seed, status done/failed + error,
                           compute, per-task results)
    embeddings/            the evaluation's embedding cache (avssl.evaluate.run)
    results.jsonl          one row per (cell, task)
    results.md             the ablation table: variants as rows; tasks, their mean and compute as columns
    plots/                 quality vs compute, quality vs steps, per-task bars

``--cell K`` runs only cell ``K`` of ``--list`` (training cells first, then baselines), so a cluster
job array runs one cell per job; each job may itself run under ``torchrun``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from avssl.train import distributed as dist
from avssl.atomic import write_text
from avssl.evaluate.baselines import BASELINES
from avssl.config import ConfigError, apply_overrides, load_config, save_config
from avssl.overrides import nest, parse_set
from avssl.sweep.plan import Cell, expand, load_recipe, parse_grid, plan, split_values, train_key
from avssl.sweep.report import write_report

__all__ = ["Cell", "expand", "load_recipe", "parse_grid", "plan", "run_cell", "split_values", "sweep", "train_key"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "cpu"
LOCK_POLL_SECONDS = 30.0


class SweepStopped(KeyboardInterrupt):
    """A signal stopped a pretraining run (which saved a checkpoint): the whole sweep stops; a rerun resumes."""


# ------------------------------------------------------------------------------------ running a cell


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, default=str))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _run_lock(run: Path) -> Iterator[None]:
    """Hold ``run/.lock`` (``host pid``) while training ``run``: a process that finds it held waits (another
    job is training the same run; its ``done.json`` is then reused). A lock left by a dead process on this
    host is taken over. Under torchrun only the main process locks (the others wait for it in pretrain)."""
    if not dist.is_main_process():
        yield
        return
    run.mkdir(parents=True, exist_ok=True)
    lock, me = run / ".lock", f"{socket.gethostname()} {os.getpid()}"
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            host, _, pid = (lock.read_text() if lock.exists() else "").partition(" ")
            if host == socket.gethostname() and pid.strip().isdigit() and not _alive(int(pid)):
                log.warning("%s: taking over the lock of a process that is gone (%s)", run, pid.strip())
                lock.unlink(missing_ok=True)
                continue
            if not waited:
                log.info("%s is being trained by %s; waiting for it", run, f"{host} {pid}".strip())
                waited = True
            time.sleep(LOCK_POLL_SECONDS)
    with os.fdopen(fd, "w") as f:
        f.write(me)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pretrain(cell: Cell, data: str, out: Path, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or reuse) the cell's run; returns its checkpoint and compute figures."""
    from avssl.checkpoint import load_checkpoint
    from avssl.train.flops import train_step_flops
    from avssl.checkpoint import CHECKPOINT
    from avssl.train.pretrain import pretrain

    run = out / "runs" / train_key(cell.cfg, data)
    done = run / "done.json"
    with _run_lock(run):  # cells that differ only in embed.* share this run: one process trains it
        if done.is_file():
            return run / CHECKPOINT, json.loads(done.read_text())
        t0 = time.perf_counter()
        ckpt = pretrain(cell.cfg, data, run, resume=(run / CHECKPOINT).exists(), progress=progress)
        seconds = time.perf_counter() - t0
    steps = int(load_checkpoint(ckpt)["step"])
    if steps < cell.cfg.train.steps:  # SIGTERM/SIGINT: the run saved a checkpoint; stop the sweep, not just the cell
        raise SweepStopped(f"pretraining stopped at step {steps} of {cell.cfg.train.steps}; rerun the sweep to resume")
    gflops = train_step_flops(cell.cfg)["gflops_per_step"]
    compute = {"steps": steps, "gflops_per_step": gflops, "tflops": gflops * steps / 1e3, "train_seconds": seconds}
    if dist.is_main_process():
        _write_json(done, compute)
    return ckpt, compute


def _model_spec(cell: Cell, ckpt: Path | None, out: Path) -> str:
    if cell.kind == "train":
        return str(ckpt)
    if cell.model in BASELINES:
        return cell.model
    path = out / "cells" / cell.key / "architecture.yaml"
    save_config(cell.cfg, path)
    return f"random-init:{path}"


def _evaluate(cell: Cell, spec: str, tasks: dict[str, Any], out: Path, probe_seeds: int,
              audio_cache: Any = None) -> dict[str, Any]:
    from avssl.evaluate.run import embed_task, probe_blocks, resolve_model
    from avssl.evaluate.probe import run_probes

    # cells that share a run may differ in how they read it (window, features): the cell's config decides
    ref = resolve_model(spec, seed=cell.seed, features=cell.cfg.embed.features,
                        window_seconds=cell.cfg.embed_window_seconds)
    results = {}
    for name, task in tasks.items():
        t0 = time.perf_counter()
        x = embed_task(ref, task, out / "embeddings", progress=False, audio_cache=audio_cache)
        summary, _ = run_probes(task, x, seeds=probe_seeds, blocks=probe_blocks(ref, cell.cfg.embed.select_layer))
        results[name] = {"metric": summary["metric"], "mean": summary["mean"], "std": summary["std"],
                         "chance": summary["chance"], "embedding_dim": int(x.shape[1]),
                         "seconds": round(time.perf_counter() - t0, 1)}
        if "readouts" in summary:
            results[name]["readouts"] = summary["readouts"]
        log.info("%s (seed %d) on %s: %s %.2f%%", cell.name, cell.seed, name, summary["metric"], 100 * summary["mean"])
    return results


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``avssl VERSION+SOURCEHASH``: the package version and a hash of its Python sources, recorded in every cell."""
    import hashlib

    from avssl import __version__

    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:10]}"


def _retrieval(cell: Cell, ckpt: Path | None, sets: list[str], data_root: str | Path | None,
               clip_cache: dict) -> dict[str, Any]:
    """Audio <-> video retrieval (:mod:`avssl.evaluate.retrieval`) of a training cell whose model has a video tower, on
    every set; empty for other cells."""
    from avssl.checkpoint import model_from_checkpoint
    from avssl.evaluate.retrieval import evaluate_retrieval

    if not _needs_retrieval(cell, sets):
        return {}
    loaded = model_from_checkpoint(ckpt)
    results = {}
    for name in sets:
        res = evaluate_retrieval(*loaded, name, data_root, progress=False, clip_cache=clip_cache)
        results[name] = {k: v for k, v in res.items() if k != "skipped"} | {"skipped": len(res["skipped"])}
        log.info("%s (seed %d) retrieval on %s: a2v top-5 %.1f%% (chance %.1f%%)", cell.name, cell.seed, name,
                 100 * res["a2v_top5"], 100 * res["chance_top5"])
    return results


def _needs_retrieval(cell: Cell, sets: list[str]) -> bool:
    from avssl.train.retrieval import has_retrieval_towers

    return cell.kind == "train" and has_retrieval_towers(cell.cfg.model.views) and bool(sets)


def run_cell(cell: Cell, data: str, tasks: dict[str, Any], out: Path, *, probe_seeds: int = 3,
             progress: bool = True, audio_cache: Any = None, retrieval: list[str] | None = None,
             data_root: str | Path | None = None, clip_cache: dict | None = None) -> dict[str, Any]:
    """Run one cell unless ``cells/<key>/cell.json`` already holds every task (and every ``retrieval`` set, for
    a model with a video tower); never raises for a failing cell: the error is recorded (status ``failed``)
    and returned."""
    retrieval = list(retrieval or [])
    folder = out / "cells" / cell.key
    record = _read_json(folder / "cell.json")
    made_by = {"probe_seeds": probe_seeds, "data_root": str(Path(data_root).resolve()) if data_root else None}
    if record and {k: record.get(k) for k in made_by} != made_by:  # other probe seeds or task data: re-evaluate
        log.warning("cell %s (seed %d) was evaluated with %s; evaluating again with %s", cell.name, cell.seed,
                    {k: record.get(k) for k in made_by}, made_by)
        same_data = record.get("data_root") == made_by["data_root"]  # retrieval does not use the probe seeds
        record = {**record, "results": {}, "retrieval": record.get("retrieval", {}) if same_data else {},
                  "status": "stale"}
    if record and record.get("code") not in (None, code_version()):
        log.warning("cell %s (seed %d) was made by avssl %s; this is %s: its results are kept (delete %s to redo it)",
                    cell.name, cell.seed, record.get("code"), code_version(), folder)
    want_sets = set(retrieval) if _needs_retrieval(cell, retrieval) else set()
    if (record and record.get("status") == "done" and set(tasks) <= set(record.get("results", {}))
            and want_sets <= set(record.get("retrieval", {}))):
        return record
    record = {"name": cell.name, "kind": cell.kind, "model": cell.model, "seed": cell.seed, "key": cell.key,
              "overrides": cell.overrides, "results": (record or {}).get("results", {}),
              "retrieval": (record or {}).get("retrieval", {}), **made_by,
              "code": (record or {}).get("code") if (record or {}).get("results") else code_version()}
    if dist.is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cell.cfg, folder / "config.yaml")
    try:
        ckpt, compute = (None, {}) if cell.kind == "baseline" else _pretrain(cell, data, out, progress)
        record.update(compute)
        if cell.kind == "train":
            record["run"] = str(Path("runs") / train_key(cell.cfg, data))
        if dist.is_main_process():
            todo = {n: t for n, t in tasks.items() if n not in record["results"]}
            record["results"].update(_evaluate(cell, _model_spec(cell, ckpt, out), todo, out, probe_seeds,
                                               audio_cache))
            sets = [x for x in retrieval if x not in record["retrieval"]]
            try:  # a failing retrieval set leaves the probe results standing; a rerun tries it again
                record["retrieval"].update(_retrieval(cell, ckpt, sets, data_root,
                                                      clip_cache if clip_cache is not None else {}))
                record.pop("retrieval_error", None)
            except (OSError, ValueError) as e:
                log.error("cell %s (seed %d): retrieval failed: %s", cell.name, cell.seed, e)
                record["retrieval_error"] = f"{type(e).__name__}: {e}"
        record.update(status="done", error=None)
    except Exception as e:  # a failing cell is recorded; the others go on
        log.error("cell %s (seed %d) failed: %s", cell.name, cell.seed, e)
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    if dist.is_main_process():
        _write_json(folder / "cell.json", record)
    dist.barrier()
    return record


# ------------------------------------------------------------------------------------ the sweep


def sweep(cells: list[Cell], data: str, task_names: list[str], data_root: str | Path | None, out: str | Path, *,
          only: int | None = None, probe_seeds: int = 3, progress: bool = True,
          retrieval: list[str] | None = None) -> list[dict[str, Any]]:
    """Run ``cells`` (or only ``cells[only]``), then rebuild ``results.jsonl``, ``results.md`` and the
    plots from every finished cell in ``out``. ``retrieval``: sets of videos (``avepm``, a folder...) on which
    every trained model with a video tower is also scored by audio <-> video retrieval (a column of the
    table). Returns the records of this sweep's cells."""
    from avssl.evaluate.run import AudioCache
    from avssl.evaluate.tasks import load_task

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = {name: load_task(name, data_root) for name in task_names}
    if retrieval:  # a missing set fails now, not after hours of training
        from avssl.evaluate.retrieval import retrieval_inputs

        for name in retrieval:
            retrieval_inputs(name, data_root)
    chosen = cells if only is None else [cells[only]]
    audio_cache, clip_cache = AudioCache(), {}  # every cell probes the same clips: decode them once
    for i, cell in enumerate(chosen):
        log.info("cell %d/%d: %s (seed %d, %s)", i + 1, len(chosen), cell.name, cell.seed, cell.key)
        run_cell(cell, data, tasks, out, probe_seeds=probe_seeds, progress=progress, audio_cache=audio_cache,
                 retrieval=retrieval, data_root=data_root, clip_cache=clip_cache)
    records = [r for c in cells if (r := _read_json(out / "cells" / c.key / "cell.json"))]
    if dist.is_main_process():
        write_report(records, task_names, out, retrieval or [])
    return records


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help="recipe name (modality | resolution | batch-mixing) or a recipe YAML file")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a grid axis (repeatable; values are YAML, commas inside [...] do not split)")
    parser.add_argument("--data", required=True, help="training shards (a folder with manifest.json)")
    parser.add_argument("--val-data", default=None, metavar="SHARDS",
                        help="held-out shards every pretraining run scores as it goes (data.val; not part of the keys)")
    parser.add_argument("--tasks", required=True, help="comma-separated evaluation tasks (see avssl eval --help)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding the task datasets (default: $AVSSL_SHARED_DATA or ../shared/data)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"base preset or YAML (default {DEFAULT_CONFIG}: 2 CPU cores; paper for the paper's scale)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base override, repeatable")
    parser.add_argument("--seeds", type=int, default=2, help="pretraining seeds per variant (default 2)")
    parser.add_argument("--probe-seeds", type=int, default=3, help="probe seeds per fold (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (a rerun reuses finished cells)")
    parser.add_argument("--cell", type=int, default=None, help="run only cell K of --list (cluster job arrays)")
    parser.add_argument("--list", action="store_true", help="print the cells with their indices and exit")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (torch.set_num_threads); 1 is fastest on a busy machine")
    parser.add_argument("--retrieval", default="", metavar="SETS",
                        help="comma-separated: also score every trained model with a video tower by audio<->video "
                        "retrieval on these videos (avepm: the AVE-PM test clips; or a folder / list file)")
    parser.add_argument("--no-progress", action="store_true")


def run_sweep(args: argparse.Namespace) -> int:
    from avssl.evaluate.tasks import default_data_root

    try:
        recipe = load_recipe(args.recipe) if args.recipe else {}
        if not recipe and not args.grid:
            raise ConfigError("give a recipe (modality, resolution, batch-mixing, or a YAML file) or a --grid")
        base = apply_overrides(load_config(args.config), nest(recipe.get("set", {})))
        base = apply_overrides(base, parse_set(list(args.set)))  # the user's --set wins over the recipe's
        if args.val_data is not None:
            base = apply_overrides(base, {"data": {"val": str(Path(args.val_data).resolve())}})
        data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
        cells = plan(base, expand(base, recipe, parse_grid(args.grid), args.seeds), args.seeds, data)
    except ConfigError as e:  # bad recipe, grid key or value: nothing has run yet
        log.error("avssl sweep: %s", e)
        return 2
    if args.list:
        for i, c in enumerate(cells):
            print(f"{i}\t{c.kind}\t{c.name}\tseed {c.seed}\t{c.key}")
        return 0
    if args.cell is not None and not 0 <= args.cell < len(cells):
        log.error("--cell %d: the sweep has cells 0..%d (see --list)", args.cell, len(cells) - 1)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        records = sweep(cells, data, tasks, args.data_root or default_data_root(), args.out, only=args.cell,
                        probe_seeds=args.probe_seeds, progress=not args.no_progress,
                        retrieval=[x.strip() for x in args.retrieval.split(",") if x.strip()])
    except (KeyError, FileNotFoundError) as e:  # an unknown task or missing task data: nothing has run yet
        log.error("avssl sweep: %s", e)
        return 2
    except SweepStopped as e:
        log.warning("avssl sweep: %s", e)
        return 130
    failed = [r for r in records if r.get("status") == "failed"]
    for r in failed:
        log.error("failed: %s (seed %s): %s", r["name"], r["seed"], r["error"])
    log.info("%d cells done, %d failed; table: %s", sum(r.get("status") == "done" for r in records), len(failed),
             args.out / "results.md")
    return 1 if failed else 0
