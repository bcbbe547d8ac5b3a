"""The labelled clips of a fine-tuning run: which examples train, validate and test (:func:`split_task`), their
audio decoded once with unreadable files recorded as skipped (:func:`decode_examples`), and the seeded stream
of training batches (:func:`batch_indices`, :func:`random_crops`). Used by :mod:`avssl.finetune.run`."""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

import numpy as np
import torch

from avssl.config import FinetuneConfig
from avssl.evaluate.run import _load_clip
from avssl.media.audio import load_audio
from avssl.evaluate.probe import _carve, class_quota
from avssl.evaluate.tasks_base import Example, Task, TaskDataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Indices into ``task.examples`` of the training, validation (empty: none) and test clips."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def pick_fold(task: Task, name: str | None):
    """The fold called ``name`` (default: the task's first, ``official`` or ``fold1``)."""
    if name is None:
        return task.folds[0]
    for fold in task.folds:
        if fold.name == name:
            return fold
    raise ValueError(f"task {task.name} has no fold {name!r}; folds: {', '.join(f.name for f in task.folds)}")


def _few_labels(task: Task, idx: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` examples of every class drawn from ``idx`` with ``seed`` (all of a class that has fewer;
    multi-label: clips are drawn for each class in turn among those not drawn yet)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in task.classes:
        have = [i for i in idx if c in task.examples[i].labels and i not in chosen]
        need = per_class - sum(c in task.examples[i].labels for i in chosen)
        if need > 0:
            chosen += [int(i) for i in rng.permutation(have)[:need]]
    return np.sort(np.array(chosen, dtype=np.int64))


def split_task(task: Task, fold_name: str | None, fc: FinetuneConfig) -> Split:
    """The fold's training clips (``labels_per_class`` of each class when > 0), its validation clips (the fold's
    own, else carved from training: by the linear probe's rules, :func:`avssl.evaluate.probe._carve`, or, on a task
    with groups, by :func:`carve_groups`, groups kept whole), and its test clips. Every class keeps training clips.
    Without a validation set (a class with a single training clip, or groups that cannot be split) the run trains
    ``finetune.epochs`` epochs and keeps the last, with a warning."""
    if len(task.classes) < 2:
        raise TaskDataError(f"task {task.name} has one class ({task.classes[0]!r}); a classifier needs at least two")
    fold = pick_fold(task, fold_name)
    train, test = task.indices(fold.train), task.indices(fold.test)
    if fc.labels_per_class > 0:
        train = _few_labels(task, train, fc.labels_per_class, fc.seed)
    if fold.valid:
        return Split(train, task.indices(fold.valid), test)
    y = task.targets(train)
    counts = np.bincount(y, minlength=len(task.classes)) if y.ndim == 1 else y.sum(0)
    no_valid = Split(train, np.zeros(0, np.int64), test)
    if counts.min() < 2:
        log.warning("task %s: a class has fewer than 2 training clips, so no validation split can be carved: training "
                    "%d epochs without early stopping and keeping the last epoch", task.name, fc.epochs)
        return no_valid
    groups = [task.examples[i].group for i in train]
    if all(g is None for g in groups):
        tr, va = _carve(y, fc.valid_share, fc.seed)
        return Split(train[tr], train[va], test)
    groups = np.array([f"#{i}" if g is None else f"g:{g}" for i, g in zip(train, groups)])
    tr, va = carve_groups(y, groups, fc.valid_share, fc.seed)
    whole = [f"{c} ({int(n)} clips, 1 group)" for k, (c, n) in enumerate(zip(task.classes, counts))
             if len(np.unique(groups[(y == k) if y.ndim == 1 else y[:, k] > 0])) == 1]
    if len(va) == 0:
        log.warning("task %s: no group of training clips can validate without taking some class's last training clips "
                    "(classes whose training clips share one group: %s): training %d epochs without early stopping "
                    "and keeping the last epoch", task.name, ", ".join(whole) or "none", fc.epochs)
        return no_valid
    if whole:
        log.warning("task %s: these classes' training clips all share one group, so they have no validation clip: %s",
                    task.name, ", ".join(whole))
    return Split(train[tr], train[va], test)


def carve_groups(y: np.ndarray, groups: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, valid)`` positions of ``y`` (class ids or multi-hot), each group (one id per clip) on one side and
    every class keeping training clips, whatever the number of clips per class (few labels included).

    Class ``c`` gives about its :func:`avssl.evaluate.probe.class_quota` (``share`` of its clips): the groups are
    visited in seeded random order, and one goes to validation when every class it holds is still below its quota
    (a group may pass it, as groups come whole) and keeps a training clip. When no group fits, the first group (same
    order) that leaves every class a training clip validates alone; when none does, validation is empty."""
    onehot = (np.eye(int(y.max()) + 1, dtype=np.int64)[y] if y.ndim == 1 else (y > 0).astype(np.int64))
    counts = onehot.sum(0)
    rng = np.random.default_rng(seed)
    take = class_quota(counts, share, rng)
    names, inverse = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(names), onehot.shape[1]), np.int64)
    np.add.at(per_group, inverse, onehot)  # [groups, classes]: clips of each class in each group
    order, taken, chosen = rng.permutation(len(names)), np.zeros_like(counts), []
    for k in order:
        held = per_group[k] > 0
        if held.any() and (taken[held] < take[held]).all() and (taken + per_group[k] <= counts - 1).all():
            taken += per_group[k]
            chosen.append(k)
    if not chosen:
        chosen = [k for k in order if (per_group[k] <= counts - 1).all()][:1]
    valid = np.isin(inverse, chosen)
    return np.flatnonzero(~valid), np.flatnonzero(valid)


def decode_examples(examples: list[Example], sample_rate: int, progress: bool = True
                    ) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Every example's mono float32 audio at ``sample_rate`` (decoded on 2 threads), by position; examples that
    cannot be decoded or are empty are left out and returned as skipped rows ``{"path", "reason"}``."""
    from tqdm.auto import tqdm

    def one(ex: Example) -> np.ndarray:
        audio = _load_clip(ex, sample_rate, load_audio)
        if len(audio) == 0:
            raise ValueError("no audio samples")
        return audio

    audio, skipped = {}, []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one, ex) for ex in examples]
        for i, fut in enumerate(tqdm(futures, desc="decode", unit="clip", disable=not progress)):
            try:
                audio[i] = fut.result()
            except Exception as e:  # a bad file costs only itself: recorded, and the run goes on
                skipped.append({"path": str(examples[i].path), "reason": f"{type(e).__name__}: {e}"})
                log.warning("skipped %s: %s", examples[i].path, skipped[-1]["reason"])
    return audio, skipped


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Positions (into the ``n`` training clips) of batch number ``step`` (from 0) of the stream made of seeded
    permutations of the clips one after another: a function of the step alone, so a resumed run draws the same."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    out = np.empty(batch_size, np.int64)
    for p in np.unique(pos // n):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(p))).numpy()
        sel = pos // n == p
        out[sel] = perm[pos[sel] % n]
    return out


def random_crops(clips: list[np.ndarray], window: int, generator: torch.Generator) -> torch.Tensor:
    """``float32[B, window]``: a random window of each clip (uniform start), or the clip zero-padded at the end
    when shorter, as :class:`avssl.embed.embedder.Embedder` pads."""
    out = torch.zeros(len(clips), window)
    u = torch.rand(len(clips), generator=generator)
    for i, c in enumerate(clips):
        start = int(u[i] * (len(c) - window + 1)) if len(c) > window else 0
        piece = c[start : start + window]
        out[i, : len(piece)] = torch.from_numpy(piece)
    return out
