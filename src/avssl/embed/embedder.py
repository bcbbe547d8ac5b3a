"""Audio embeddings for users: the Python API (:func:`load_model` -> :class:`Embedder`) and the ``avssl embed``
command line (its work over collections is in :mod:`avssl.embed.collection`; ONNX export in :mod:`avssl.export`).

Imports only inference code (``audio``, ``config``, ``checkpoint``, ``models``): no data or training machinery.

How audio of any length becomes embeddings (the same rule for every clip, so results never depend on what
else is in the batch):

* Audio is mixed to mono (channels averaged) and resampled to the model's rate.
* The tower sees fixed windows of ``window_seconds`` (default: the training crop, ``cfg.data.crop_seconds``).
  A clip shorter than one window is **zero-padded at the end** to one window. A longer clip is cut into
  **overlapping windows** (hop = half a window by default, see ``overlap``); the last window is aligned to
  the end of the clip, so no padding is added to long audio.
* Clip embedding: the mean over windows of the tower's pooled features (``tower.forward``, or every block's
  statistics with ``features="layers"``), ``[D]``. Clip and timestamp embeddings come from one pass of the tower
  (:meth:`Embedder.embed_tensors`).
* Timestamp embeddings: the tower's time-resolved features (``tower.forward_features``, frame ``i`` of a
  window centred ``(i + 0.5) * frame_hop_seconds`` after the window start) are read at times ``0, hop, 2 hop,
  ... <= duration`` from the window whose centre is nearest, interpolating linearly between frames.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from avssl.media.audio import load_audio, pcm_to_float, resample
from avssl.checkpoint import load_checkpoint, tower_state
from avssl.config import EMBED_FEATURES, Config
from avssl.models import AUDIO_VIEWS, build_model
from avssl.models.layers import layer_stats, pool_time

log = logging.getLogger(__name__)

AudioInput = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


# Windows per tower call. On this project's 2-core CPU (1 thread), 8 windows per call ran the small tower's
# embed() 1.2-1.7x faster than 32 and the tiny tower's within the runs' noise (docs/benchmarks-embed.md);
# a GPU wants bigger calls.
CPU_BATCH, GPU_BATCH = 8, 32


class Embedder(nn.Module):
    """One audio tower plus the windowing rules above. Build with :func:`load_model` or :meth:`from_model`.

    Attributes: ``sample_rate`` (Hz), ``embedding_dim`` (D), ``window`` and ``window_hop`` (samples),
    ``frame_hop_seconds`` (seconds per step of the tower's time-resolved features). ``overlap=0`` halves the
    work on long audio (windows then only overlap at the end); ``batch_size`` is in windows per tower call
    (default :data:`CPU_BATCH` on a CPU, :data:`GPU_BATCH` on a GPU, decided at each call, so an embedder moved
    with ``.to()`` follows; embeddings do not depend on it).
    """

    def __init__(self, tower: nn.Module, cfg: Config, view: str = "spec", window_seconds: float | None = None,
                 overlap: float = 0.5, batch_size: int | None = None, features: str | None = None):
        super().__init__()
        self.tower = tower.eval()
        self.cfg = cfg
        self.view = view
        self.sample_rate = int(cfg.audio.sample_rate)
        self.features = features or cfg.embed.features
        if self.features not in EMBED_FEATURES:
            raise ValueError(f"features={self.features!r}; use one of {', '.join(EMBED_FEATURES)}")
        self.frame_hop_seconds = float(tower.frame_hop_seconds)
        if window_seconds is None:
            window_seconds = cfg.embed_window_seconds
        seconds = float(window_seconds)
        if seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {seconds}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap is the fraction of a window shared by consecutive windows, in [0, 1); got {overlap}")
        self.window = int(round(seconds * self.sample_rate))
        self.window_hop = max(1, int(round(self.window * (1 - overlap))))
        self.batch_size = int(batch_size) if batch_size else None
        self.embedding_dim = int(tower.feature_dim)
        self.layer_dims: list[int] | None = None  # features="layers": each block's share of the embedding
        if self.features == "layers":
            with torch.inference_mode():
                probe = torch.zeros(1, self.window, device=next(tower.parameters()).device)
                self.layer_dims = [2 * int(x.shape[-1]) for x in tower.forward_layers(probe)]
            self.embedding_dim = sum(self.layer_dims)

    def forward_windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``[M, window]`` -> (clip features ``[M, embedding_dim]`` as :attr:`features` says,
        time-resolved features ``[M, T', feature_dim]``), from one pass of the tower.

        ``pooled``: ``tower.forward_features`` and its time pooling (what ``tower.forward`` computes);
        ``layers``: :func:`layer_stats` of ``tower.forward_layers``, whose last entry ``[M, T', feature_dim * F]``
        averaged over its ``F`` positions is ``forward_features`` (pinned by a test for every audio tower).
        """
        if self.features == "layers":
            layers = self.tower.forward_layers(x)
            frames = layers[-1].unflatten(-1, (self.tower.feature_dim, -1)).mean(-1)
            return layer_stats(layers), frames
        frames = self.tower.forward_features(x)
        return pool_time(frames), frames

    @classmethod
    def from_model(cls, model: nn.Module, cfg: Config, view: str = "spec", **kwargs: Any) -> "Embedder":
        """Wrap the ``view`` tower of an ``AVModel`` (trained or random-init) built from ``cfg``."""
        if view not in AUDIO_VIEWS:
            raise ValueError(f"view {view!r} is not an audio view; use one of {AUDIO_VIEWS}")
        if view not in model.towers:
            raise ValueError(f"the model has no {view!r} tower (it has {list(model.towers)}); pick another view")
        return cls(model.towers[view], cfg, view, **kwargs)

    def to_int8(self) -> "Embedder":
        """Run the tower's blocks in int8 on the CPU from now on (:func:`quantize_int8`); returns self."""
        self.tower = quantize_int8(self.tower, self.window, self.sample_rate)
        return self

    def train(self, mode: bool = True) -> "Embedder":
        """Inference only: the tower stays in eval mode (BatchNorm running statistics, no masking)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    # -- input handling -------------------------------------------------------------------------------------
    def _clips(self, audio: AudioInput, sample_rate: int) -> list[torch.Tensor]:
        """Any accepted input -> list of mono ``float32[N]`` tensors at :attr:`sample_rate` (on the input's
        device unless they had to be resampled; float32 input is not copied).

        ``[N]`` is one clip, ``[B, N]`` B mono clips, ``[B, C, N]`` B multi-channel clips; a list may hold
        clips of different lengths, each ``[N]`` or ``[C, N]``.
        """
        if isinstance(audio, (list, tuple)):
            clips = [_as_tensor(a) for a in audio]
            clips = [c.mean(dim=0) if c.dim() == 2 else c for c in clips]
            if any(c.dim() != 1 for c in clips):
                raise ValueError("a list of clips must hold [N] or [C, N] arrays")
        else:
            x = _as_tensor(audio)
            if x.dim() == 1:
                clips = [x]
            elif x.dim() == 2:
                clips = list(x)
            elif x.dim() == 3:
                clips = list(x.mean(dim=1))
            else:
                raise ValueError(f"audio must be [N], [B, N] or [B, C, N]; got shape {tuple(x.shape)}")
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        out = []
        for i, c in enumerate(clips):
            if c.shape[0] == 0:
                raise ValueError(f"clip {i} is empty (0 samples)")
            if not torch.isfinite(c).all():
                raise ValueError(f"clip {i} contains NaN or infinite samples")
            if int(sample_rate) != self.sample_rate:
                c = torch.from_numpy(resample(c.cpu().numpy(), int(sample_rate), self.sample_rate))
            out.append(c)
        return out

    def _window_starts(self, n: int) -> list[int]:
        """Start samples of the windows covering a clip of ``n`` samples: ``[0]`` for a clip of at most one
        window (zero-padded at the end), else every ``window_hop`` plus an end-aligned last window."""
        starts = list(range(0, max(n - self.window, 0) + 1, self.window_hop))
        if starts[-1] + self.window < n:
            starts.append(n - self.window)  # end-aligned last window
        return starts

    def _cut(self, clip: torch.Tensor, start: int) -> torch.Tensor:
        """The window of ``clip`` at ``start``, zero-padded at the end to :attr:`window` samples."""
        x = clip[start : start + self.window]
        return F.pad(x, (0, self.window - len(x))) if len(x) < self.window else x

    @torch.inference_mode()
    def _run(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """The tower over every window of every clip in the fewest calls of at most ``batch_size`` windows,
        equally filled (9 windows at 8 per call: 5 + 4, not 8 + 1; windows are cut per call, never all at
        once). Returns clip features ``[M, embedding_dim]`` and time-resolved features ``[M, T', feature_dim]``
        on :attr:`device`, windows in clip order, and each clip's window starts (samples)."""
        starts = [self._window_starts(len(c)) for c in clips]
        jobs = [(i, s) for i, ss in enumerate(starts) for s in ss]
        pooled, frames = [], []
        device = self.device
        calls = -(-len(jobs) // (self.batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH)))
        bounds = [k * len(jobs) // calls for k in range(calls + 1)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            x = torch.stack([self._cut(clips[i], s) for i, s in jobs[a:b]])
            p, f = self.forward_windows(x.to(device))
            pooled.append(p.float())
            frames.append(f.float())
        return torch.cat(pooled), torch.cat(frames), starts

    def _timestamps(self, frames: torch.Tensor, starts: list[int], n: int, hop: float
                    ) -> tuple[torch.Tensor, np.ndarray]:
        """Time-resolved features ``[B * windows, T', D]`` of B clips of ``n`` samples cut at ``starts`` ->
        (``[B, T, D]`` read at ``0, hop, 2 hop, ... <= n / sample_rate``, seconds ``float64[T]``)."""
        seconds = np.arange(int(np.floor(n / self.sample_rate / hop + 1e-9)) + 1, dtype=np.float64) * hop
        s = np.asarray(starts, dtype=np.float64) / self.sample_rate
        centres = s + self.window / self.sample_rate / 2
        j = np.abs(seconds[:, None] - centres[None, :]).argmin(1)  # nearest window per timestamp
        pos = np.clip((seconds - s[j]) / self.frame_hop_seconds - 0.5, 0, frames.shape[1] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, frames.shape[1] - 1)
        w = torch.from_numpy(pos - lo).float()[None, :, None].to(frames.device)
        frames = frames.view(-1, len(s), *frames.shape[1:])  # [B, windows, T', D]
        j_t, lo_t, hi_t = (torch.from_numpy(a).to(frames.device) for a in (j, lo, hi))
        return frames[:, j_t, lo_t] * (1 - w) + frames[:, j_t, hi_t] * w, seconds

    # -- public API -----------------------------------------------------------------------------------------
    def embed_tensors(self, audio: AudioInput, sample_rate: int, hop: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray | None]:
        """Clip embeddings ``float32[B, D]`` and, with ``hop`` (seconds), timestamp embeddings
        ``float32[B, T, D']`` and their times ``float64[T]`` (else ``None, None``), as torch tensors on
        :attr:`device`, from ONE pass of the tower over the windows. Timestamps need clips of equal length.
        :meth:`embed`, :meth:`embed_timestamps` and :meth:`embed_with_timestamps` are this, as numpy arrays.
        """
        clips = self._clips(audio, sample_rate)
        if hop is not None:
            if hop <= 0:
                raise ValueError(f"hop must be > 0 seconds, got {hop}")
            if any(len(c) != len(clips[0]) for c in clips):
                raise ValueError("embed_timestamps needs clips of equal length; call it once per clip instead")
        pooled, frames, starts = self._run(clips)
        i, out = 0, []
        for ss in starts:  # clip embedding: the mean over the clip's windows
            out.append(pooled[i : i + len(ss)].mean(0))
            i += len(ss)
        if hop is None:
            return torch.stack(out), None, None
        emb, seconds = self._timestamps(frames, starts[0], len(clips[0]), hop)  # same windows for every clip
        return torch.stack(out), emb, seconds

    def embed(self, audio: AudioInput, sample_rate: int) -> np.ndarray:
        """Clip-level embeddings ``float32[B, D]`` for ``audio`` (see :meth:`_clips` for accepted shapes).

        ``sample_rate`` is the rate of ``audio`` in Hz; it is resampled to :attr:`sample_rate` inside.
        """
        return self.embed_tensors(audio, sample_rate)[0].cpu().numpy()

    def embed_timestamps(self, audio: AudioInput, sample_rate: int, hop: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Time-resolved embeddings ``(float32[B, T, D], seconds float64[T])`` every ``hop`` seconds.

        Timestamps are ``0, hop, 2 hop, ...`` up to the clip's duration. All clips must have the same
        duration (a ``[B, N]`` or ``[B, C, N]`` array, or a list of equal-length clips).
        """
        _, emb, seconds = self.embed_tensors(audio, sample_rate, hop)
        return emb.cpu().numpy(), seconds

    def embed_with_timestamps(self, audio: AudioInput, sample_rate: int, hop: float = 0.05
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(clip float32[B, D], timestamps float32[B, T, D'], seconds float64[T])``: what :meth:`embed` and
        :meth:`embed_timestamps` return, from one pass of the tower (half the work of calling both)."""
        clip, emb, seconds = self.embed_tensors(audio, sample_rate, hop)
        return clip.cpu().numpy(), emb.cpu().numpy(), seconds

    def embed_files(self, paths: Sequence[str | Path], progress: bool = True) -> np.ndarray:
        """Clip embeddings ``float32[len(paths), D]`` of audio or video files; raises ``AudioDecodeError``
        naming the first file that cannot be decoded (:func:`avssl.embed.collection.embed_collection` skips bad files)."""
        out = np.zeros((len(paths), self.embedding_dim), np.float32)
        for i, p in enumerate(tqdm(paths, desc="embed", unit="file", disable=not progress)):
            out[i] = self.embed(load_audio(p, self.sample_rate), self.sample_rate)[0]
        return out


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor of numeric audio (integer PCM scaled to [-1, 1]); float32 input is not copied."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            return x.detach().float()
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"audio must be a numeric array, got dtype {x.dtype}")
    return torch.from_numpy(x if x.dtype == np.float32 else pcm_to_float(x))


def quantize_int8(tower: nn.Module, window: int, sample_rate: int) -> nn.Module:
    """A CPU copy of ``tower`` whose blocks run in int8: static quantisation with torch's x86 kernels (weights
    per channel; activation scales calibrated once, here, on :func:`calibration_audio`, so embeddings stay
    deterministic and batch-invariant). The front-end (log-mel, input BatchNorm, stem) stays float32; each
    block is quantised on its own, so ``forward_layers`` still sees every block's output."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    q = copy.deepcopy(tower).cpu().eval()
    seen: list[torch.Tensor] = []
    hook = q.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.inference_mode():
        q.forward_features(calibration_audio(window, sample_rate))
    hook.remove()
    h = seen[0].clone()
    qconfig = get_default_qconfig_mapping("x86")
    for i, block in enumerate(q.blocks):
        if not any(True for _ in block.parameters()):  # pooling between blocks stays float32
            h = block(h)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notes (see docs/embedding.md)
            prepared = prepare_fx(block, qconfig, example_inputs=(h,))
            with torch.no_grad():
                prepared(h)  # calibration: the observers record activation ranges
                h = block(h)
            q.blocks[i] = convert_fx(prepared)
    return q


def calibration_audio(window: int, sample_rate: int) -> torch.Tensor:
    """A fixed set of 16 windows ``float32[16, window]`` spanning quiet to loud: white and brown noise at
    log-spaced levels and pure tones, for int8 calibration (seeded, so every load calibrates alike)."""
    g = torch.Generator().manual_seed(0)
    levels = torch.logspace(-3, -0.3, 6)[:, None]
    white = torch.randn(6, window, generator=g) * levels
    brown = torch.randn(6, window, generator=g).cumsum(1)
    brown = brown / brown.abs().amax(1, keepdim=True) * levels
    t = torch.arange(window) / sample_rate
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in (110.0, 440.0, 1760.0, 5000.0)])
    return torch.cat([white, brown, tones]).clamp(-1, 1).float()


def load_model(path: str | Path, device: str | torch.device | None = None, view: str = "spec",
               int8: bool = False, **kwargs: Any) -> Embedder:
    """Load a checkpoint's ``view`` audio tower as an :class:`Embedder` on ``device`` (default: CUDA if
    available, else CPU). Only that tower is built. ``int8``: run the tower's blocks in int8 on the CPU
    (:func:`quantize_int8`; faster, slightly different embeddings: see docs/benchmarks-embed.md).
    ``kwargs`` go to :class:`Embedder`."""
    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"])
    if view not in cfg.model.views:
        raise ValueError(f"{path}: checkpoint has views {cfg.model.views}, not {view!r}; pass view= one of them")
    model = build_model(replace(cfg, model=replace(cfg.model, views=[view])))
    model.towers[view].load_state_dict(tower_state(state, view))
    device = torch.device(device or ("cpu" if int8 else "cuda" if torch.cuda.is_available() else "cpu"))
    if int8 and device.type != "cpu":
        raise ValueError(f"int8=True runs on the CPU only; got device={device}")
    embedder = Embedder.from_model(model, cfg, view, **kwargs).to(device)
    return embedder.to_int8() if int8 else embedder
