"""``avssl embed`` over collections: files, folders and list files -> one ``.npz`` per input, resumable.

Each file is decoded in one of ``workers`` processes (:func:`decoded`, :func:`avssl.ingest.procpool.imap_guarded`): a
file that crashes its decoder (a segfault, an abort, an out-of-memory kill) or stalls it past ``file_timeout``
seconds costs only itself and is recorded as skipped (``crashed`` / ``timeout``); anything that is not a regular
file (a FIFO, a device, a broken link) is recorded as skipped without being opened. ``workers`` threads then
run the tower, each on one file (``threads`` torch threads each), and write its output, in input order a few
files ahead; torch releases the GIL while it computes, so the threads run on separate cores. The tower runs
once per file, also with ``timestamps`` (:meth:`avssl.embed.embedder.Embedder.embed_with_timestamps`).
``avssl classify`` (:mod:`avssl.finetune.classify`) runs the same way.

Interruption safety: each output is written to a hidden temp name beside it (``.NAME.tmp``, the same name for
the same output, so a rerun overwrites a leftover) and renamed when complete; a rerun keeps every output whose
``input`` field names the same input and recomputes the rest; ``index.jsonl`` is written at the end.
Imports only inference code.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from avssl import __version__
from avssl.media.audio import LIST_SUFFIXES, load_audio
from avssl.checkpoint import file_sha1
from avssl.config import EMBED_FEATURES
from avssl.embed.embedder import Embedder, load_model
from avssl.ingest.inputs import list_file_entries, media_entries, not_regular
from avssl.models import AUDIO_VIEWS
from avssl.ingest.procpool import Failure, imap_guarded

log = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursive, media files only, hidden files skipped: :func:`avssl.ingest.inputs.media_files`)
    and list files (``.txt``/``.lst``/``.list``, one path per line, ``#`` comments, relative to the list file)
    into ``(path, output name)`` pairs.

    Output names mirror the input (``folder/sub/a.wav`` -> ``folder/sub/a.wav.npz``); names that two inputs
    would share get a hash of each full path. Missing paths and what is not a regular file (FIFOs, devices,
    broken links) are kept so that they are reported as skipped.
    """
    items: list[tuple[Path, str]] = []

    def add(p: Path, rel: str) -> None:
        if p.is_dir():
            for f in media_entries(p):
                items.append((f, f"{rel}/{f.relative_to(p).as_posix()}"))
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            for _, q in list_file_entries(p):
                add(q, q.name)
        else:
            items.append((p, rel))

    for x in inputs:
        add(Path(x), Path(x).resolve().name)
    unique: dict[Path, tuple[Path, str]] = {}  # resolved path -> first (path, name) it was given as
    for p, rel in items:
        unique.setdefault(p.resolve(), (p, rel))
    counts: dict[str, int] = {}
    for _, rel in unique.values():
        counts[rel] = counts.get(rel, 0) + 1
    return [(p, f"{rel}.npz" if counts[rel] == 1 else f"{rel}.{_path_hash(key)}.npz")
            for key, (p, rel) in unique.items()]


def _path_hash(path: Path) -> str:
    """Ten hex digits of the SHA-1 of ``path``'s bytes on disk (a name that is not UTF-8 included)."""
    return hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:10]


def text_name(text: str) -> str:
    """``text`` (an input's name, or a message quoting one) as text that encodes to UTF-8: a byte of a file name
    that is not UTF-8, which Python holds as a lone surrogate (``surrogateescape``: byte ``0xe9`` is U+DCE9),
    becomes the six characters ``\\udce9``, the escape JSON gives it (``index.jsonl``, written with
    ``json.dumps``, holds the same text); every other character is kept. In JSON text the escape reads back as
    the name itself; in other text, replacing each ``\\udcXX`` by U+DCXX and calling ``os.fsencode`` gives the
    name's bytes (ambiguous only for a name that holds the text ``\\udc80``..``\\udcff`` itself)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically: a hidden temp file beside it (one name per output, so a rerun
    after a kill overwrites the leftover), then a rename, so no reader ever sees a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _made_from(path: Path) -> str | None:
    """The input an existing output was made from (None if there is no readable output)."""
    try:
        with np.load(path) as z:
            return str(z["input"])
    except (OSError, KeyError, ValueError):
        return None



def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` (read lazily), results in order: in the caller's thread (``workers`` <= 0) or in
    ``workers`` threads, at most ``2 * workers`` items started ahead of the one being yielded. Closing the
    iterator early (an error, Ctrl-C) starts no further item and waits for the running ones."""
    if workers <= 0:
        yield from map(fn, items)
        return
    items = iter(items)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="avssl-embed")
    try:
        ahead = collections.deque(pool.submit(fn, x) for x in itertools.islice(items, 2 * workers))
        for x in items:
            yield ahead.popleft().result()
            ahead.append(pool.submit(fn, x))
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


FILE_TIMEOUT = 600.0  # seconds one file may take to decode before its worker is killed (as ingest.file_timeout)


def decoded(paths: Sequence[Path], sample_rate: int, workers: int, timeout: float | None = FILE_TIMEOUT
            ) -> Iterator[np.ndarray | str]:
    """Each path's audio (mono float32 at ``sample_rate``), in order, or why it was skipped: a path that is not a
    regular file (never opened), a decode error, or a decoder that crashed or ran past ``timeout`` seconds in
    one of ``workers`` guarded processes (``workers`` <= 0: decoded here, unguarded, for debugging)."""
    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_audio(path, sample_rate)
        except Exception as e:  # a bad file must not stop a long run: record why and go on
            return f"{type(e).__name__}: {e}"

    why = [not_regular(p) for p in paths]
    readable = [p for p, w in zip(paths, why) if w is None]
    if workers <= 0:
        results = map(decode, readable)
    else:
        results = imap_guarded(decode, readable, workers, timeout or None)
    for w in why:
        if w is not None:
            yield w
            continue
        out = next(results)
        yield f"{out.reason}: {out.detail}" if isinstance(out, Failure) else out


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tower_threads(workers: int) -> int:
    """Torch threads per worker by default: the cores this process may use shared among the ``workers`` (all of
    them when 0), at least 1, at most torch's own default (OpenMP threads that share a core with another busy
    thread wait for each other at every operator: docs/benchmarks-embed.md)."""
    return max(1, min(torch.get_num_threads(), _cores() // max(1, workers)))


def _node_split(num_nodes: int | None, node_rank: int | None) -> tuple[int, int]:
    """Explicit ``--num-nodes/--node-rank``, else torchrun's ``WORLD_SIZE``/``RANK``, else one process."""
    if num_nodes is None:
        num_nodes = int(os.environ.get("WORLD_SIZE", 1))
        node_rank = int(os.environ.get("RANK", 0)) if node_rank is None else node_rank
    node_rank = 0 if node_rank is None else node_rank
    if not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} is out of range for {num_nodes} nodes; use 0..{num_nodes - 1}")
    return num_nodes, node_rank


SETTING_DEFAULTS = {"int8": False}  # settings added later: what folders written before them used


def _check_settings(out_dir: Path, settings: dict, **info: Any) -> None:
    """Write ``out_dir/embed.json`` on the first run; on later runs (resume) refuse other ``settings``."""
    path = out_dir / "embed.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k, SETTING_DEFAULTS.get(k)) for k in settings} != settings:
            raise ValueError(f"{out_dir} holds embeddings made with other settings or another checkpoint ({path}: "
                             f"{old}); use a new --out folder or delete the old one")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".embed.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**settings, **info, "avssl_version": __version__}, indent=1))
    os.replace(tmp, path)




def embed_collection(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
                     view: str = "spec", device: str | None = None, timestamps: bool = False, hop: float = 0.1,
                     overlap: float = 0.5, num_nodes: int | None = None, node_rank: int | None = None,
                     workers: int | None = None, threads: int | None = None, progress: bool = True,
                     features: str | None = None, int8: bool = False,
                     file_timeout: float | None = FILE_TIMEOUT) -> list[dict]:
    """Embed every file in ``inputs`` (see :func:`collect_inputs`) into ``out_dir``; return the index rows.

    One ``.npz`` per input under ``out_dir/embeddings/`` with ``embedding`` float32[D], ``seconds`` (the
    duration) and ``input`` (resolved path), plus ``timestamps`` float64[T] and ``timestamp_embeddings``
    float32[T, D] when ``timestamps``. ``out_dir/index.jsonl`` (``index-{rank}-of-{num_nodes}.jsonl`` when
    split) has one row per input: ``input``, ``output``, ``status`` (``ok``, ``done`` = kept from an earlier
    run, ``skipped``), ``reason``. Existing outputs made from the same input are kept (resume). Inputs are
    split ``node_rank::num_nodes`` across processes. ``workers`` processes decode (:func:`decoded`: a file whose
    decoder crashes or runs past ``file_timeout`` seconds is skipped) and ``workers`` threads run the tower, one
    file each (default: one per core; 0: all in the caller's thread, unguarded); ``threads`` sets the torch
    threads of each (default :func:`tower_threads`);
    ``int8`` runs the tower in int8 (:func:`avssl.embed.embedder.quantize_int8`).
    """
    out_dir = Path(out_dir)
    num_nodes, node_rank = _node_split(num_nodes, node_rank)
    if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    embedder = load_model(checkpoint, device=device, view=view, overlap=overlap, features=features, int8=int8)
    _check_settings(out_dir, {"features": embedder.features,
        "checkpoint_sha1": file_sha1(checkpoint), "view": view, "timestamps": timestamps,
        "hop": hop if timestamps else None, "sample_rate": embedder.sample_rate, "embedding_dim": embedder.embedding_dim,
        "window_seconds": embedder.window / embedder.sample_rate, "overlap": 1 - embedder.window_hop / embedder.window,
        "int8": int8}, checkpoint=str(Path(checkpoint).resolve()))

    items = collect_inputs(inputs)[node_rank::num_nodes]
    rows, todo = [], []
    for path, name in items:
        source = str(path.resolve())  # once per input: resolving walks every component of the path
        if _made_from(out_dir / "embeddings" / name) == source:
            rows.append({"input": str(path), "output": f"embeddings/{name}", "status": "done", "reason": None})
        else:
            todo.append((path, name, source))
    log.info("embed: %d inputs on this node, %d already done, %d to do", len(items), len(items) - len(todo), len(todo))
    workers = _cores() if workers is None else int(workers)  # default: one file per core

    def embed_one(item: tuple[tuple[Path, str, str], np.ndarray | str]) -> dict:
        (path, name, source), audio = item
        row = {"input": str(path), "output": None, "status": "skipped", "reason": None}
        if isinstance(audio, str):
            row["reason"] = audio
            return row
        try:
            arrays = _embed_file(embedder, torch.from_numpy(audio), source, timestamps, hop)
            _save_npz(out_dir / "embeddings" / name, **arrays)
            row.update(output=f"embeddings/{name}", status="ok")
        except Exception as e:  # a bad file must not stop a long run: record why and go on
            row["reason"] = f"{type(e).__name__}: {e}"
        return row

    stream = zip(todo, decoded([p for p, _, _ in todo], embedder.sample_rate, workers, file_timeout))
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else tower_threads(workers))
    try:
        for row in tqdm(in_order(embed_one, stream, workers), total=len(todo), desc="embed", unit="file",
                        disable=not progress):
            if row["reason"]:
                log.warning("skipped %s: %s", row["input"], row["reason"])
            rows.append(row)
    finally:
        torch.set_num_threads(previous)  # the caller's setting, whatever the tower used
    _write_index(out_dir / ("index.jsonl" if num_nodes == 1 else f"index-{node_rank}-of-{num_nodes}.jsonl"), rows)
    return rows


def _embed_file(embedder: Embedder, audio: torch.Tensor, source: str, timestamps: bool, hop: float) -> dict:
    """One file's output arrays; clip and timestamp embeddings from one pass of the tower."""
    arrays = {"input": source, "seconds": np.float64(len(audio) / embedder.sample_rate)}
    if timestamps:
        clip, frames, seconds = embedder.embed_with_timestamps(audio, embedder.sample_rate, hop=hop)
        arrays.update(timestamps=seconds, timestamp_embeddings=frames[0])
    else:
        clip = embedder.embed(audio, embedder.sample_rate)
    return {"embedding": clip[0], **arrays}


def _write_index(index: Path, rows: list[dict]) -> None:
    """Write the index rows (sorted by input) atomically and log what was skipped."""
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["input"])))
    os.replace(tmp, index)
    skipped = [r for r in rows if r["status"] == "skipped"]
    log.info("embed: wrote %s (%d ok, %d kept, %d skipped)", index, sum(r["status"] == "ok" for r in rows),
             sum(r["status"] == "done" for r in rows), len(skipped))
    for r in skipped:
        log.info("  skipped %s: %s", r["input"], r["reason"])


# -- CLI: avssl embed ------------------------------------------------------
def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="avssl checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", help="audio/video files, folders (recursive) or list files (.txt)")
    p.add_argument("--out", required=True, help="output folder (re-running with the same one resumes)")
    p.add_argument("--timestamps", action="store_true", help="also store time-resolved embeddings")
    p.add_argument("--hop", type=float, default=0.1, help="seconds between timestamp embeddings (default 0.1)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="fraction shared by consecutive windows on long audio (default 0.5; 0 = half the work)")
    p.add_argument("--view", default="spec", choices=AUDIO_VIEWS, help="which audio tower (default spec)")
    p.add_argument("--features", default=None, choices=EMBED_FEATURES,
                   help="pooled: last block, mean+max over time; layers: mean+std of every block "
                   "(default: the checkpoint's embed.features)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-nodes", type=int, default=None, help="split the inputs across this many processes")
    p.add_argument("--node-rank", type=int, default=None, help="this process's share (0..num-nodes-1)")
    p.add_argument("--workers", type=int, default=None,
                   help="files embedded at once, each in its own thread: decoding, tower, writing "
                   "(default: one per core; 0 = one at a time in the main thread)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each worker (default: the cores shared among the workers, at least 1)")
    p.add_argument("--int8", action="store_true", help="run the tower in int8 on the CPU (faster; see docs)")
    add_file_timeout_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_file_timeout_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file-timeout", type=float, default=FILE_TIMEOUT,
                   help=f"seconds a file may take to decode before it is skipped as 'timeout' (default {FILE_TIMEOUT:g}; "
                   "0 = no limit)")


def run_embed(args: argparse.Namespace) -> int:
    rows = embed_collection(args.checkpoint, args.inputs, args.out, view=args.view, device=args.device,
                            timestamps=args.timestamps, hop=args.hop, overlap=args.overlap, num_nodes=args.num_nodes,
                            node_rank=args.node_rank, workers=args.workers, threads=args.threads,
                            progress=not args.no_progress, features=args.features, int8=args.int8,
                            file_timeout=args.file_timeout)
    return 0 if any(r["status"] != "skipped" for r in rows) or not rows else 1
