"""ONNX export of an audio tower with its log-mel front-end (``avssl export``), and the onnxruntime session
settings measured fastest on CPUs (``benchmarks/speed.py``).

Imports only inference code. The graph: ``audio`` float32[batch, samples] mono at the model's rate ->
``embedding`` float32[batch, D], what :meth:`avssl.embed.embedder.Embedder.embed` computes for one window (the
read-out ``embed.features`` says: the pooled last block, or every block's statistics with ``layers``), or, for a
classifier model file (``avssl finetune``), ``scores`` float32[batch, C] (softmax, or a sigmoid per label) of one
window. Input shorter than a window is zero-padded at the end to one window inside the graph, as ``embed()`` and
``predict`` pad it; longer input is read as one window of its length (no windowing): the caller windows long audio
as :mod:`avssl.embed.embedder` does and averages a clip's windows. Batch and length are dynamic. The front-end's
power spectrum is real matrix products over folded sample pairs (:class:`avssl.media.dft.FoldedPowerSpectrum`; the
TorchScript exporter cannot export a complex ``torch.stft``, and onnxruntime's STFT operator was slower).
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from torch import nn

from avssl.media.audio import LogMel
from avssl.checkpoint import CLASSIFIER_KIND, load_checkpoint
from avssl.finetune.classifier import Classifier, load_classifier
from avssl.embed.embedder import Embedder, load_model
from avssl.models import AUDIO_VIEWS

log = logging.getLogger(__name__)


def _pad_to_window(audio: torch.Tensor, window: int) -> torch.Tensor:
    """``audio`` [B, N] zero-padded at the end to ``window`` samples when shorter (as ``Embedder._cut`` pads a
    short clip), else as it is; written with the length as a tensor, so the traced graph pads by its input's
    length."""
    padded = torch.cat([audio, audio.new_zeros(audio.shape[0], window)], dim=1)
    return padded[:, : torch.clamp(torch.as_tensor(audio.shape[1]), min=window)]


class _Features(nn.Module):
    """An embedder as one graph: a short input padded to a window -> the tower's read-out
    (:meth:`Embedder.forward_windows`: ``pooled`` or ``layers``), what ``embed()`` gives for one window."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embedder.forward_windows(_pad_to_window(audio, self.embedder.window))[0]


class _Scores(nn.Module):
    """A classifier as one graph: a short input padded to a window -> tower -> its read-out (``embed.features``)
    -> head -> scores, what ``predict`` gives for one window."""

    def __init__(self, clf: Classifier):
        super().__init__()
        self.embedder, self.head, self.multilabel = clf.embedder, clf.head, clf.multilabel

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        norm, linear = self.head  # the head's BatchNorm written out (its statistics as constants): the
        x = self.embedder.forward_windows(_pad_to_window(audio, self.embedder.window))[0]  # exporter cannot size
        logits = linear((x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps))  # it after the concat
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)


def _graph(model: Embedder | Classifier) -> nn.Module:
    return _Scores(model) if isinstance(model, Classifier) else _Features(model)


def export_onnx(model: Embedder | Classifier, path: str | Path, opset: int = 17, check: bool = True) -> Path:
    """Export an embedder (tower and read-out), or a classifier (tower, read-out, head and scores), log-mel
    front-end included, to ONNX at ``path``.

    With ``check``, onnxruntime is compared with ``embed()`` (or ``predict``) on inputs of one window and of half
    a window, and with the same torch graph on a longer input; a difference above 1e-4 is an error.
    """
    path = Path(path)
    embedder = model.embedder if isinstance(model, Classifier) else model
    graph = copy.deepcopy(_graph(model)).cpu().eval()
    output = "scores" if isinstance(model, Classifier) else "embedding"
    for m in graph.modules():
        if isinstance(m, LogMel):
            m.export_mode = True
    example = torch.randn(2, embedder.window, generator=torch.Generator().manual_seed(0)) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, (example,), str(path), input_names=["audio"], output_names=[output],
                          dynamic_axes={"audio": {0: "batch", 1: "samples"}, output: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    if check:
        _check(model, path)
    return path


def _check(model: Embedder | Classifier, path: Path) -> None:
    """Compare onnxruntime on ``path`` with what ``model`` computes; raise ``RuntimeError`` above 1e-4."""
    embedder = model.embedder if isinstance(model, Classifier) else model
    sess, w = onnx_session(path), embedder.window
    g = torch.Generator().manual_seed(1)
    for shape in [(1, w), (3, w), (2, w // 2), (3, w + w // 3 + 7)]:
        x = torch.randn(*shape, generator=g) * 0.1
        if shape[1] <= w:  # one window: what users call
            ref = model.predict(x, embedder.sample_rate) if isinstance(model, Classifier) else \
                model.embed(x, embedder.sample_rate)
        else:  # longer: the graph reads it as one window, as the same module in torch does
            with torch.inference_mode():
                ref = _graph(model)(x.to(embedder.device)).float().cpu().numpy()
        got = sess.run(None, {"audio": x.numpy()})[0]
        err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if err > 1e-4:
            raise RuntimeError(f"{path}: onnxruntime differs from torch by {err:.2e} on input {shape} "
                               f"(shapes {got.shape} and {ref.shape})")
        log.info("export check %s: max |onnx - torch| = %.2e", shape, err)


def onnx_session(path: str | Path, threads: int | None = None, spinning: bool = False):
    """An onnxruntime CPU session for an exported tower: ``threads`` intra-op threads (default: the
    runtime's choice, one per core), sequential execution, all graph optimisations, and (unless
    ``spinning``) worker threads that sleep instead of spinning between operators, which is faster on a
    machine shared with other processes (measured in ``benchmarks/speed.py``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# -- CLI: avssl export ----------------------------------------------------------------------------------------
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="avssl checkpoint (.pt), or a classifier model file from avssl finetune")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--view", default="spec", choices=AUDIO_VIEWS,
                   help="which audio tower of a pretraining checkpoint (default spec)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch comparison")


def run_export(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    if state.get("kind") == CLASSIFIER_KIND:
        clf = load_classifier(args.checkpoint, device="cpu")
        path = export_onnx(clf, args.onnx, opset=args.opset, check=not args.no_check)
        log.info("wrote %s (input 'audio' [batch, samples] at %d Hz, one %g s window -> 'scores' [batch, %d]: %s)",
                 path, clf.sample_rate, clf.window_seconds, len(clf.labels), ", ".join(clf.labels))
        return 0
    embedder = load_model(args.checkpoint, device="cpu", view=args.view)
    path = export_onnx(embedder, args.onnx, opset=args.opset, check=not args.no_check)
    log.info("wrote %s (input 'audio' [batch, samples] at %d Hz, one %g s window -> 'embedding' [batch, %d], "
             "features=%s)", path, embedder.sample_rate, embedder.window / embedder.sample_rate,
             embedder.embedding_dim, embedder.features)
    return 0
