"""The demo: a synthetic audio-visual world and ``avssl demo``, the method end to end on it.

``synthetic`` (the world: classes of clips with sound and frames, written as videos), ``synthetic_clip``/
``synthetic_audio``/``synthetic_video`` (one clip's parameters, sound and frames), ``run`` (``avssl demo``:
ingest, pretrain twice, probe, retrieval), ``report`` (the demo's tables and plots).
"""
