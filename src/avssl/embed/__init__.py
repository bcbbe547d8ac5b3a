"""Embeddings: a checkpoint's audio tower applied to any audio, with no training code imported.

``embedder`` (``Embedder`` and ``load_model``: windows, resampling, read-outs, timestamps), ``collection``
(``avssl embed`` over files, folders and lists, with guarded decoding, skips and resume). The HEAR module is
:mod:`avssl.hear` and ONNX export is :mod:`avssl.export` (top level: they serve every model file).
"""
