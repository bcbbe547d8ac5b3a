"""Audio embeddings for users: Python API, collection extraction (``avssl embed``), ONNX export (``avssl export``).

Imports only inference code (``audio``, ``config``, ``checkpoint``, ``models``): no data or training machinery.

How audio of any length becomes embeddings (the same rule for every clip, so results never depend on what
else is in the batch):

* Audio is mixed to mono (channels averaged) and resampled to the model's rate.
* The tower sees fixed windows of ``window_seconds`` (default: the training crop, ``cfg.data.crop_seconds``).
  A clip shorter than one window is **zero-padded at the end** to one window. A longer clip is cut into
  **overlapping windows** (hop = half a window by default, see ``overlap``); the last window is aligned to
  the end of the clip, so no padding is added to long audio.
* Clip embedding: the mean over windows of the tower's pooled features (``tower.forward``), ``[D]``.
* Timestamp embeddings: the tower's time-resolved features (``tower.forward_features``, frame ``i`` of a
  window centred ``(i + 0.5) * frame_hop_seconds`` after the window start) are read at times ``0, hop, 2 hop,
  ... <= duration`` from the window whose centre is nearest, interpolating linearly between frames.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .audio import LIST_SUFFIXES, MEDIA_SUFFIXES, LogMel, load_audio, pcm_to_float, resample
from .checkpoint import file_sha1, load_checkpoint
from .config import EMBED_FEATURES, Config
from .models import AUDIO_VIEWS, build_model
from .models.layers import layer_stats

log = logging.getLogger(__name__)

AudioInput = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


class Embedder(nn.Module):
    """One audio tower plus the windowing rules above. Build with :func:`load_model` or :meth:`from_model`.

    Attributes: ``sample_rate`` (Hz), ``embedding_dim`` (D), ``window`` and ``window_hop`` (samples),
    ``frame_hop_seconds`` (seconds per step of the tower's time-resolved features). ``overlap=0`` halves the
    work on long audio (windows then only overlap at the end); ``batch_size`` is in windows.
    """

    def __init__(self, tower: nn.Module, cfg: Config, view: str = "spec", window_seconds: float | None = None,
                 overlap: float = 0.5, batch_size: int = 32, features: str | None = None):
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
            window_seconds = cfg.embed.window_seconds or cfg.data.crop_seconds
        seconds = float(window_seconds)
        if seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {seconds}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap is the fraction of a window shared by consecutive windows, in [0, 1); got {overlap}")
        self.window = int(round(seconds * self.sample_rate))
        self.window_hop = max(1, int(round(self.window * (1 - overlap))))
        self.batch_size = int(batch_size)
        self.embedding_dim = int(tower.feature_dim)
        if self.features == "layers":
            with torch.inference_mode():
                probe = torch.zeros(1, self.window, device=next(tower.parameters()).device)
                self.embedding_dim = int(self._pooled(probe).shape[1])

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``[M, window]`` -> clip features ``[M, D]`` as :attr:`features` says."""
        return layer_stats(self.tower.forward_layers(x)) if self.features == "layers" else self.tower(x)

    @classmethod
    def from_model(cls, model: nn.Module, cfg: Config, view: str = "spec", **kwargs: Any) -> "Embedder":
        """Wrap the ``view`` tower of an ``AVModel`` (trained or random-init) built from ``cfg``."""
        if view not in AUDIO_VIEWS:
            raise ValueError(f"view {view!r} is not an audio view; use one of {AUDIO_VIEWS}")
        if view not in model.towers:
            raise ValueError(f"the model has no {view!r} tower (it has {list(model.towers)}); pick another view")
        return cls(model.towers[view], cfg, view, **kwargs)

    def train(self, mode: bool = True) -> "Embedder":
        """Inference only: the tower stays in eval mode (BatchNorm running statistics, no masking)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    # -- input handling -------------------------------------------------------------------------------------
    def _clips(self, audio: AudioInput, sample_rate: int) -> list[np.ndarray]:
        """Any accepted input -> list of mono ``float32[N]`` clips at :attr:`sample_rate`.

        ``[N]`` is one clip, ``[B, N]`` B mono clips, ``[B, C, N]`` B multi-channel clips; a list may hold
        clips of different lengths, each ``[N]`` or ``[C, N]``.
        """
        if isinstance(audio, (list, tuple)):
            clips = [_as_numpy(a) for a in audio]
            clips = [c.mean(axis=0) if c.ndim == 2 else c for c in clips]
            if any(c.ndim != 1 for c in clips):
                raise ValueError("a list of clips must hold [N] or [C, N] arrays")
        else:
            x = _as_numpy(audio)
            if x.ndim == 1:
                clips = [x]
            elif x.ndim == 2:
                clips = list(x)
            elif x.ndim == 3:
                clips = list(x.mean(axis=1))
            else:
                raise ValueError(f"audio must be [N], [B, N] or [B, C, N]; got shape {x.shape}")
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        out = []
        for i, c in enumerate(clips):
            if c.shape[0] == 0:
                raise ValueError(f"clip {i} is empty (0 samples)")
            if not np.isfinite(c).all():
                raise ValueError(f"clip {i} contains NaN or infinite samples")
            out.append(resample(c, int(sample_rate), self.sample_rate))
        return out

    def _window_starts(self, n: int) -> list[int]:
        """Start samples of the windows covering a clip of ``n`` samples (``n`` >= one window)."""
        starts = list(range(0, n - self.window + 1, self.window_hop))
        if starts[-1] + self.window < n:
            starts.append(n - self.window)  # end-aligned last window
        return starts

    @torch.inference_mode()
    def _run(self, clips: list[np.ndarray], features: bool) -> tuple[torch.Tensor, list[list[int]]]:
        """The tower over every window of every clip, ``batch_size`` windows at a time (windows are cut
        per batch, never all at once). Returns ``[M, D]`` (or ``[M, T', D]`` with ``features``) on the CPU,
        windows in clip order, and each clip's window starts (samples)."""
        clips = [np.pad(c, (0, self.window - len(c))) if len(c) < self.window else c for c in clips]
        starts = [self._window_starts(len(c)) for c in clips]
        jobs = [(i, s) for i, ss in enumerate(starts) for s in ss]
        fn = self.tower.forward_features if features else self._pooled
        outs = []
        for k in range(0, len(jobs), self.batch_size):
            x = np.stack([clips[i][s : s + self.window] for i, s in jobs[k : k + self.batch_size]])
            outs.append(fn(torch.from_numpy(x).to(self.device)).float().cpu())
        return torch.cat(outs), starts

    # -- public API -----------------------------------------------------------------------------------------
    def embed(self, audio: AudioInput, sample_rate: int) -> np.ndarray:
        """Clip-level embeddings ``float32[B, D]`` for ``audio`` (see :meth:`_clips` for accepted shapes).

        ``sample_rate`` is the rate of ``audio`` in Hz; it is resampled to :attr:`sample_rate` inside.
        """
        pooled, starts = self._run(self._clips(audio, sample_rate), features=False)  # [M, D]
        out, i = [], 0
        for s in starts:
            out.append(pooled[i : i + len(s)].mean(0))
            i += len(s)
        return torch.stack(out).numpy().astype(np.float32)

    def embed_timestamps(self, audio: AudioInput, sample_rate: int, hop: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Time-resolved embeddings ``(float32[B, T, D], seconds float64[T])`` every ``hop`` seconds.

        Timestamps are ``0, hop, 2 hop, ...`` up to the clip's duration. All clips must have the same
        duration (a ``[B, N]`` or ``[B, C, N]`` array, or a list of equal-length clips).
        """
        if hop <= 0:
            raise ValueError(f"hop must be > 0 seconds, got {hop}")
        clips = self._clips(audio, sample_rate)
        n = len(clips[0])
        if any(len(c) != n for c in clips):
            raise ValueError("embed_timestamps needs clips of equal length; call it once per clip instead")
        seconds = np.arange(int(np.floor(n / self.sample_rate / hop + 1e-9)) + 1, dtype=np.float64) * hop
        feats, starts = self._run(clips, features=True)  # [M, T', D]
        s = np.asarray(starts[0], dtype=np.float64) / self.sample_rate  # same windows for every clip
        centres = s + self.window / self.sample_rate / 2
        j = np.abs(seconds[:, None] - centres[None, :]).argmin(1)  # nearest window per timestamp
        pos = np.clip((seconds - s[j]) / self.frame_hop_seconds - 0.5, 0, feats.shape[1] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, feats.shape[1] - 1)
        w = torch.from_numpy(pos - lo).float()[None, :, None]
        feats = feats.view(len(clips), len(s), *feats.shape[1:])  # [B, windows, T', D]
        j_t, lo_t, hi_t = (torch.from_numpy(a) for a in (j, lo, hi))
        emb = feats[:, j_t, lo_t] * (1 - w) + feats[:, j_t, hi_t] * w
        return emb.numpy().astype(np.float32), seconds

    def embed_files(self, paths: Sequence[str | Path], progress: bool = True) -> np.ndarray:
        """Clip embeddings ``float32[len(paths), D]`` of audio or video files; raises ``AudioDecodeError``
        naming the first file that cannot be decoded (use :func:`embed_collection` to skip bad files)."""
        out = np.zeros((len(paths), self.embedding_dim), np.float32)
        for i, p in enumerate(tqdm(paths, desc="embed", unit="file", disable=not progress)):
            out[i] = self.embed(load_audio(p, self.sample_rate), self.sample_rate)[0]
        return out


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"audio must be a numeric array, got dtype {x.dtype}")
    return pcm_to_float(x)  # integer PCM -> [-1, 1]


def load_model(path: str | Path, device: str | torch.device | None = None, view: str = "spec",
               **kwargs: Any) -> Embedder:
    """Load a checkpoint's ``view`` audio tower as an :class:`Embedder` on ``device`` (default: CUDA if
    available, else CPU). Only that tower is built. ``kwargs`` go to :class:`Embedder`."""
    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"])
    if view not in cfg.model.views:
        raise ValueError(f"{path}: checkpoint has views {cfg.model.views}, not {view!r}; pass view= one of them")
    model = build_model(replace(cfg, model=replace(cfg.model, views=[view])))
    prefix = f"towers.{view}."
    tower_state = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    model.towers[view].load_state_dict(tower_state)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Embedder.from_model(model, cfg, view, **kwargs).to(device)


# -- collections: avssl embed ---------------------------------------------------------------------------------
def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursive, media files only) and list files (``.txt``/``.lst``/``.list``, one
    path per line, ``#`` comments, relative to the list file) into ``(path, output name)`` pairs.

    Output names mirror the input (``folder/sub/a.wav`` -> ``folder/sub/a.wav.npz``); names that two inputs
    would share get a hash of each full path. Missing paths are kept so that they are reported as skipped.
    """
    items: list[tuple[Path, str]] = []

    def add(p: Path, rel: str) -> None:
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in MEDIA_SUFFIXES):
                items.append((f, f"{rel}/{f.relative_to(p).as_posix()}"))
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    add(q, q.name)
        else:
            items.append((p, rel))

    for x in inputs:
        add(Path(x), Path(x).resolve().name)
    unique: dict[Path, tuple[Path, str]] = {}  # resolved path -> first (path, name) it was given as
    for p, rel in items:
        unique.setdefault(p.resolve(), (p, rel))
    counts: dict[str, int] = {}
    for _, rel in unique.values():
        counts[rel] = counts.get(rel, 0) + 1
    return [(p, f"{rel}.npz" if counts[rel] == 1 else f"{rel}.{hashlib.sha1(str(key).encode()).hexdigest()[:10]}.npz")
            for key, (p, rel) in unique.items()]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically (temp file + rename), so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _made_from(path: Path) -> str | None:
    """The input an existing output was made from (None if there is no readable output)."""
    try:
        with np.load(path) as z:
            return str(z["input"])
    except (OSError, KeyError, ValueError):
        return None


def _prefetch(fn, items: list, workers: int) -> Iterator[tuple[Any, Future]]:
    """Run ``fn(item)`` in ``workers`` threads at most ``2 * workers`` items ahead; yield in order."""
    with ThreadPoolExecutor(max(1, workers)) as ex:
        queue: deque = deque()
        it = iter(items)
        for item in it:
            queue.append((item, ex.submit(fn, item)))
            if len(queue) >= 2 * max(1, workers):
                break
        while queue:
            yield queue.popleft()
            item = next(it, None)
            if item is not None:
                queue.append((item, ex.submit(fn, item)))


def _node_split(num_nodes: int | None, node_rank: int | None) -> tuple[int, int]:
    """Explicit ``--num-nodes/--node-rank``, else torchrun's ``WORLD_SIZE``/``RANK``, else one process."""
    if num_nodes is None:
        num_nodes = int(os.environ.get("WORLD_SIZE", 1))
        node_rank = int(os.environ.get("RANK", 0)) if node_rank is None else node_rank
    node_rank = 0 if node_rank is None else node_rank
    if not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} is out of range for {num_nodes} nodes; use 0..{num_nodes - 1}")
    return num_nodes, node_rank


def _check_settings(out_dir: Path, settings: dict, **info: Any) -> None:
    """Write ``out_dir/embed.json`` on the first run; on later runs (resume) refuse other ``settings``."""
    path = out_dir / "embed.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(f"{out_dir} holds embeddings made with other settings or another checkpoint ({path}: "
                             f"{old}); use a new --out folder or delete the old one")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".embed.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**settings, **info, "avssl_version": __version__}, indent=1))
    os.replace(tmp, path)


def embed_collection(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
                     view: str = "spec", device: str | None = None, timestamps: bool = False, hop: float = 0.1,
                     overlap: float = 0.5, num_nodes: int | None = None, node_rank: int | None = None,
                     workers: int = 2, progress: bool = True, features: str | None = None) -> list[dict]:
    """Embed every file in ``inputs`` (see :func:`collect_inputs`) into ``out_dir``; return the index rows.

    One ``.npz`` per input under ``out_dir/embeddings/`` with ``embedding`` float32[D], ``seconds`` (the
    duration) and ``input`` (resolved path), plus ``timestamps`` float64[T] and ``timestamp_embeddings`` float32[T, D] when ``timestamps``.
    ``out_dir/index.jsonl`` (``index-{rank}-of-{num_nodes}.jsonl`` when split) has one row per input:
    ``input``, ``output``, ``status`` (``ok``, ``done`` = kept from an earlier run, ``skipped``), ``reason``.
    Existing outputs made from the same input are kept (resume). Inputs are split ``node_rank::num_nodes`` across processes.
    """
    out_dir = Path(out_dir)
    num_nodes, node_rank = _node_split(num_nodes, node_rank)
    if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    embedder = load_model(checkpoint, device=device, view=view, overlap=overlap, features=features)
    _check_settings(out_dir, {"features": embedder.features,
        "checkpoint_sha1": file_sha1(checkpoint), "view": view, "timestamps": timestamps,
        "hop": hop if timestamps else None, "sample_rate": embedder.sample_rate, "embedding_dim": embedder.embedding_dim,
        "window_seconds": embedder.window / embedder.sample_rate, "overlap": 1 - embedder.window_hop / embedder.window,
    }, checkpoint=str(Path(checkpoint).resolve()))

    items = collect_inputs(inputs)[node_rank::num_nodes]
    rows, todo = [], []
    for path, name in items:
        if _made_from(out_dir / "embeddings" / name) == str(path.resolve()):
            rows.append({"input": str(path), "output": f"embeddings/{name}", "status": "done", "reason": None})
        else:
            todo.append((path, name))
    log.info("embed: %d inputs on this node, %d already done, %d to do", len(items), len(items) - len(todo), len(todo))
    bar = tqdm(total=len(todo), desc="embed", unit="file", disable=not progress)
    for (path, name), fut in _prefetch(lambda it: load_audio(it[0], embedder.sample_rate), todo, workers):
        row = {"input": str(path), "output": None, "status": "skipped", "reason": None}
        try:
            audio = fut.result()
            arrays = {"embedding": embedder.embed(audio, embedder.sample_rate)[0], "input": str(path.resolve()),
                      "seconds": np.float64(len(audio) / embedder.sample_rate)}
            if timestamps:
                emb, secs = embedder.embed_timestamps(audio, embedder.sample_rate, hop=hop)
                arrays.update(timestamps=secs, timestamp_embeddings=emb[0])
            _save_npz(out_dir / "embeddings" / name, **arrays)
            row.update(output=f"embeddings/{name}", status="ok")
        except Exception as e:  # a bad file must not stop a long run: record why and go on
            row["reason"] = f"{type(e).__name__}: {e}"
            log.warning("skipped %s: %s", path, row["reason"])
        rows.append(row)
        bar.update(1)
    bar.close()
    index = out_dir / ("index.jsonl" if num_nodes == 1 else f"index-{node_rank}-of-{num_nodes}.jsonl")
    index.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["input"])))
    skipped = [r for r in rows if r["status"] == "skipped"]
    log.info("embed: wrote %s (%d ok, %d kept, %d skipped)", index, sum(r["status"] == "ok" for r in rows),
             sum(r["status"] == "done" for r in rows), len(skipped))
    for r in skipped:
        log.info("  skipped %s: %s", r["input"], r["reason"])
    return rows


# -- ONNX export: avssl export --------------------------------------------------------------------------------
def export_onnx(embedder: Embedder, path: str | Path, opset: int = 17, check: bool = True) -> Path:
    """Export the tower (log-mel front-end included, as a strided convolution) to ONNX.

    Graph: ``audio`` float32[batch, samples] mono at ``embedder.sample_rate`` -> ``embedding``
    float32[batch, D], the pooled features of that input (no windowing: the caller windows long audio).
    Batch and length are dynamic. With ``check``, onnxruntime is compared with torch on two inputs of
    different sizes and a difference above 1e-4 is an error.
    """
    path = Path(path)
    tower = copy.deepcopy(embedder.tower).cpu().eval()
    for m in tower.modules():
        if isinstance(m, LogMel):
            m.export_mode = True
    example = torch.randn(2, embedder.window, generator=torch.Generator().manual_seed(0)) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(tower, (example,), str(path), input_names=["audio"], output_names=["embedding"],
                          dynamic_axes={"audio": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    if check:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        g = torch.Generator().manual_seed(1)
        for shape in [(1, embedder.window), (3, embedder.window + embedder.window // 3 + 7)]:
            x = torch.randn(*shape, generator=g) * 0.1
            with torch.inference_mode():
                ref = embedder.tower(x.to(embedder.device)).float().cpu().numpy()
            got = sess.run(None, {"audio": x.numpy()})[0]
            err = float(np.abs(got - ref).max())
            if err > 1e-4:
                raise RuntimeError(f"{path}: onnxruntime differs from torch by {err:.2e} on input {shape}")
            log.info("export check %s: max |onnx - torch| = %.2e", shape, err)
    return path


# -- CLI ------------------------------------------------------------------------------------------------------
def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="avssl checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", help="audio/video files, folders (recursive) or list files (.txt)")
    p.add_argument("--out", required=True, help="output folder (re-running with the same one resumes)")
    p.add_argument("--timestamps", action="store_true", help="also store time-resolved embeddings")
    p.add_argument("--hop", type=float, default=0.1, help="seconds between timestamp embeddings (default 0.1)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="fraction shared by consecutive windows on long audio (default 0.5; 0 = half the work)")
    p.add_argument("--view", default="spec", choices=AUDIO_VIEWS, help="which audio tower (default spec)")
    p.add_argument("--features", default=None, choices=EMBED_FEATURES,
                   help="pooled: last block, mean+max over time; layers: mean+std of every block "
                   "(default: the checkpoint's embed.features)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-nodes", type=int, default=None, help="split the inputs across this many processes")
    p.add_argument("--node-rank", type=int, default=None, help="this process's share (0..num-nodes-1)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_embed(args: argparse.Namespace) -> int:
    rows = embed_collection(args.checkpoint, args.inputs, args.out, view=args.view, device=args.device,
                            timestamps=args.timestamps, hop=args.hop, overlap=args.overlap, num_nodes=args.num_nodes,
                            node_rank=args.node_rank, workers=args.workers, progress=not args.no_progress,
                            features=args.features)
    return 0 if any(r["status"] != "skipped" for r in rows) or not rows else 1


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="avssl checkpoint (.pt)")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--view", default="spec", choices=AUDIO_VIEWS, help="which audio tower (default spec)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch comparison")


def run_export(args: argparse.Namespace) -> int:
    embedder = load_model(args.checkpoint, device="cpu", view=args.view)
    path = export_onnx(embedder, args.onnx, opset=args.opset, check=not args.no_check)
    log.info("wrote %s (input 'audio' [batch, samples] at %d Hz -> 'embedding' [batch, %d])", path,
             embedder.sample_rate, embedder.embedding_dim)
    return 0
