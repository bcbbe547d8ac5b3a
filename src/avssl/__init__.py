"""avssl: self-supervised audio representations learned from video.

``avssl.load_model`` (an embedder) and ``avssl.load_classifier`` (a fine-tuned classifier) are imported lazily so
``import avssl`` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "load_classifier"]


def __getattr__(name: str):
    if name == "load_model":
        from avssl.embed.embedder import load_model

        return load_model
    if name == "load_classifier":
        from avssl.finetune.classifier import load_classifier

        return load_classifier
    raise AttributeError(f"module 'avssl' has no attribute {name!r}")
