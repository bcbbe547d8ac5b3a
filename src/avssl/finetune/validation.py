"""Model selection in a fine-tuning run (:class:`Validation`): the validation clips, scored after every epoch as
inference scores them, and the criterion the kept epoch is chosen on. Accuracy (single-label) or mAP over the classes
that have a positive in the validation split (multi-label; the others are named in the log); when no class has one,
mAP is undefined and the validation loss chooses instead. Nothing undefined is written as JSON (:func:`json_safe`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from avssl.evaluate.probe import classification_metrics
from avssl.evaluate.tasks_base import Task

log = logging.getLogger(__name__)

LOSS = "valid_loss"


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts and lists too) replaced by ``None``: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def clip_loss(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean cross-entropy of clip scores (probabilities): ``-log p(label)``, or per-class binary cross-entropy for
    multi-hot ``y``; probabilities clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    if y.ndim == 2:
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


class Validation:
    """The validation clips and targets of a run and the criterion that picks its kept epoch: ``criterion`` is the
    task's metric (``accuracy`` | ``mAP``), ``valid_loss`` when that metric is undefined on these clips, or ``None``
    without validation clips (the last epoch is kept). ``scored_classes``: the classes the metric averages over."""

    def __init__(self, task: Task, clips: list[np.ndarray], y: np.ndarray):
        self.task, self.clips, self.y = task, clips, y
        self.scored_classes = len(task.classes)
        self.criterion: str | None = task.metric if len(clips) else None
        if len(clips) and task.multilabel:
            positives = y.sum(0) > 0
            self.scored_classes = int(positives.sum())
            missing = [c for c, p in zip(task.classes, positives) if not p]
            if not positives.any():
                self.criterion = LOSS
                log.warning("task %s: no validation clip holds any label, so validation mAP is undefined: the kept "
                            "epoch is the one with the lowest validation loss", task.name)
            elif missing:
                log.warning("task %s: validation mAP is over the %d of %d classes with a positive in the validation "
                            "split; without one: %s", task.name, self.scored_classes, len(task.classes),
                            ", ".join(missing))

    def measure(self, scores: np.ndarray) -> dict[str, float]:
        """``valid_loss`` and (when defined) ``valid_<metric>`` of the clips' ``scores``."""
        row = {LOSS: clip_loss(self.y, scores)}
        if self.criterion != LOSS:
            row[f"valid_{self.task.metric}"] = classification_metrics(self.y, scores)[self.task.metric]
        return row

    def key(self, row: dict[str, float]) -> float:
        """The epoch's selection value from its :meth:`measure` row, higher is better."""
        return -row[LOSS] if self.criterion == LOSS else row[f"valid_{self.criterion}"]
