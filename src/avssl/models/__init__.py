"""Encoders: spectrogram CNN (CNN14-style, with its log-mel front-end), waveform 1-D CNN
(Res1dNet-style), TSM-ResNet video tower; projection heads; a registry.

``build_model(cfg)`` builds the :class:`AVModel` a config describes; ``create_model(name)``
builds one registered tower; ``list_models()`` names them. See docs/models.md.
"""

from __future__ import annotations

from avssl.models import spec, video, wave  # noqa: F401  (registers the towers)
from avssl.models.avmodel import AUDIO_VIEWS, PRESETS, VIEWS, AVModel, ProjectionHead, build_model, tower_name
from avssl.models.registry import create_model, list_models, register_model
from avssl.models.spec import SpecTower
from avssl.models.video import VideoTower
from avssl.models.wave import WaveTower

__all__ = [
    "AUDIO_VIEWS",
    "PRESETS",
    "VIEWS",
    "AVModel",
    "ProjectionHead",
    "SpecTower",
    "VideoTower",
    "WaveTower",
    "build_model",
    "create_model",
    "list_models",
    "register_model",
    "tower_name",
]
