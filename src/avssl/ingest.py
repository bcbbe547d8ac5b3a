"""``avssl ingest``: a pile of videos -> WebDataset shards of aligned audio + low-resolution frames.

Inputs are media files, folders (searched recursively for media suffixes), list files (``.txt`` /
``.lst``: one path per line, relative to the list file, ``#`` comments) and AudioSet/VGGSound
segment CSVs (``.csv``; see :func:`read_segments`). Every input becomes one or more *items* (a
file, or a segment of one); the item list is sorted, so it is the same on every machine, and
``num_nodes``/``node_rank`` take every ``num_nodes``-th item starting at ``node_rank``.

Items are decoded in parallel (ordered ``imap``: the output does not depend on the worker count),
cut into consecutive clips of ``ingest.clip_seconds`` (a trailing piece shorter than
``ingest.min_seconds`` is dropped and counted) and written in input order to ``NNNNNN.tar``
shards of ``ingest.samples_per_shard`` samples (shard ``k`` of node ``r`` is number
``k * num_nodes + r``). A shard is written as ``NNNNNN.tar.tmp`` and renamed when complete; then
the node's progress file ``.ingest/node-RRRR-of-NNNN.json`` records it with the position of the
next sample, so re-running the same command resumes after the last finished shard. When every
node is done, ``manifest.json`` is written (see :func:`avssl.shards.read_manifest`). Tar headers
carry no times or owners, so the same inputs and parameters give byte-identical shards.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .audio import LIST_SUFFIXES, MEDIA_SUFFIXES
from .config import Config, load_config, save_config
from .shards import MANIFEST, SCHEMA_VERSION, Clip, encode_sample
from .video import MediaError, decode_video, frame_count

log = logging.getLogger(__name__)

VGGSOUND_SEGMENT_SECONDS = 10.0  # vggsound.csv rows give only a start; segments are 10 s long
STATE_DIR = ".ingest"
MIN_SECONDS_TOLERANCE = 0.01  # container timestamps are often rounded to 1 ms per frame


@dataclass(frozen=True)
class Item:
    """One unit of work: a media file, or the segment ``[start, start + duration)`` of it."""

    video_id: str
    path: str
    start: float = 0.0
    duration: float | None = None
    labels: tuple[str, ...] = ()


@dataclass
class ItemResult:
    """What one item produced: encoded samples (with seconds each), or why it was skipped."""

    samples: list[tuple[dict[str, bytes], float]] = field(default_factory=list)
    skipped: dict[str, str] | None = None
    dropped_short: int = 0


# ----------------------------------------------------------------------------- inputs


def _sanitize(text: str) -> str:
    """A WebDataset-safe id: no dots or slashes (they split keys)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())


def read_segments(csv_path: str | Path) -> list[tuple[str, float, float, tuple[str, ...]]]:
    """Rows ``(video_id, start_s, end_s, labels)`` of an AudioSet- or VGGSound-style CSV.

    AudioSet: ``YTID, start_seconds, end_seconds, "label1,label2"`` with ``#`` comment lines.
    VGGSound: ``YTID,start,label,split`` (no end: segments are 10 s). Header rows are skipped.
    """
    rows = []
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#") or len(row) < 2:
                continue
            try:
                start = float(row[1])
            except ValueError:
                if line_no == 1:
                    continue  # header
                raise ValueError(f"{csv_path}:{line_no}: start {row[1]!r} is not a number") from None
            try:
                end = float(row[2]) if len(row) > 2 else start + VGGSOUND_SEGMENT_SECONDS
                labels = row[3] if len(row) > 3 else ""
            except ValueError:  # VGGSound: the third column is the label
                end, labels = start + VGGSOUND_SEGMENT_SECONDS, row[2]
            label_list = tuple(x.strip() for x in labels.split(",") if x.strip())
            rows.append((row[0].strip(), start, end, label_list))
    return rows


def _segment_items(csv_path: Path, pool: list[Path]) -> tuple[list[Item], list[dict[str, str]]]:
    """Map segment rows to local files: ``ID.ext`` (full video: cut the segment) or an already cut
    ``ID_STARTMS_ENDMS.ext`` / ``ID_START_END.ext`` (VGGSound/AudioSet download names: whole file)."""
    by_stem: dict[str, Path] = {}
    for p in pool:
        by_stem.setdefault(p.stem, p)
    items, skipped = [], []
    for vid, start, end, labels in read_segments(csv_path):
        seg_id = f"{vid}_{int(round(start * 1000))}_{int(round(end * 1000))}"
        precut = [seg_id, f"{vid}_{int(start)}_{int(end)}", f"{vid}_{start:.3f}_{end:.3f}"]
        if vid in by_stem:
            items.append(Item(_sanitize(seg_id), str(by_stem[vid]), start, end - start, labels))
        elif found := next((by_stem[s] for s in precut if s in by_stem), None):
            items.append(Item(_sanitize(seg_id), str(found), 0.0, end - start, labels))
        else:
            skipped.append({"path": f"{csv_path}:{vid}", "reason": "not-found", "detail": f"no file named {vid}.* or {seg_id}.*"})
    return items, skipped


def collect_items(inputs: list[str | Path]) -> tuple[list[Item], list[dict[str, str]]]:
    """Inputs -> sorted, de-duplicated items with unique ids, plus unreadable inputs as skip records.

    With a segment CSV among the inputs, the other inputs (and the CSV's folder) are only where its
    videos are looked up; only the listed segments are ingested.
    """
    files: list[tuple[str, Path]] = []  # (id stem, path)
    csvs: list[Path] = []
    skipped: list[dict[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            skipped.append({"path": str(p), "reason": "unreadable", "detail": "no such file or directory"})
        elif p.is_dir():
            files += [(str(f.relative_to(p).with_suffix("")), f) for f in _media_files(p)]
        elif p.suffix.lower() == ".csv":
            csvs.append(p)
        elif p.suffix.lower() in LIST_SUFFIXES:
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    f = Path(line) if Path(line).is_absolute() else p.parent / line
                    if f.exists():
                        files.append((str(Path(line).with_suffix("")), f))
                    else:
                        skipped.append({"path": str(f), "reason": "unreadable", "detail": f"listed in {p}, not found"})
        else:
            files.append((p.stem, p))
    items: list[Item] = []
    if csvs:
        pool = sorted({f for _, f in files} | {f for c in csvs for f in _media_files(c.parent)})
        for c in csvs:
            found, missing = _segment_items(c, pool)
            items += found
            skipped += missing
    else:
        seen = set()
        for stem, f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                items.append(Item(_sanitize(stem), str(f)))
    items = sorted(set(items), key=lambda it: (it.video_id, it.path, it.start))
    counts = Counter(it.video_id for it in items)
    items = [
        it if counts[it.video_id] == 1 else
        Item(f"{it.video_id}_{hashlib.sha1(f'{it.path}@{it.start}'.encode()).hexdigest()[:8]}", it.path, it.start, it.duration, it.labels)
        for it in items
    ]  # fmt: skip
    return sorted(items, key=lambda it: it.video_id), skipped


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


def process_item(item: Item, cfg: Config, threads: int = 0) -> ItemResult:
    """Decode one item, cut it into clips and encode each as a sample. Never raises for bad media."""
    ic, sr, fps = cfg.ingest, cfg.audio.sample_rate, cfg.video.fps
    try:
        dec = decode_video(
            item.path, sr, fps, cfg.video.size, item.start, item.duration,
            audio_only=ic.audio_only == "keep", threads=threads,
        )  # fmt: skip
    except MediaError as e:
        return ItemResult(skipped={"path": item.path, "reason": e.reason, "detail": e.detail})
    if dec.duration < ic.min_seconds - MIN_SECONDS_TOLERANCE:
        return ItemResult(skipped={"path": item.path, "reason": "too-short", "detail": f"{dec.duration:.3f} s"})
    result = ItemResult()
    clip_n, clip_f = int(round(ic.clip_seconds * sr)), int(round(ic.clip_seconds * fps))
    total_n = len(dec.audio)
    for k, a0 in enumerate(range(0, total_n, clip_n)):
        n = min(clip_n, total_n - a0)
        seconds = n / sr
        if seconds < ic.min_seconds - MIN_SECONDS_TOLERANCE:
            result.dropped_short += 1
            continue
        f0 = k * clip_f
        frames = dec.frames[f0 : f0 + frame_count(seconds, fps)]
        meta: dict[str, Any] = {"source": item.path, "video_id": item.video_id, "clip": k,
                                "start": round(item.start + a0 / sr, 6), "duration": round(seconds, 6)}  # fmt: skip
        if item.labels:
            meta["labels"] = list(item.labels)
        clip = Clip(f"{item.video_id}-{k:04d}", dec.audio[a0 : a0 + n], sr, frames, fps, meta)
        result.samples.append((encode_sample(clip, ic.frame_format, ic.jpeg_quality), seconds))
    return result


def _process_star(args: tuple[Item, Config, int]) -> ItemResult:
    return process_item(*args)


# ----------------------------------------------------------------------------- shards


def _tar_bytes(samples: list[dict[str, bytes]]) -> bytes:
    """A tar archive of samples with fixed headers (no times, owners): same samples, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if k != "__key__"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(sample[ext]), 0o444, 0
                tar.addfile(info, io.BytesIO(sample[ext]))
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _params(cfg: Config, num_nodes: int) -> dict[str, Any]:
    ic = cfg.ingest
    return {
        "schema": SCHEMA_VERSION, "sample_rate": cfg.audio.sample_rate, "fps": cfg.video.fps, "size": cfg.video.size,
        "clip_seconds": ic.clip_seconds, "min_seconds": ic.min_seconds, "frame_format": ic.frame_format,
        "jpeg_quality": ic.jpeg_quality, "audio_only": ic.audio_only, "samples_per_shard": ic.samples_per_shard,
        "num_nodes": num_nodes,
    }  # fmt: skip


def _state_path(out: Path, rank: int, num_nodes: int) -> Path:
    return out / STATE_DIR / f"node-{rank:04d}-of-{num_nodes:04d}.json"


def _load_state(out: Path, rank: int, num_nodes: int, params: dict, inputs_sha: str) -> dict[str, Any]:
    """This node's progress (fresh when none); drop shards whose file vanished and stale temp files."""
    path = _state_path(out, rank, num_nodes)
    fresh = {"params": params, "inputs_sha1": inputs_sha, "shards": [], "tail": [], "complete": False}
    if not path.is_file():
        return fresh
    state = json.loads(path.read_text())
    for name, want in (("parameters", params), ("inputs", inputs_sha)):
        have = state["params"] if name == "parameters" else state["inputs_sha1"]
        if have != want:
            raise ValueError(
                f"{out} holds an ingest with different {name} ({have} vs {want}); "
                "re-run with the original command, or use a new --out folder"
            )
    kept = []
    for shard in state["shards"]:
        if not (out / shard["name"]).is_file():
            log.warning("%s is listed as finished but missing; re-ingesting from there", out / shard["name"])
            break
        kept.append(shard)
    if len(kept) < len(state["shards"]):
        state.update(shards=kept, tail=[], complete=False)
    return state


def _shard_name(index: int, rank: int, num_nodes: int) -> str:
    return f"{index * num_nodes + rank:06d}.tar"


def _merge_manifest(out: Path, num_nodes: int) -> dict[str, Any] | None:
    """Write ``manifest.json`` from all node progress files once every node is complete."""
    states = []
    for rank in range(num_nodes):
        path = _state_path(out, rank, num_nodes)
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if not state["complete"]:
            return None
        states.append(state)
    shards = sorted((s for st in states for s in st["shards"]), key=lambda s: s["name"])
    skipped = [e for st in states for s in st["shards"] + [{"skipped": st["tail"]}] for e in s["skipped"]]
    skipped += [e for st in states for e in st.get("unreadable", [])]
    seconds = sum(s["seconds"] for s in shards)
    manifest = {
        "version": SCHEMA_VERSION,
        "params": states[0]["params"],
        "shards": [{"name": s["name"], "samples": s["samples"], "seconds": s["seconds"]} for s in shards],
        "total_samples": sum(s["samples"] for s in shards),
        "total_hours": seconds / 3600.0,
        "ingested_inputs": sum(s["inputs"] for s in shards),
        "dropped_short_clips": sum(s["dropped_short"] for st in states for s in st["shards"])
        + sum(st.get("tail_dropped_short", 0) for st in states),
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(Counter(e["reason"] for e in skipped).items())),
    }
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


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
) -> dict[str, Any]:
    """Ingest ``inputs`` into shards under ``out_dir``; resumes a previous run of the same command.

    Returns the manifest (once every node has finished; before that, this node's summary with
    ``"complete": False``). Bad inputs are recorded in ``skipped`` with a reason, never raised.
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
    state = _load_state(out, node_rank, num_nodes, params, inputs_sha)
    state["unreadable"] = unreadable if node_rank == 0 else []
    state_path = _state_path(out, node_rank, num_nodes)
    next_item, next_clip = state["shards"][-1]["next"] if state["shards"] else (0, 0)
    finished = {s["name"] for s in state["shards"]}
    for stale in list(out.glob("*.tar.tmp")) + [p for p in out.glob("*.tar") if p.name not in finished]:
        if re.fullmatch(r"\d{6}", stale.name.split(".")[0]) and int(stale.name.split(".")[0]) % num_nodes == node_rank:
            stale.unlink()  # an interrupted shard of this node: it will be written again
    if not state["complete"]:
        workers = workers or cfg.ingest.workers or 1
        todo = items[next_item:]
        log.info("ingesting %d of %d inputs (node %d of %d) with %d workers into %s",
                 len(todo), len(all_items), node_rank, num_nodes, workers, out)  # fmt: skip
        pending: dict[str, Any] = {"samples": [], "seconds": 0.0, "skipped": [], "dropped_short": 0, "inputs": 0}

        def close_shard(next_pos: tuple[int, int]) -> None:
            name = _shard_name(len(state["shards"]), node_rank, num_nodes)
            _write_atomic(out / name, _tar_bytes(pending["samples"]))
            state["shards"].append({"name": name, "samples": len(pending["samples"]), "seconds": pending["seconds"],
                                    "next": list(next_pos), "skipped": pending["skipped"],
                                    "dropped_short": pending["dropped_short"], "inputs": pending["inputs"]})  # fmt: skip
            _write_atomic(state_path, json.dumps(state).encode())
            pending.update(samples=[], seconds=0.0, skipped=[], dropped_short=0, inputs=0)

        bar = tqdm(total=len(todo), unit="video", disable=not progress, desc="ingest")
        for offset, result in enumerate(_run(todo, cfg, workers)):
            idx = next_item + offset
            samples = result.samples[next_clip if offset == 0 else 0 :]
            first = next_clip if offset == 0 else 0
            if result.skipped:
                pending["skipped"].append(result.skipped)
            pending["dropped_short"] += result.dropped_short if not samples else 0
            for j, (sample, seconds) in enumerate(samples, start=first):
                pending["samples"].append(sample)
                pending["seconds"] += seconds
                last = j == len(result.samples) - 1
                if last:
                    pending["inputs"] += 1
                    pending["dropped_short"] += result.dropped_short
                if len(pending["samples"]) >= cfg.ingest.samples_per_shard:
                    close_shard((idx + 1, 0) if last else (idx, j + 1))
            bar.update(1)
            bar.set_postfix(clips=sum(s["samples"] for s in state["shards"]) + len(pending["samples"]))
        bar.close()
        if pending["samples"]:
            close_shard((len(items), 0))
        state.update(tail=pending["skipped"], tail_dropped_short=pending["dropped_short"], complete=True)
        _write_atomic(state_path, json.dumps(state).encode())
    manifest = _merge_manifest(out, num_nodes)
    summary = manifest or {
        "complete": False, "total_samples": sum(s["samples"] for s in state["shards"]),
        "skipped": [e for s in state["shards"] for e in s["skipped"]] + state["tail"] + state["unreadable"],
    }  # fmt: skip
    _log_summary(summary, out)
    return summary


def _run(items: list[Item], cfg: Config, workers: int) -> Iterator[ItemResult]:
    """Process items in order, in a pool of ``workers`` processes (inline when 1)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield process_item(item, cfg)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_process_star, [(item, cfg, 1) for item in items], chunksize=1)


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
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: ingest.workers)")
    parser.add_argument("--num-nodes", type=int, default=1, help="split the inputs over this many nodes")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's index in [0, num-nodes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_ingest(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    summary = ingest(
        args.inputs, args.out, cfg, num_nodes=args.num_nodes, node_rank=args.node_rank,
        workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    if summary["total_samples"] == 0:
        log.error("nothing could be ingested (see the skipped inputs above)")
        return 1
    return 0
