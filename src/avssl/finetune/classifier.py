"""A fine-tuned audio classifier for users: :func:`load_classifier` -> :class:`Classifier` (``avssl finetune`` makes
the model file; ``avssl classify`` runs it over collections: :mod:`avssl.finetune.classify`).

Imports only inference code. The classifier is an audio tower plus a linear head on the features it reads from each window
(``finetune.features``: every block's statistics, or the pooled last block, as ``embed()`` reads them), with the
windowing rules of :class:`avssl.embed.embedder.Embedder`: audio
of any length is cut into the same windows ``embed()`` uses (a clip shorter than a window is zero-padded at the
end; longer clips get windows every ``window * (1 - overlap)`` seconds plus an end-aligned last one). Each window
is scored (softmax over the labels, or a sigmoid per label for multi-label models) and a clip's scores are the
mean of its windows' scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avssl.media.audio import load_audio
from avssl.checkpoint import load_classifier_state, tower_state
from avssl.config import Config
from avssl.embed.embedder import AudioInput, Embedder
from avssl.models import build_model


@dataclass
class WindowScores:
    """One clip's per-window scores: ``start`` and ``end`` (seconds, float64[W]; ``end`` is capped at the clip's
    duration) and ``scores`` float32[W, C]."""

    start: np.ndarray
    end: np.ndarray
    scores: np.ndarray


class Head(nn.Sequential):
    """The classification head: the window's features (the tower's read-out, ``finetune.features``: every block's
    statistics or its pooled last block) standardised, each with its mean and standard deviation over
    the training clips (a BatchNorm without learned scale whose statistics ``avssl finetune`` sets before training,
    as the linear probe standardises), and one linear layer to the labels."""

    def __init__(self, features: int, labels: int):
        super().__init__(nn.BatchNorm1d(features, affine=False), nn.Linear(features, labels))
        self.in_features, self.out_features = features, labels


class Classifier(nn.Module):
    """``embedder`` (tower + windows) and ``head`` (:class:`Head`).

    Attributes: ``labels`` (output order), ``multilabel``, ``sample_rate``, ``window_seconds``, ``info`` (what
    ``avssl finetune`` recorded: task, validation and test scores, ...)."""

    def __init__(self, embedder: Embedder, head: Head, labels: list[str], multilabel: bool,
                 info: dict[str, Any] | None = None):
        super().__init__()
        if head.out_features != len(labels) or head.in_features != embedder.embedding_dim:
            raise ValueError(f"head {head.in_features}->{head.out_features} does not fit {embedder.embedding_dim} "
                             f"features and {len(labels)} labels")
        self.embedder, self.head = embedder, head
        self.labels, self.multilabel, self.info = list(labels), bool(multilabel), dict(info or {})
        self.sample_rate = embedder.sample_rate
        self.window_seconds = embedder.window / embedder.sample_rate

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> scores: a sigmoid per label (multi-label) or a softmax over labels."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    @torch.inference_mode()
    def _window_scores(self, audio: AudioInput, sample_rate: int) -> tuple[list[torch.Tensor], list[list[int]], list[int]]:
        """Every clip's window scores ``[W_i, C]``, window starts (samples) and length (samples)."""
        clips = self.embedder._clips(audio, sample_rate)
        pooled, _, starts = self.embedder._run(clips)
        scores = self.activation(self.head(pooled)).float().cpu()
        out, i = [], 0
        for ss in starts:
            out.append(scores[i : i + len(ss)])
            i += len(ss)
        return out, starts, [len(c) for c in clips]

    def predict(self, audio: AudioInput, sample_rate: int) -> np.ndarray:
        """Scores ``float32[B, C]`` (label order :attr:`labels`) for clips in any shape ``embed()`` accepts
        (``[N]``, ``[B, N]``, ``[B, C, N]`` or a list of clips of any lengths) at ``sample_rate`` Hz."""
        scores, _, _ = self._window_scores(audio, sample_rate)
        return torch.stack([s.mean(0) for s in scores]).numpy()

    def predict_windows(self, audio: AudioInput, sample_rate: int) -> list[WindowScores]:
        """Per-window scores with their times, one :class:`WindowScores` per clip; the mean of a clip's
        window scores is its row of :meth:`predict`."""
        scores, starts, lengths = self._window_scores(audio, sample_rate)
        sr, w = self.sample_rate, self.embedder.window
        return [WindowScores(np.asarray(ss, np.float64) / sr, np.minimum(np.asarray(ss, np.float64) + w, n) / sr,
                             s.numpy()) for s, ss, n in zip(scores, starts, lengths)]

    def predict_file(self, path: str | Path) -> np.ndarray:
        """Scores ``float32[C]`` of an audio or video file (raises ``AudioDecodeError`` naming a bad file)."""
        return self.predict(load_audio(path, self.sample_rate), self.sample_rate)[0]

    def top_k(self, scores: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best ``(label, score)`` pairs of one row of scores, best first (ties: label order)."""
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return [(self.labels[i], float(scores[i])) for i in order]


def classifier_from_state(state: dict[str, Any], *, device: str | torch.device | None = None,
                          overlap: float = 0.5) -> Classifier:
    """A :class:`Classifier` from a model file's contents (:func:`avssl.checkpoint.load_classifier_state`)."""
    cfg = Config.from_dict(state["config"])
    view = state["view"]
    model = build_model(dc_replace(cfg, model=dc_replace(cfg.model, views=[view])))
    tower = model.towers[view]
    tower.load_state_dict(tower_state(state, view))
    embedder = Embedder(tower, cfg, view, overlap=overlap, features=cfg.finetune.features)
    head = Head(embedder.embedding_dim, len(state["labels"]))
    head.load_state_dict({k[len("head."):]: v for k, v in state["model"].items() if k.startswith("head.")})
    clf = Classifier(embedder, head, state["labels"], state["multilabel"], state.get("info"))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return clf.to(device).eval()


def load_classifier(path: str | Path, device: str | torch.device | None = None, overlap: float = 0.5) -> Classifier:
    """Load a classifier model file written by ``avssl finetune`` (``OUT/model.pt``) on ``device`` (default: CUDA
    if available, else CPU). ``overlap``: the share of a window consecutive windows have in common on long audio
    (default 0.5; 0 halves the work)."""
    return classifier_from_state(load_classifier_state(path), device=device, overlap=overlap)
