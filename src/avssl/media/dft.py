"""The power spectrogram as real matrix products, for the ONNX export of the log-mel front-end.

The TorchScript exporter cannot export a complex ``torch.stft``, and onnxruntime's own STFT operator was
slower than a dense DFT (docs/benchmarks-embed.md). A dense DFT of every ``n_fft``-sample frame costs
``2 (n_fft / 2 + 1) n_fft`` multiply-adds per frame, more than the whole ``tiny`` tower. This module computes
the same numbers with about 0.38 of that (``n_fft`` 512, Hann window of 400, 64 mel bands to 7.8 kHz):

* only the samples under the window: a frame is the window's support (400 samples), cut from rows of
  ``hop`` samples with slices (no im2col of the zero-padded frame);
* samples folded in pairs before the product: ``cos(2 pi k m / N) = cos(2 pi k (N - m) / N)`` and
  ``sin(2 pi k (N - m) / N) = -sin(2 pi k m / N)``, so ``Re X[k] = sum_r cos(2 pi k r / N) (y[r] + y[N - r])``
  and ``Im X[k] = -sum_r sin(2 pi k r / N) (y[r] - y[N - r])`` over ``r <= N / 2``: half the columns;
* only the frequency bins that some mel filter uses (``bins``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FoldedPowerSpectrum(nn.Module):
    """Waveform ``float32[B, S]`` -> ``|STFT|^2`` of bins ``bins[0] .. bins[1] - 1``, ``float32[B, T, n]``
    (time first), ``T = S // hop + 1``: centred frames (``n_fft // 2`` zeros at both ends), as
    ``torch.stft(..., center=True, pad_mode="constant")`` with ``window`` (``float64[n_fft]``)."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor, bins: tuple[int, int]):
        super().__init__()
        w = window.double().numpy()
        support = np.flatnonzero(w)
        if len(support) == 0:
            raise ValueError("the window is zero everywhere")
        self.n_fft, self.hop = n_fft, hop
        self.lo, hi = int(support[0]), int(support[-1])
        self.size = hi - self.lo + 1  # samples per frame: the window's support
        self.register_buffer("window", torch.from_numpy(w[self.lo : hi + 1]).float(), persistent=False)
        # pairs {r, N - r}, r = rlo .. N // 2, as two contiguous runs of frame positions (pads: zeros where a
        # member is outside the support, or is r itself for r = N / 2)
        half = n_fft // 2
        rlo = min(self.lo, n_fft - hi)
        reps = np.arange(rlo, half + 1)
        a0, a1 = max(rlo, self.lo), min(half, hi)  # first members r, positions r - lo
        b0, b1 = max(rlo, n_fft - hi, 1), min(half - (n_fft % 2 == 0), n_fft - self.lo)  # second members N - r
        self.first = (a0 - self.lo, a1 + 1 - self.lo, a0 - rlo, half - a1)  # slice start, stop, pad left, right
        self.second = (n_fft - b1 - self.lo, n_fft - b0 + 1 - self.lo, b0 - rlo, half - b1)
        k = np.arange(*bins, dtype=np.float64)[:, None]
        ang = 2 * math.pi * k * reps[None, :].astype(np.float64) / n_fft
        self.register_buffer("cos", torch.from_numpy(np.cos(ang).T.copy()).float(), persistent=False)  # [R, n]
        self.register_buffer("sin", torch.from_numpy(-np.sin(ang).T.copy()).float(), persistent=False)

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` -> windowed frames ``[B, T, size]``: frame ``t`` is samples ``t * hop + lo ..`` of the
        centred (zero-padded) signal, cut from rows of ``hop`` samples (slices and one concatenation)."""
        hop, half = self.hop, self.n_fft // 2
        q, r = divmod(self.lo, hop)
        rows_per_frame = -(-(r + self.size) // hop)
        num_frames = wave.shape[1] // hop + 1
        x = F.pad(wave, (half, half + (q + rows_per_frame) * hop))
        x = x[:, : (num_frames + q + rows_per_frame - 1) * hop].reshape(wave.shape[0], -1, hop)
        x = torch.cat([x[:, q + i : q + i + num_frames] for i in range(rows_per_frame)], dim=2)
        return x[:, :, r : r + self.size] * self.window

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        y = self.frames(wave)
        (a0, a1, al, ar), (b0, b1, bl, br) = self.first, self.second
        a = F.pad(y[:, :, a0:a1], (al, ar))
        b = F.pad(y[:, :, b0:b1].flip(2), (bl, br))
        re, im = torch.matmul(a + b, self.cos), torch.matmul(a - b, self.sin)
        return re * re + im * im
