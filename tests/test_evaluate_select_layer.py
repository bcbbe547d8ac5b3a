"""Read-out selection: with ``blocks`` the probe also reads each block alone and tests the read-out with
the best validation score, never looking at test labels; without it nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avssl.config import Config
from avssl.embed.embedder import Embedder
from avssl.evaluate.run import ModelRef, probe_blocks
from avssl.models import build_model
from avssl.models.layers import layer_stats
from avssl.evaluate.probe import _best_readout, run_probes
from avssl.evaluate.tasks_base import Example, Fold, Task

CLASSES = ["a", "b", "c", "d"]


def _task(n_per_class: int = 30) -> Task:
    examples = [Example(Path(f"{c}{i}.wav"), (c,), "train" if i < 2 * n_per_class // 3 else "test")
                for c in CLASSES for i in range(n_per_class)]
    return Task("toy", examples, CLASSES, [Fold("f", ("train",), ("test",))], split_order=["train", "test"])


def _features(task: Task, seed: int = 0) -> np.ndarray:
    """Block 1: 400 dims of noise; block 2: 4 dims that hold the class (means 3 apart, unit noise)."""
    rng = np.random.default_rng(seed)
    y = task.targets()
    noise = rng.standard_normal((len(y), 400))
    signal = 3.0 * np.eye(4)[y] + rng.standard_normal((len(y), 4))
    return np.concatenate([noise, signal], axis=1).astype(np.float32)


def test_selection_finds_the_informative_block_and_beats_all_blocks():
    task = _task()
    x = _features(task)
    plain, _ = run_probes(task, x, seeds=2)
    chosen, _ = run_probes(task, x, seeds=2, blocks=[400, 4])
    assert "readouts" not in plain and all(r["readout"] == "all" for r in plain["runs"])
    assert chosen["readouts"] == {"block 2": 2}
    assert chosen["mean"] > plain["mean"] + 0.2  # 400 noise dims against 4 signal dims hurt the plain probe (0.41 vs 0.85)
    assert chosen["mean"] > 0.75  # chance 0.25


def test_selection_never_sees_test_labels():
    task = _task()
    x = _features(task)
    shuffled = Task(task.name, list(task.examples), task.classes, task.folds, split_order=task.split_order)
    test = [i for i, ex in enumerate(task.examples) if ex.split == "test"]
    perm = np.random.default_rng(1).permutation(test)
    shuffled.examples = [task.examples[perm[test.index(i)]] if i in test else ex
                         for i, ex in enumerate(task.examples)]  # test examples keep their place, labels move
    runs_a = run_probes(task, x, seeds=2, blocks=[200, 200, 4])[0]["runs"]
    runs_b = run_probes(shuffled, x, seeds=2, blocks=[200, 200, 4])[0]["runs"]
    assert [r["readout"] for r in runs_a] == [r["readout"] for r in runs_b]
    assert [r["valid_score"] for r in runs_a] == [r["valid_score"] for r in runs_b]
    assert [r["accuracy"] for r in runs_a] != [r["accuracy"] for r in runs_b]


def test_readout_order_and_ties():
    seen = []

    def fit(cols):
        seen.append((cols.start, cols.stop))
        return {"valid_score": {(None, None): 0.5, (0, 3): 0.7, (3, 5): 0.7, (5, 9): 0.6}[(cols.start, cols.stop)]}

    name, res = _best_readout([3, 2, 4], fit)
    assert seen == [(None, None), (5, 9), (3, 5), (0, 3)]  # all, then the last block first
    assert (name, res["valid_score"]) == ("block 2", 0.7)  # block 1 ties it but comes later
    assert _best_readout(None, fit)[0] == "all"


def test_embedder_layer_dims_cut_the_layers_vector_block_by_block():
    cfg = Config()
    cfg.model.preset, cfg.model.views = "tiny", ["spec"]
    torch.manual_seed(0)
    enc = Embedder.from_model(build_model(cfg), cfg, features="layers", window_seconds=1.0, overlap=0.0)
    audio = np.random.default_rng(0).standard_normal(enc.window).astype(np.float32)
    emb = enc.embed([audio], enc.sample_rate)[0]
    with torch.inference_mode():
        layers = enc.tower.forward_layers(torch.from_numpy(audio)[None])
    ends = np.cumsum(enc.layer_dims)
    assert ends[-1] == emb.shape[0] == enc.embedding_dim and len(enc.layer_dims) == len(layers)
    for i, block in enumerate(layers):
        part = emb[ends[i] - enc.layer_dims[i]:ends[i]]
        np.testing.assert_allclose(part, layer_stats([block])[0].numpy(), rtol=1e-5, atol=1e-6)
    ref = ModelRef("m", "m", enc)
    assert probe_blocks(ref, True) == enc.layer_dims and probe_blocks(ref, False) is None
    pooled = Embedder.from_model(build_model(cfg), cfg, window_seconds=1.0)
    assert pooled.layer_dims is None and probe_blocks(ModelRef("p", "p", pooled), True) is None
