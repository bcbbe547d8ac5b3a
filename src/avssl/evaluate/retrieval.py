"""Audio <-> video retrieval: the audio-visual correspondence itself, measured on clips no pretraining saw.

Each clip is cut into aligned windows of the training crop (``data.crop_seconds``: the audio and
exactly the frames shown in it, consecutive, at most ``max_windows`` per clip); the audio tower
(``spec``, else ``wave``) and the video tower embed every window through their projection heads, and a
clip's embedding per modality is the mean of its windows' unit vectors. Every clip's audio then ranks
all clips' videos by cosine similarity (and every video all audios): ``a2v_*`` / ``v2a_*`` top-1,
top-5 and median rank (1 = its own clip first; ties count against it), with chance beside them.

Clips come from :func:`retrieval_inputs` and :func:`load_clips`: ``avepm`` (the 172 AVE-PM test clips, never pretrained on) or any
folder, list file or video file a user gives; files that cannot be decoded are skipped with their reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from avssl.checkpoint import model_from_checkpoint
from avssl.config import Config
from avssl.train.retrieval import AVClip, has_retrieval_towers, retrieval

log = logging.getLogger(__name__)

RETRIEVAL_SETS = ("avepm",)  # named sets; anything else is a path


def retrieval_inputs(spec: str, data_root: str | Path | None = None) -> tuple[list[Path], list[str] | None]:
    """The videos (and labels, when known) of a retrieval set: ``avepm`` = the AVE-PM test split under the
    task data root; otherwise a folder, list file or media file (:func:`avssl.ingest.inputs.collect_items`)."""
    if spec == "avepm":
        from avssl.evaluate.tasks import load_task

        task = load_task("avepm", data_root)
        test = [ex for ex in task.examples if ex.split == "test"]
        return [ex.path for ex in test], [ex.labels[0] for ex in test]
    from avssl.ingest.inputs import collect_items

    if not Path(spec).exists():
        raise FileNotFoundError(f"retrieval set {spec!r}: no such file or folder; use {', '.join(RETRIEVAL_SETS)} "
                                "or a folder / list file of videos")
    items, _ = collect_items([spec])
    return [Path(it.path) for it in items], None


def load_clips(paths: list[Path], cfg: Config, progress: bool = True) -> tuple[list[AVClip], list[dict[str, str]]]:
    """Decode every video at the run's audio rate, fps and frame size; ``(clips, skipped)`` where each skip
    names the file and the reason (no audio, no video, unreadable...)."""
    from tqdm import tqdm

    from avssl.media.video import MediaError, decode_video

    clips, skipped = [], []
    for path in tqdm(paths, desc="decode", unit="video", disable=not progress):
        try:
            d = decode_video(path, cfg.audio.sample_rate, cfg.video.fps, cfg.video.size, threads=1)
        except MediaError as e:
            skipped.append({"path": str(path), "reason": e.reason})
            continue
        if len(d.frames) == 0 or len(d.audio) == 0:
            skipped.append({"path": str(path), "reason": "empty"})
            continue
        clips.append(AVClip(d.audio, d.frames, str(path)))
    if skipped:
        log.warning("retrieval: skipped %d of %d videos: %s", len(skipped), len(paths),
                    "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:5]))
    return clips, skipped


def retrieval_model(spec: str) -> tuple[torch.nn.Module, Config] | None:
    """``(model, cfg)`` of a checkpoint path or ``random-init:CKPT`` (its architecture, untrained, seed 0) when it
    has an audio and a video tower; None for anything else (baselines, presets, audio-only models)."""
    from avssl.checkpoint import config_of, random_model

    target = spec.split(":", 1)[1] if spec.startswith("random-init:") else spec
    if not Path(target).is_file() or Path(target).suffix in (".yaml", ".yml"):
        return None
    cfg = config_of(target)
    if not has_retrieval_towers(cfg.model.views):
        return None
    return (random_model(cfg, 0), cfg) if spec.startswith("random-init:") else model_from_checkpoint(target)


def evaluate_retrieval(model: torch.nn.Module, cfg: Config, spec: str, data_root: str | Path | None = None,
                       progress: bool = True, clip_cache: dict | None = None) -> dict[str, Any]:
    """:func:`retrieval` of a model on a retrieval set (:func:`retrieval_inputs`); JSON-ready (no arrays), with
    the files ``skipped`` and why. ``clip_cache`` (a dict) keeps decoded clips between calls with the same set,
    audio rate, fps and frame size."""
    paths, labels = retrieval_inputs(spec, data_root)
    key = (spec, str(data_root), cfg.audio.sample_rate, cfg.video.fps, cfg.video.size)
    cache = clip_cache if clip_cache is not None else {}
    if key not in cache:
        cache[key] = load_clips(paths, cfg, progress)
    clips, skipped = cache[key]
    if len(clips) < 2:
        raise ValueError(f"retrieval set {spec!r}: {len(clips)} decodable videos; need at least 2")
    if labels is not None:
        by_path = dict(zip(map(str, paths), labels))
        labels = [by_path[c.name] for c in clips]
    res = retrieval(model, cfg, clips, labels=labels)
    res.pop("similarity")
    res.pop("ranks")
    return {"set": spec, **res, "skipped": skipped}


def retrieval_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, set): top-1, top-5 (%) and median rank both ways, chance beside them."""
    head = "| model | set | clips | a2v top-1 | a2v top-5 | a2v median rank | v2a top-1 | v2a top-5 | v2a median rank |"
    lines = [head, "|" + "---|" * 9]
    for r in records:
        lines.append(f"| {r['model']} | {r['set']} | {r['num_clips']} | {100 * r['a2v_top1']:.1f} | "
                     f"{100 * r['a2v_top5']:.1f} | {r['a2v_median_rank']:.0f} | {100 * r['v2a_top1']:.1f} | "
                     f"{100 * r['v2a_top5']:.1f} | {r['v2a_median_rank']:.0f} |")
    if records:
        r = records[0]
        lines.append(f"| *chance* | | | {100 * r['chance_top1']:.1f} | {100 * r['chance_top5']:.1f} | "
                     f"{r['chance_median_rank']:.1f} | {100 * r['chance_top1']:.1f} | {100 * r['chance_top5']:.1f} | "
                     f"{r['chance_median_rank']:.1f} |")
    return "\n".join(lines) + "\n"


def run_retrieval(models: list[str], sets: list[str], data_root: str | Path | None, out: str | Path,
                  progress: bool = True) -> list[dict[str, Any]]:
    """:func:`evaluate_retrieval` of every model spec with an audio and a video tower on every set; writes
    ``<out>/retrieval.jsonl`` (appended) and ``<out>/retrieval.md`` (this call's table)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, cache = [], {}
    for spec in models:
        loaded = retrieval_model(spec)
        if loaded is None:
            log.info("retrieval: %s has no video tower (or is a baseline); skipped", spec)
            continue
        for name in sets:
            rec = {"model": spec, **evaluate_retrieval(*loaded, name, data_root, progress, cache)}
            log.info("retrieval %s on %s: a2v top-5 %.1f%% (chance %.1f%%), median rank %.0f of %d", spec, name,
                     100 * rec["a2v_top5"], 100 * rec["chance_top5"], rec["a2v_median_rank"], rec["num_clips"])
            with (out / "retrieval.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            records.append(rec)
    (out / "retrieval.md").write_text(retrieval_table(records))
    return records
