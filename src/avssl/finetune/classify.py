"""``avssl classify``: a fine-tuned classifier (``avssl finetune``'s ``model.pt``) over files, folders and list files
-> one CSV or JSON-lines file, one row per input (its top-k labels with scores), or one row per window with
``timestamps``.

The inputs are those of ``avssl embed`` (:func:`avssl.embed.collection.collect_inputs`), run the same way (decoding in
guarded processes, :func:`avssl.embed.collection.decoded`; scoring in ``workers`` threads, results in input order). A
file that cannot be decoded, is not a regular file, or crashes or stalls its decoder gets a row with
``status=skipped`` and the reason, and the run goes on.

Resumable: rows are appended as each input finishes (all of an input's rows in one write); a rerun with the same
output keeps every complete row (a row a kill cut short is redone, also one cut inside a character, and with
``timestamps`` the last input's rows) and does the rest. Rows end at ``\\n`` and nowhere else (a ``\\n`` or ``\\r`` in
a name is quoted in CSV, escaped in JSON); a name that is not UTF-8 is written with each such byte escaped as
``\\udcXX`` (:func:`avssl.embed.collection.text_name`), so it costs only its own row and a rerun knows it as done.
The settings (model, top-k, threshold, timestamps, hop) are recorded beside the output (``OUT.settings.json``)
and a rerun with other settings is refused. Imports only inference code.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from avssl.checkpoint import file_sha1, load_classifier_state
from avssl.finetune.classifier import Classifier, classifier_from_state
from avssl.embed.collection import (FILE_TIMEOUT, _cores, add_file_timeout_argument, collect_inputs, decoded, in_order,
                                    text_name, tower_threads)

log = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")


def _rows_for(clf: Classifier, path: Path, audio, top_k: int, threshold: float | None, timestamps: bool) -> list[dict]:
    """The output rows of one input: its clip scores, or one row per window."""
    seconds = len(audio) / clf.sample_rate
    base = {"input": str(path), "status": "ok", "reason": "", "seconds": round(seconds, 3)}
    if not timestamps:
        return [{**base, "top": _top(clf, clf.predict(audio, clf.sample_rate)[0], top_k, threshold)}]
    (w,) = clf.predict_windows(audio, clf.sample_rate)
    return [{**base, "start": round(float(a), 3), "end": round(float(b), 3), "top": _top(clf, s, top_k, threshold)}
            for a, b, s in zip(w.start, w.end, w.scores)]


def _top(clf: Classifier, scores, top_k: int, threshold: float | None) -> list[tuple[str, float]]:
    return [(lab, round(s, 6)) for lab, s in clf.top_k(scores, top_k) if threshold is None or s >= threshold]


def _format(rows: list[dict], fmt: str, top_k: int, timestamps: bool) -> str:
    """Rows as text: JSON lines, or CSV lines with ``label_i``/``score_i`` columns (quoted as needed: a cell with a
    ``\\r`` too, which ``csv`` would leave bare). Names that are not UTF-8 are escaped
    (:func:`avssl.embed.collection.text_name`); ``\\n`` ends rows and nothing else does."""
    if fmt == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # \n in a name is escaped
        return text_name(text)
    buf = io.StringIO()
    for r in rows:
        cells = [r["input"], r["status"], r["reason"], r.get("seconds", "")]
        if timestamps:
            cells += [r.get("start", ""), r.get("end", "")]
        top = r.get("top", [])
        for i in range(top_k):
            cells += list(top[i]) if i < len(top) else ["", ""]
        bare_cr = any("\r" in str(c) for c in cells)
        csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL).writerow(cells)
    return text_name(buf.getvalue())


def _header(top_k: int, timestamps: bool) -> list[str]:
    cols = ["input", "status", "reason", "seconds"] + (["start", "end"] if timestamps else [])
    return cols + [c for i in range(1, top_k + 1) for c in (f"label_{i}", f"score_{i}")]


def _complete_text(out: Path) -> str:
    """The text of ``out`` up to its last ``\\n``: a kill or a full disk cuts bytes, not characters, so the cut
    last line is dropped as bytes; from a line that is not UTF-8 on (damage), nothing is kept."""
    data = out.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: data.rfind(b"\n", 0, e.start) + 1].decode("utf-8")


def _records(text: str, fmt: str) -> Iterator[tuple[str, str]]:
    """``(input, its text)`` per complete row of ``text`` (lines end at ``\\n`` only; a CSV row may span lines
    inside quotes), the CSV header left out; stops at the first row that does not parse."""
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    if fmt == ".jsonl":
        for line in lines:
            try:
                yield json.loads(line)["input"], line
            except (json.JSONDecodeError, KeyError, TypeError):
                return
        return
    taken: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            taken.append(line)
            yield line

    rows = csv.reader(feed(), strict=True)  # strict: a quoted name cut at one of its \n is an error, not a row
    try:
        width = len(next(rows))  # the header
        taken.clear()
        for row in rows:
            if len(row) != width:
                return
            yield row[0], "".join(taken)
            taken.clear()
    except (csv.Error, StopIteration):
        return


def _done_inputs(out: Path, fmt: str, timestamps: bool) -> tuple[set[str], str]:
    """``(inputs finished in an earlier run, as :func:`text_name` writes them; the text of their rows)``. A last
    line without its newline was cut by a kill and is dropped, and an unreadable row with all that follows; with
    ``timestamps`` the last input is dropped too (a kill may have cut its rows at a line boundary)."""
    if not out.is_file():
        return set(), ""
    records = list(_records(_complete_text(out), fmt))
    if timestamps and records:
        last = records[-1][0]
        records = [r for r in records if r[0] != last]
    return {text_name(name) for name, _ in records}, "".join(text for _, text in records)


def classify_collection(model: str | Path, inputs: list[str | Path], out: str | Path, *, top_k: int = 5,
                        threshold: float | None = None, timestamps: bool = False, hop: float | None = None,
                        workers: int | None = None, threads: int | None = None, device: str | None = None,
                        file_timeout: float | None = FILE_TIMEOUT, progress: bool = True) -> list[dict]:
    """Classify every input (see :func:`avssl.embed.collection.collect_inputs`) with the model file ``model`` into
    ``out`` (``.csv`` or ``.jsonl``); returns this run's rows. ``hop`` (seconds, at most a window; default half a
    window) spaces the windows; with ``timestamps`` each window gets its own row. ``workers``, ``threads`` and
    ``file_timeout`` as in :func:`avssl.embed.collection.embed_collection` (a decoder that crashes or stalls costs only
    its file)."""
    out = Path(out)
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"--out {out}: use a .csv or .jsonl file name")
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    state = load_classifier_state(model)
    clf = classifier_from_state(state, device=device)
    if hop is not None:
        if not 0 < hop <= clf.window_seconds:
            raise ValueError(f"--hop {hop}: use 0 < hop <= the model's window, {clf.window_seconds:g} s")
        clf = classifier_from_state(state, device=device, overlap=1 - hop / clf.window_seconds)
    top_k = min(top_k, len(clf.labels))
    settings = {"model_sha1": file_sha1(model), "top_k": top_k, "threshold": threshold, "timestamps": timestamps,
                "hop": hop}
    _check_settings(out, settings, model)
    done, kept = _done_inputs(out, fmt, timestamps)
    items = collect_inputs(inputs)
    todo = [p for p, _ in items if text_name(str(p)) not in done]
    log.info("classify: %d inputs, %d done earlier, %d to do", len(items), len(items) - len(todo), len(todo))
    tmp = out.with_name(f".{out.name}.tmp")
    header = "" if fmt == ".jsonl" else ",".join(_header(top_k, timestamps)) + "\n"
    tmp.write_text(header + kept, encoding="utf-8")
    os.replace(tmp, out)

    def one(item: tuple[Path, np.ndarray | str]) -> list[dict]:
        path, audio = item
        if isinstance(audio, str):  # not decoded: why
            return [{"input": str(path), "status": "skipped", "reason": audio}]
        try:
            return _rows_for(clf, path, audio, top_k, threshold, timestamps)
        except Exception as e:  # a bad file must not stop a long run: record why and go on
            return [{"input": str(path), "status": "skipped", "reason": f"{type(e).__name__}: {e}"}]

    workers = _cores() if workers is None else int(workers)
    stream = zip(todo, decoded(todo, clf.sample_rate, workers, file_timeout))
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else tower_threads(workers))
    rows: list[dict] = []
    try:
        with out.open("a", encoding="utf-8") as f:
            for file_rows in tqdm(in_order(one, stream, workers), total=len(todo), desc="classify", unit="file",
                                  disable=not progress):
                f.write(_format(file_rows, fmt, top_k, timestamps))
                f.flush()
                if file_rows[0]["status"] == "skipped":
                    log.warning("skipped %s: %s", file_rows[0]["input"], file_rows[0]["reason"])
                rows += file_rows
    finally:
        torch.set_num_threads(previous)
    skipped = sum(r["status"] == "skipped" for r in rows)
    log.info("classify: wrote %s (%d inputs this run, %d skipped)", out, len(todo), skipped)
    return rows


def _check_settings(out: Path, settings: dict[str, Any], model: str | Path) -> None:
    """Record the settings beside ``out``; refuse to add to an output made with other settings."""
    path = out.with_name(out.name + ".settings.json")
    if out.is_file() and not path.is_file():
        raise ValueError(f"{out} exists and was not written by avssl classify (no {path.name} beside it); "
                         "use another --out")
    if path.is_file() and out.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(f"{out} was made with other settings or another model ({path}: {old}); "
                             "use another --out or delete the old one")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**settings, "model": str(Path(model).resolve())}, indent=1))


# -- CLI: avssl classify --------------------------------------------------------------------------------------
def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="classifier model file from avssl finetune (OUT/model.pt)")
    p.add_argument("inputs", nargs="+", help="audio/video files, folders (recursive) or list files (.txt)")
    p.add_argument("--out", required=True, help="output .csv or .jsonl (re-running with the same one resumes)")
    p.add_argument("--top-k", type=int, default=5, help="labels per row, best first (default 5)")
    p.add_argument("--threshold", type=float, default=None, help="keep only labels scoring at least this")
    p.add_argument("--timestamps", action="store_true", help="one row per window (start, end) instead of per file")
    p.add_argument("--hop", type=float, default=None, help="seconds between windows (default: half a window)")
    p.add_argument("--workers", type=int, default=None,
                   help="files classified at once, each in its own thread (default: one per core; 0 = main thread)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each worker (default: cores / workers)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_file_timeout_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_classify(args: argparse.Namespace) -> int:
    rows = classify_collection(args.model, args.inputs, args.out, top_k=args.top_k, threshold=args.threshold,
                               timestamps=args.timestamps, hop=args.hop, workers=args.workers, threads=args.threads,
                               device=args.device, file_timeout=args.file_timeout, progress=not args.no_progress)
    return 0 if not rows or any(r["status"] == "ok" for r in rows) else 1
