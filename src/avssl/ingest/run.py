"""``avssl ingest``: a pile of videos -> WebDataset shards of aligned audio + low-resolution frames.

Inputs are media files, folders (searched recursively for media suffixes), list files (``.txt`` /
``.lst``: one path per line, relative to the list file, ``#`` comments) and AudioSet/VGGSound
segment CSVs (``.csv``; see :func:`read_segments`). Every input becomes one or more *items* (a
file, or a segment of one); the item list is sorted, so it is the same on every machine, and
``num_nodes``/``node_rank`` take every ``num_nodes``-th item starting at ``node_rank``.

Items are decoded in parallel, one clip at a time (:class:`avssl.media.video.ClipReader`: memory is
bounded by the clip, not the video), cut into consecutive clips of ``ingest.clip_seconds`` (a
trailing piece shorter than ``ingest.min_seconds`` is dropped and counted); each item's encoded
samples go to a spool file, and from there, in input order (so the output does not depend on the
worker count or schedule), into ``NNNNNN.tar`` shards of ``ingest.samples_per_shard`` samples
(shard ``k`` of node ``r`` is number ``k * num_nodes + r``). A shard is written sample by sample
as ``NNNNNN.tar.tmp``, fsynced and renamed when complete; then
the node's progress file ``.ingest/node-RRRR-of-NNNN.json`` records it with the position of the
next sample, so re-running the same command resumes after the last finished shard. When every
node is done, ``manifest.json`` is written (see :func:`avssl.data.shards.read_manifest`). Tar headers
carry no times or owners, so the same inputs and parameters give byte-identical shards.

Any input costs at most itself: items are decoded in worker processes (:func:`avssl.ingest.procpool.imap_guarded`,
also with one worker), so an item whose worker dies (a segfault or abort in FFmpeg, an out-of-memory
kill) or that takes longer than ``ingest.file_timeout`` is skipped as ``crashed`` / ``timeout``, its
worker replaced, and the run goes on. Such items are recorded in the progress file and not tried again
by a re-run unless ``retry_failed`` (``--retry-failed``) is given. ``workers=0`` decodes in the calling
process, unprotected (for debugging).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

from avssl.config import Config, load_config, save_config
from avssl.ingest.inputs import Item, collect_items, media_files, read_segments  # noqa: F401  (re-exported)
from avssl.ingest.progress import (STATE_DIR, ItemResult, NodeShards, forget_failed, load_state, merge_manifest,
                              save_state, state_path)  # fmt: skip
from avssl.ingest.procpool import Failure, imap_guarded
from avssl.data.shards import MANIFEST, SCHEMA_VERSION, Clip, encode_sample
from avssl.media.video import ClipReader, MediaError

log = logging.getLogger(__name__)

MIN_SECONDS_TOLERANCE = 0.01  # container timestamps are often rounded to 1 ms per frame


# ----------------------------------------------------------------------------- one item


def _check_params(cfg: Config) -> None:
    ic = cfg.ingest
    for name, value in (("clip_seconds * video.fps", ic.clip_seconds * cfg.video.fps),
                        ("clip_seconds * audio.sample_rate", ic.clip_seconds * cfg.audio.sample_rate)):  # fmt: skip
        if abs(value - round(value)) > 1e-6:
            raise ValueError(f"ingest.clip_seconds={ic.clip_seconds}: {name} = {value} must be a whole number")
    if ic.audio_only not in ("skip", "keep"):
        raise ValueError(f"ingest.audio_only={ic.audio_only!r}: use 'skip' or 'keep'")
    if not 0 < ic.min_seconds <= ic.clip_seconds:
        raise ValueError(f"need 0 < ingest.min_seconds <= ingest.clip_seconds, got {ic.min_seconds}, {ic.clip_seconds}")


def process_item(item: Item, cfg: Config, spool: Path, threads: int = 0) -> ItemResult:
    """Decode one item clip by clip and append each clip, encoded as a sample, to the file ``spool``.

    Memory is bounded by a clip. Never raises for a bad input: its spool file is then removed and
    the result says why it was skipped (``error`` for anything unexpected, logged with its traceback).
    """
    try:
        return _spool_item(item, cfg, spool, threads)
    except MediaError as e:
        skipped = {"path": item.path, "reason": e.reason, "detail": e.detail}
    except Exception as e:  # a bug, or an input that FFmpeg or a codec chokes on: lose this input only
        log.warning("%s: unexpected error; the input is skipped", item.path, exc_info=True)
        skipped = {"path": item.path, "reason": "error", "detail": f"{type(e).__name__}: {e}"}
    spool.unlink(missing_ok=True)
    return ItemResult(skipped=skipped)


def _spool_item(item: Item, cfg: Config, spool: Path, threads: int) -> ItemResult:
    ic, sr, fps = cfg.ingest, cfg.audio.sample_rate, cfg.video.fps
    reader = ClipReader(item.path, sr, fps, cfg.video.size, ic.clip_seconds, item.start, item.duration,
                        audio_only=ic.audio_only == "keep", threads=threads)  # fmt: skip
    result = ItemResult()
    clip_n = int(round(ic.clip_seconds * sr))
    with open(spool, "wb") as f:
        for k, (audio, frames) in enumerate(reader):
            seconds = len(audio) / sr
            if seconds < ic.min_seconds - MIN_SECONDS_TOLERANCE:
                result.dropped_short += 1
                continue
            meta: dict[str, Any] = {"source": item.path, "video_id": item.video_id, "clip": k,
                                    "start": round(item.start + k * clip_n / sr, 6), "duration": round(seconds, 6)}  # fmt: skip
            if item.labels:
                meta["labels"] = list(item.labels)
            clip = Clip(f"{item.video_id}-{k:04d}", audio, sr, frames, fps, meta)
            sample = encode_sample(clip, ic.frame_format, ic.jpeg_quality, ic.audio_format)
            pickle.dump(sample, f, protocol=pickle.HIGHEST_PROTOCOL)
            result.seconds.append(seconds)
    if reader.duration < ic.min_seconds - MIN_SECONDS_TOLERANCE:
        spool.unlink()
        return ItemResult(skipped={"path": item.path, "reason": "too-short", "detail": f"{reader.duration:.3f} s"})
    return result


def _remove_spools(out: Path, rank: int) -> None:
    for folder in (out / STATE_DIR).glob(f"spool-{rank:04d}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _process_star(args: tuple[Item, Config, Path, int]) -> ItemResult:
    return process_item(*args)  # looked up at call time: tests monkeypatch process_item (workers are forked)


# ----------------------------------------------------------------------------- shards


def _params(cfg: Config, num_nodes: int) -> dict[str, Any]:
    ic = cfg.ingest
    return {
        "schema": SCHEMA_VERSION, "sample_rate": cfg.audio.sample_rate, "fps": cfg.video.fps, "size": cfg.video.size,
        "clip_seconds": ic.clip_seconds, "min_seconds": ic.min_seconds, "frame_format": ic.frame_format,
        "jpeg_quality": ic.jpeg_quality, "audio_format": ic.audio_format, "audio_only": ic.audio_only,
        "samples_per_shard": ic.samples_per_shard,
        "num_nodes": num_nodes,
    }  # fmt: skip


# ----------------------------------------------------------------------------- driver


def ingest(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: Config,
    *,
    num_nodes: int = 1,
    node_rank: int = 0,
    workers: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Ingest ``inputs`` into shards under ``out_dir``; resumes a previous run of the same command.

    Returns the manifest (once every node has finished; before that, this node's summary with
    ``"complete": False``). Bad inputs are recorded in ``skipped`` with a reason, never raised.
    ``workers`` (default ``ingest.workers``): decoding processes, 0 for none (inline, unprotected).
    Items that crashed or timed out in an earlier run are skipped again unless ``retry_failed``.
    """
    from tqdm import tqdm

    _check_params(cfg)
    if not 0 <= node_rank < num_nodes:
        raise ValueError(f"need 0 <= node_rank < num_nodes, got node_rank={node_rank}, num_nodes={num_nodes}")
    out = Path(out_dir)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    all_items, unreadable = collect_items(inputs)
    items = all_items[node_rank::num_nodes]
    inputs_sha = hashlib.sha1(json.dumps([[it.path, it.start, it.duration] for it in items]).encode()).hexdigest()
    params = _params(cfg, num_nodes)
    state = load_state(out, node_rank, num_nodes, params, inputs_sha)
    state["unreadable"] = unreadable if node_rank == 0 else []
    if retry_failed and (n := forget_failed(state)):
        log.info("trying again %d inputs that crashed or timed out before", n)
        (out / MANIFEST).unlink(missing_ok=True)  # first: the run is no longer complete
        save_state(state_path(out, node_rank, num_nodes), state)  # before the shards it dropped are removed
    next_item, next_clip = state["shards"][-1]["next"] if state["shards"] else (0, 0)
    finished = {s["name"] for s in state["shards"]}
    for stale in list(out.glob("*.tar.tmp")) + [p for p in out.glob("*.tar") if p.name not in finished]:
        if re.fullmatch(r"\d{6}", stale.name.split(".")[0]) and int(stale.name.split(".")[0]) % num_nodes == node_rank:
            stale.unlink()  # an interrupted shard of this node: it will be written again
    if not state["complete"]:
        workers = cfg.ingest.workers if workers is None else workers
        if workers < 0:
            raise ValueError(f"workers={workers}: use 0 (decode in this process) or more")
        todo = items[next_item:]
        known = {int(i) - next_item: e for i, e in state["failed"].items() if int(i) >= next_item}
        if known:
            log.info("skipping %d inputs that crashed or timed out before (--retry-failed tries them again)",
                     len(known))  # fmt: skip
        log.info("ingesting %d of %d inputs (node %d of %d) with %d workers into %s",
                 len(todo), len(all_items), node_rank, num_nodes, workers, out)  # fmt: skip
        _remove_spools(out, node_rank)  # an interrupted run's
        spool_dir = out / STATE_DIR / f"spool-{node_rank:04d}-{os.getpid()}"  # not shared with its stray workers
        spool_dir.mkdir(exist_ok=True)
        shards = NodeShards(out, state, state_path(out, node_rank, num_nodes), node_rank, num_nodes,
                             cfg.ingest.samples_per_shard)  # fmt: skip
        bar = tqdm(total=len(todo), unit="video", disable=not progress, desc="ingest")
        with closing(_run(todo, cfg, workers, spool_dir, known)) as results:  # closing: no worker outlives an error
            for offset, (result, spool) in enumerate(results):
                shards.add_item(next_item + offset, next_clip if offset == 0 else 0, result, spool)
                bar.update(1)
                bar.set_postfix(clips=shards.total)
        bar.close()
        shards.finish(len(items))
        _remove_spools(out, node_rank)
    manifest = merge_manifest(out, num_nodes)
    summary = manifest or {
        "complete": False, "total_samples": sum(s["samples"] for s in state["shards"]),
        "skipped": [e for s in state["shards"] for e in s["skipped"]] + state["tail"] + state["unreadable"],
    }  # fmt: skip
    _log_summary(summary, out)
    return summary


def _run(
    items: list[Item], cfg: Config, workers: int, spool_dir: Path, known: dict[int, dict[str, str]]
) -> Iterator[tuple[ItemResult, Path]]:
    """``(result, spool file)`` of each item, in item order; ``known`` (item position -> skip record) are not
    decoded again. Decoded in ``workers`` processes (inline when 0), at most ``2 * workers`` ahead of the item
    being yielded; items that finish early wait in their spool files, not in memory, so the output does not
    depend on the worker count or schedule. A worker's crash or a timeout becomes the item's skip record."""
    spools = [spool_dir / f"{i:08d}.spool" for i in range(len(items))]
    # a worker decodes and scales on one thread: parallelism comes from the workers, and threads cost CPU
    # (one worker with a thread per core used ~20 % more CPU per clip; docs/benchmarks-ingest.md)
    tasks = [(item, cfg, spool, 1 if workers else 0) for i, (item, spool) in enumerate(zip(items, spools))
             if i not in known]  # fmt: skip
    if workers == 0:
        outcomes: Iterator[ItemResult | Failure] = (process_item(*task) for task in tasks)
    else:
        import av  # noqa: F401  (the codecs' modules, imported once here rather than in every worker)
        import soundfile  # noqa: F401
        import soxr  # noqa: F401
        from PIL import Image

        Image.init()
        outcomes = imap_guarded(_process_star, tasks, workers, cfg.ingest.file_timeout or None)
    with closing(outcomes):
        for i, (item, spool) in enumerate(zip(items, spools)):
            if i in known:
                yield ItemResult(skipped=known[i]), spool
                continue
            out = next(outcomes)
            if isinstance(out, Failure):
                detail = out.detail + (" (ingest.file_timeout)" if out.reason == "timeout" else "")
                log.warning("%s: %s, %s; the input is skipped", item.path, out.reason, detail)
                out = ItemResult(skipped={"path": item.path, "reason": out.reason, "detail": detail})
            yield out, spool


def _log_summary(summary: dict[str, Any], out: Path) -> None:
    reasons = Counter(e["reason"] for e in summary["skipped"])
    log.info(
        "%s: %d clips%s; skipped %d inputs%s%s",
        out, summary["total_samples"],
        f" ({summary['total_hours']:.3f} h in {len(summary['shards'])} shards)" if "shards" in summary else "",
        sum(reasons.values()), "".join(f", {r}: {n}" for r, n in sorted(reasons.items())),
        f"; dropped {summary['dropped_short_clips']} short clips" if summary.get("dropped_short_clips") else "",
    )  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="media files, folders, list files (.txt), segment CSVs (.csv)")
    parser.add_argument("--out", required=True, help="shard folder (created; re-running resumes)")
    parser.add_argument("--config", default=None, help="preset name or YAML file (default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: ingest.workers); 0: decode in this process, unprotected "
                        "against crashes and stalls (debugging)")  # fmt: skip
    parser.add_argument("--num-nodes", type=int, default=1, help="split the inputs over this many nodes")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's index in [0, num-nodes)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="try again the inputs that crashed or timed out in an earlier run of this command")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_ingest(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    summary = ingest(
        args.inputs, args.out, cfg, num_nodes=args.num_nodes, node_rank=args.node_rank,
        workers=args.workers, progress=not args.no_progress, retry_failed=args.retry_failed,
    )  # fmt: skip
    if summary["total_samples"] == 0:
        log.error("nothing could be ingested (see the skipped inputs above)")
        return 1
    return 0
