"""Evaluation: tasks, linear probes, baselines and audio-video retrieval, with baselines beside every model.

``tasks_base``/``tasks``/``tasks_published`` (the task registry, published layouts, ``folder:`` and ``csv:``),
``probe`` (linear probes and the validation carve), ``run`` (``avssl eval``: embedding cache, then probes),
``baselines`` (logmel-stats, mfcc-stats), ``retrieval`` (audio <-> video retrieval), ``reports`` (tables, plots).
"""
