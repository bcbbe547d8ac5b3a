"""``avssl finetune``'s recipe on the edges: BatchNorm statistics over any number of clips, few-label carving on
grouped tasks, validation without a scorable class, and a budget that lets a climbing run go on (issue 26)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.checkpoint import architecture_config, random_model
from avssl.config import apply_overrides
from avssl.finetune.finetuner import Finetuner


def _finetuner(batch_size: int, bn_stats: str = "checkpoint", **finetune) -> Finetuner:
    cfg = apply_overrides(architecture_config("tiny"), {"finetune": {"batch_size": batch_size, "bn_stats": bn_stats,
                                                                     **finetune}})
    tower = random_model(cfg, 0, views=["spec"]).towers["spec"]
    return Finetuner(cfg, tower, ["a", "b"], False, 1)


@pytest.mark.parametrize("n", [9, 10, 17])  # a last batch of 1, of 2 (of 8) and of 1 after two full batches
def test_head_statistics_are_those_of_every_training_clip(n):
    run = _finetuner(8)
    window = run.embedder.window
    rng = np.random.default_rng(n)
    clips = [rng.standard_normal(window).astype(np.float32) * (1 + i % 3) for i in range(n)]  # one window each
    run.estimate_bn_stats(clips, window)
    run.tower.eval()
    with torch.no_grad():
        feats = run.embedder.forward_windows(torch.from_numpy(np.stack(clips)))[0].double()
    bn = run.head[0]
    torch.testing.assert_close(bn.running_mean.double(), feats.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), feats.var(0), rtol=1e-5, atol=1e-6)  # unbiased, as BN's


def test_tower_statistics_with_a_last_batch_of_one_clip():
    run = _finetuner(4, bn_stats="task")
    window = run.embedder.window
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(window + 800 * i).astype(np.float32) for i in range(5)]  # batches of 4 and 1
    run.estimate_bn_stats(clips, window)
    bns = [m for m in run.tower.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(torch.isfinite(m.running_var).all() and (m.running_var > 0).all() for m in bns)
    assert not any(m.training for m in bns)  # fixed from then on (bn_stats=task)
    assert not torch.allclose(bns[0].running_mean, torch.zeros_like(bns[0].running_mean))  # estimated, not reset


def _grouped_task(lone: int = 1, classes: int = 5, per_group: int = 2):
    """ESC-50's shape in miniature: ``classes`` classes x 8 training clips from source recordings of ``per_group``
    clips each (a group), except ``lone`` classes whose 8 clips are all cut from one recording; 2 test clips each."""
    from pathlib import Path

    from avssl.evaluate.tasks_base import Example, Fold, Task

    classes = [f"c{k}" for k in range(classes)]
    examples = [Example(Path(f"{c}-{i}.wav"), (c,), "train",
                        group=f"{c}-all" if k < lone else f"{c}-{i // per_group}")
                for k, c in enumerate(classes) for i in range(8)]
    examples += [Example(Path(f"{c}-test{i}.wav"), (c,), "test", group=f"{c}-t") for c in classes for i in range(2)]
    return Task("grouped", examples, classes, [Fold("only", ("train",), ("test",))])


@pytest.mark.parametrize("labels_per_class", [0, 2, 3, 4, 6])
@pytest.mark.parametrize("seed", range(4))
def test_grouped_carve_keeps_every_class_in_training(labels_per_class, seed):
    from avssl.config import FinetuneConfig
    from avssl.finetune.data import split_task

    task = _grouped_task()
    fc = FinetuneConfig(labels_per_class=labels_per_class, seed=seed)
    split = split_task(task, None, fc)
    assert split_task(task, None, fc).valid.tolist() == split.valid.tolist()  # seeded
    y_train, y_valid = task.targets(split.train), task.targets(split.valid)
    per_class = labels_per_class or 8
    assert np.bincount(y_train, minlength=5).min() >= 1  # no class lost to validation
    assert len(split.train) + len(split.valid) == 5 * per_class
    groups = lambda idx: {task.examples[i].group for i in idx}  # noqa: E731
    assert not groups(split.train) & groups(split.valid)  # no recording on both sides
    assert 0 not in y_valid  # the one-recording class cannot validate without losing all its training clips
    if labels_per_class in (0, 6):
        assert np.bincount(y_valid, minlength=5)[1:].min() >= 1  # the others give their share (1.2-1.6 of 6-8)


def test_grouped_carve_without_any_splittable_class_trains_without_validation(caplog):
    import logging

    from avssl.config import FinetuneConfig
    from avssl.finetune.data import split_task

    with caplog.at_level(logging.WARNING):
        split = split_task(_grouped_task(lone=5), None, FinetuneConfig())
    assert len(split.valid) == 0 and len(split.train) == 40
    assert "no group of training clips can validate" in caplog.text and "c4 (8 clips, 1 group)" in caplog.text


@pytest.mark.parametrize("seed", range(6))
def test_grouped_carve_with_few_groups_keeps_every_class_in_training(seed):
    """Fewer groups than validation folds (here 4): a whole one-recording class could go to validation, and the run
    then failed with "no readable training clip"."""
    from avssl.config import FinetuneConfig
    from avssl.finetune.data import split_task

    task = _grouped_task(lone=2, classes=3, per_group=4)
    split = split_task(task, None, FinetuneConfig(seed=seed))
    assert np.bincount(task.targets(split.train), minlength=3).tolist() == [8, 8, 4]  # c2 gives one recording
    assert task.targets(split.valid).tolist() == [2] * 4
