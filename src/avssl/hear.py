"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) over an avssl checkpoint.

``load_model(model_file_path)`` -> a ``torch.nn.Module`` with ``sample_rate``, ``scene_embedding_size`` and
``timestamp_embedding_size``; ``get_scene_embeddings(audio, model)`` -> ``float32[n_sounds, D]``;
``get_timestamp_embeddings(audio, model)`` -> ``(float32[n_sounds, n_timestamps, D], timestamps_ms
float32[n_sounds, n_timestamps])`` every :data:`TIMESTAMP_HOP_MS` milliseconds. ``audio`` is
``float32[n_sounds, n_samples]`` in [-1, 1] at ``model.sample_rate``; outputs are on ``audio``'s device.
Windowing and padding follow :mod:`avssl.embed.embedder`; the audio stays a torch tensor throughout (no numpy round
trip; it is moved to the model's device once, and the results back once).
Usage with hear-eval-kit: ``--module avssl.hear
--model CHECKPOINT.pt``.
"""

from __future__ import annotations

import torch
from torch import nn

from avssl.embed.embedder import Embedder
from avssl.embed.embedder import load_model as _load_embedder

TIMESTAMP_HOP_MS = 50.0  # HEAR requires a hop of 50 ms or less


class HearModel(nn.Module):
    """An :class:`~avssl.embed.embedder.Embedder` with the attributes HEAR asks for."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder
        self.sample_rate: int = embedder.sample_rate
        self.scene_embedding_size: int = embedder.embedding_dim
        self.timestamp_embedding_size: int = embedder.embedding_dim


def load_model(model_file_path: str = "") -> HearModel:
    """Load an avssl checkpoint (its spectrogram tower) on CUDA if available, else the CPU."""
    if not model_file_path:
        raise ValueError("avssl.hear.load_model needs the path of an avssl checkpoint (.pt); there are no "
                         "built-in weights")
    return HearModel(_load_embedder(model_file_path))


def _check(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or 0 in audio.shape:
        shape = tuple(audio.shape) if hasattr(audio, "shape") else type(audio).__name__
        raise ValueError(f"HEAR audio must be a non-empty torch.Tensor [n_sounds, n_samples], got {shape}")


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``float32[n_sounds, n_samples]`` at ``model.sample_rate`` -> ``float32[n_sounds, scene_embedding_size]``."""
    _check(audio)
    emb, _, _ = model.embedder.embed_tensors(audio.to(model.embedder.device), model.sample_rate)
    return emb.to(audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``float32[n_sounds, n_samples]`` -> (``float32[n_sounds, n_timestamps, timestamp_embedding_size]``,
    timestamps in milliseconds ``float32[n_sounds, n_timestamps]``: ``0, 50, 100, ...`` up to the duration)."""
    _check(audio)
    _, emb, seconds = model.embedder.embed_tensors(audio.to(model.embedder.device), model.sample_rate,
                                                   hop=TIMESTAMP_HOP_MS / 1000)
    ts = torch.from_numpy(seconds * 1000).float()[None].expand(audio.shape[0], -1).contiguous()
    return emb.to(audio.device), ts.to(audio.device)
