"""Experiment grids: pretrain at fixed steps and evaluate, one folder per cell, never redoing a finished cell.

``plan`` (recipes and grids -> cells keyed by their resolved config), ``run`` (``avssl sweep``: run cells,
paired seeds, retrieval), ``report`` (``results.jsonl`` and the tables rebuilt from the cells).
"""
