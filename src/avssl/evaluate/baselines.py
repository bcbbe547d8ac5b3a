"""Feature baselines that run through the evaluation like a model: ``logmel-stats`` and ``mfcc-stats``
(per-band mean and std over time of log-mel or MFCCs). ``embed(audio, sample_rate) -> float32[B, D]``,
as :class:`avssl.evaluate.run.Encoder` asks.
"""

from __future__ import annotations

import numpy as np
import torch

from avssl.media.audio import LogMel, resample
from avssl.config import AudioConfig
from avssl.evaluate.probe import _one_thread

BASELINES = ("logmel-stats", "mfcc-stats")
N_MFCC = 20


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II, ``float32[n_out, n_in]`` (``M @ x`` = ``scipy.fft.dct(x, norm='ortho')[:n_out]``)."""
    k, m = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    mat = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * m + 1) / (2 * n_in))
    mat[0] /= np.sqrt(2.0)
    return mat.astype(np.float32)


class StatsBaseline:
    """Per-band mean and std over time of log-mel (``logmel-stats``, 2 x n_mels dims) or of
    MFCCs = DCT-II of log-mel (``mfcc-stats``, 2 x 20 dims). ``embed([B, N] or [N]) -> [B, D]``."""

    def __init__(self, kind: str, cfg: AudioConfig | None = None):
        if kind not in BASELINES:
            raise ValueError(f"unknown baseline {kind!r}; baselines: {', '.join(BASELINES)}")
        cfg = cfg or AudioConfig()
        self.kind, self.sample_rate = kind, cfg.sample_rate
        self.logmel = LogMel(cfg)
        self.dct = torch.from_numpy(dct_matrix(N_MFCC, cfg.n_mels)) if kind == "mfcc-stats" else None
        self.embedding_dim = 2 * (N_MFCC if self.dct is not None else cfg.n_mels)

    @torch.no_grad()
    def embed(self, audio: np.ndarray | list[np.ndarray], sample_rate: int) -> np.ndarray:
        """``[N]``, ``[B, N]``, ``[B, C, N]`` or a list of ``[N]`` clips of any lengths -> ``float32[B, D]``."""
        with _one_thread(torch.device("cpu")):
            if isinstance(audio, (list, tuple)):
                return np.concatenate([self._embed(np.asarray(c), sample_rate) for c in audio])
            return self._embed(audio, sample_rate)

    def _embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        x = x[None] if x.ndim == 1 else x.mean(axis=1) if x.ndim == 3 else x
        x = resample(x, sample_rate, self.sample_rate)
        feats = self.logmel(torch.from_numpy(np.ascontiguousarray(x)))  # [B, n_mels, T]
        if self.dct is not None:
            feats = torch.einsum("cm,bmt->bct", self.dct, feats)
        return torch.cat([feats.mean(-1), feats.std(-1, unbiased=False)], dim=1).numpy()
