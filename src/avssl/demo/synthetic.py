"""The built-in audio-visual world: procedural videos WITH sound, written as real mp4 files.

Each of K source classes has a visual signature (shape, colour, texture) and an audio signature
(a timbre family, or a folder of real recordings with ``sound_bank``). A clip shows one object
that flashes and bounces at every sound onset, so sound and picture are synchronised. Per-clip
nuisances, independent of the class: pitch, loudness, tempo, position, scale, background colour
and noise, off-screen distractor sounds.

The planted structure is checkable (see ``tests/test_demo_synthetic.py``): the class is plain in the
frames, while the audio's pitch is constant within a clip and independent of the class. An
audio-only contrastive task can therefore tell clips apart by their pitch without learning the
class; matching audio to video needs the class (timbre <-> shape/colour) and the onsets.

Layout written by :func:`generate_world`::

    out_dir/train/<label>/<clip_id>.mp4     pretraining + probe training clips
    out_dir/test/<label>/<clip_id>.mp4      held-out clips
    out_dir/labels.csv                      path (relative to out_dir), label, split, nuisances
    out_dir/world.json                      generation parameters and the class table

Everything is a function of the seed (per-clip generators from ``numpy.random.SeedSequence``).

Modules: :mod:`avssl.demo.synthetic_clip` (a class and a clip's parameters), :mod:`avssl.demo.synthetic_video` and
:mod:`avssl.demo.synthetic_audio` (the renderers); this one writes the world.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from avssl.media.audio import AUDIO_SUFFIXES
from avssl.demo.synthetic_audio import TIMBRES, _bank_recording, render_audio
from avssl.demo.synthetic_clip import ClassSpec, sample_clip_params
from avssl.demo.synthetic_video import COLOURS, SHAPES, TEXTURES, render_frames
from avssl.media.video import encode_video

log = logging.getLogger(__name__)

MAX_CLASSES = len(TIMBRES)


def class_table(num_classes: int, sound_bank: str | Path | None = None) -> list[ClassSpec]:
    """The K classes: class k gets the k-th shape, colour, timbre (or k-th bank folder, sorted)."""
    if sound_bank is None:
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}] for the procedural world, got {num_classes}")
        names = list(TIMBRES)[:num_classes]
        recordings: list[list[str]] = [[] for _ in names]
    else:
        bank = Path(sound_bank)
        if not bank.is_dir():
            raise FileNotFoundError(f"sound bank {bank} is not a folder; pass a folder with one subfolder per class")
        folders = [d for d in sorted(bank.iterdir()) if d.is_dir()]
        recordings = [sorted(str(f.relative_to(bank)) for f in d.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
                      for d in folders]
        pairs = [(d.name, r) for d, r in zip(folders, recordings) if r]
        if not 2 <= num_classes <= min(len(pairs), MAX_CLASSES):
            raise ValueError(
                f"sound bank {bank} has {len(pairs)} class folders with audio files; num_classes must be in "
                f"[2, {min(len(pairs), MAX_CLASSES)}], got {num_classes}"
            )
        names = [name for name, _ in pairs[:num_classes]]
        recordings = [r for _, r in pairs[:num_classes]]
    shapes, colours, textures = list(SHAPES), list(COLOURS), list(TEXTURES)
    return [
        ClassSpec(
            label=name,
            shape=shapes[k],
            colour=colours[k],
            texture=textures[k % len(textures)],
            timbre=name if sound_bank is None else f"bank:{name}",
            recordings=recordings[k],
        )
        for k, name in enumerate(names)
    ]


def split_recordings(spec: ClassSpec, test_fraction: float, seed: int, class_index: int) -> dict[str, ClassSpec]:
    """``{"train": spec, "test": spec}`` with disjoint sound-bank recordings: ``test_fraction`` of the
    class's recordings (at least one, never all; seeded) serve only its test clips, the rest only its
    training clips, so no held-out clip repeats a recording heard in training. Unchanged without a bank."""
    recs = spec.recordings
    if not recs:
        return {"train": spec, "test": spec}
    if len(recs) < 2:
        raise ValueError(f"sound bank class {spec.label!r} has {len(recs)} recording; it needs at least 2 so that "
                         "train and test clips use different recordings")
    order = np.random.default_rng([seed, class_index, 1 << 21]).permutation(len(recs))
    n_test = min(len(recs) - 1, max(1, int(round(len(recs) * test_fraction))))
    test = sorted(recs[i] for i in order[:n_test])
    train = sorted(recs[i] for i in order[n_test:])
    return {"train": replace(spec, recordings=train), "test": replace(spec, recordings=test)}


@dataclass
class _ClipJob:
    out_dir: Path
    spec: ClassSpec
    class_index: int
    index: int
    split: str
    seed: int
    seconds: float
    size: int
    fps: float
    sample_rate: int
    sound_bank: str | None


def _make_clip(job: _ClipJob) -> dict[str, Any]:
    """Render and encode one clip (its own generator from ``(seed, class, index)``); its labels.csv row."""
    spec, k = job.spec, job.class_index
    rng = np.random.default_rng([job.seed, k, job.index])
    p = sample_clip_params(rng, job.seconds, spec)
    frames = render_frames(spec, p, job.seconds, job.fps, job.size, rng)
    bank = None if job.sound_bank is None else (lambda rel: _bank_recording(str(Path(job.sound_bank) / rel), job.sample_rate))
    audio = render_audio(spec, p, job.seconds, job.sample_rate, rng, bank)
    clip_id = f"s{job.seed}-{k:02d}-{job.index:04d}"
    rel = Path(job.split) / spec.label / f"{clip_id}.mp4"
    (job.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    encode_video(job.out_dir / rel, frames, job.fps, audio=audio, sample_rate=job.sample_rate)
    return {
        "path": rel.as_posix(), "label": spec.label, "split": job.split, "clip_id": clip_id, "class_index": k,
        "shape": spec.shape, "colour": spec.colour, "texture": spec.texture, "timbre": spec.timbre,
        "pitch_hz": round(p.pitch_hz, 3), "loudness_db": round(p.loudness_db, 3), "tempo_hz": round(p.tempo_hz, 4),
        "num_onsets": len(p.onsets), "x": round(p.x, 4), "y": round(p.y, 4), "scale": round(p.scale, 4),
        "noise_db": round(p.noise_db, 3), "noise_tilt": round(p.noise_tilt, 4), "distractors": p.distractors,
        "source": p.source, "onsets": ";".join(f"{t:.4f}" for t in p.onsets),
    }


LABEL_COLUMNS = ["path", "label", "split", "clip_id", "class_index", "shape", "colour", "texture", "timbre",
                 "pitch_hz", "loudness_db", "tempo_hz", "num_onsets", "x", "y", "scale", "noise_db", "noise_tilt",
                 "distractors", "source", "onsets"]


def generate_world(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    clips_per_class: int = 32,
    seconds: float = 3.0,
    seed: int = 0,
    sound_bank: str | Path | None = None,
    test_fraction: float = 0.25,
    size: int = 64,
    fps: float = 10.0,
    sample_rate: int = 16000,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic world (mp4 files with AAC audio, ``labels.csv``, ``world.json``); returns ``out_dir``.

    ``num_classes`` K (2-10), ``clips_per_class`` clips of ``seconds`` each; per class,
    ``test_fraction`` of the clips go to the ``test`` split. Frames are ``size`` x ``size`` pixels at
    ``fps``; audio is mono at ``sample_rate`` Hz. ``sound_bank``: a folder with one subfolder of
    recordings per class (the first K sorted folders become the classes; each clip repeats one
    recording, whose note name is its pitch; each class's recordings are split between train and
    test clips first, :func:`split_recordings`, so no test clip reuses a training recording). ``workers`` processes render and encode clips (default:
one per CPU); the output does not depend on it. Same arguments -> same decoded content.
    """
    out_dir = Path(out_dir)
    _check_world_args(size, clips_per_class, test_fraction, seconds)
    classes = class_table(num_classes, sound_bank)
    jobs = _clip_jobs(out_dir, classes, clips_per_class, test_fraction, seed, seconds, size, fps, sample_rate,
                      None if sound_bank is None else str(sound_bank))
    rows = _render_clips(jobs, workers, progress)
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    world = {
        "seed": seed, "num_classes": num_classes, "clips_per_class": clips_per_class, "seconds": seconds,
        "test_fraction": test_fraction, "size": size, "fps": fps, "sample_rate": sample_rate,
        "sound_bank": str(sound_bank) if sound_bank is not None else None,
        "classes": [{k: v for k, v in asdict(c).items() if k != "recordings"} for c in classes],
    }
    (out_dir / "world.json").write_text(json.dumps(world, indent=2))
    log.info("synthetic world: %d clips (%d classes, %.1f s each) in %s", len(rows), num_classes, seconds, out_dir)
    return out_dir


def _check_world_args(size: int, clips_per_class: int, test_fraction: float, seconds: float) -> None:
    if size % 2 or size < 16:
        raise ValueError(f"size must be an even number >= 16 (yuv420p), got {size}")
    if clips_per_class < 2 or not 0 < test_fraction < 1:
        raise ValueError(f"need clips_per_class >= 2 and 0 < test_fraction < 1, got {clips_per_class}, {test_fraction}")
    if seconds < 0.5:
        raise ValueError(f"seconds must be >= 0.5, got {seconds}")


def _clip_jobs(out_dir: Path, classes: list[ClassSpec], clips_per_class: int, test_fraction: float, seed: int,
               seconds: float, size: int, fps: float, sample_rate: int, sound_bank: str | None) -> list[_ClipJob]:
    """One job per clip, class by class: per class a seeded ``test_fraction`` of the clips (at least one) is
    held out, and the class's sound-bank recordings are split between its train and test clips."""
    n_test = max(1, int(round(clips_per_class * test_fraction)))
    test_ids = [set(np.random.default_rng([seed, k, 1 << 20]).permutation(clips_per_class)[:n_test].tolist())
                for k in range(len(classes))]
    by_split = [split_recordings(c, test_fraction, seed, k) for k, c in enumerate(classes)]
    jobs = []
    for k in range(len(classes)):
        for j in range(clips_per_class):
            split = "test" if j in test_ids[k] else "train"
            jobs.append(_ClipJob(out_dir, by_split[k][split], k, j, split, seed, seconds, size, fps, sample_rate,
                                 sound_bank))
    return jobs


def _render_clips(jobs: list[_ClipJob], workers: int | None, progress: bool) -> list[dict[str, Any]]:
    """Render and encode every job (in ``workers`` processes, default one per CPU); their rows in job order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    rows = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc="synthetic world", unit="clip", disable=not progress))
        if workers == 1:
            made = map(_make_clip, jobs)
        else:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers))
            made = pool.map(_make_clip, jobs, chunksize=4)
        for row in made:
            rows.append(row)
            bar.update(1)
    return rows


def read_labels(out_dir: str | Path) -> list[dict]:
    """Rows of ``out_dir/labels.csv`` as dicts (strings), with ``path`` made absolute."""
    out_dir = Path(out_dir)
    path = out_dir / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; generate the world first (avssl.demo.synthetic.generate_world)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["path"] = str(out_dir / row["path"])
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m avssl.demo.synthetic OUT [--classes K] ...``: write a world (for tests and experiments)."""
    parser = argparse.ArgumentParser(prog="python -m avssl.demo.synthetic", description=generate_world.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--clips-per-class", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--sound-bank", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_world(args.out, num_classes=args.classes, clips_per_class=args.clips_per_class, seconds=args.seconds,
                   seed=args.seed, sound_bank=args.sound_bank, size=args.size, fps=args.fps,
                   sample_rate=args.sample_rate, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
