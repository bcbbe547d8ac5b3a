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
    return Finetuner(cfg, tower, ["a", "b"], False, 1, 1)


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


def _strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity (not JSON; other readers fail on them)."""
    import json

    def refuse(name: str):
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_validation_without_positives_selects_on_loss_and_writes_valid_json(tmp_path, monkeypatch):
    """A multi-label task whose validation clips hold no label: mAP is undefined (NaN) on every epoch."""
    import avssl.finetune.run as ft_run
    from avssl.evaluate.tasks_base import Example, Fold, Task
    from avssl.media.video import encode_audio
    from test_finetune import FAST, SR, tone

    examples = []
    for split, n in (("train", 5), ("valid", 3), ("test", 2)):
        for i in range(n):
            for labels, freq in ((("low",), 220.0), (("high",), 3520.0), (("low", "high"), 0.0)):
                path = tmp_path / "clips" / f"{split}-{freq}-{i}.wav"
                path.parent.mkdir(exist_ok=True)
                audio = tone(freq or 880.0, 0.8, i) if split != "valid" else 0.01 * tone(50.0, 0.8, i)
                encode_audio(path, audio, SR)
                examples.append(Example(path, () if split == "valid" else labels, split))
    task = Task("multi", examples, ["high", "low"], [Fold("official", ("train",), ("test",), ("valid",))],
                multilabel=True)
    monkeypatch.setattr(ft_run, "load_task", lambda name, root: task)
    out = tmp_path / "run"
    res = ft_run.finetune("random-init:tiny", "multi", out, sets=FAST, progress=False)
    rows = [_strict_json(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    saved = _strict_json((out / "results.json").read_text())
    assert saved["valid"] is None and saved["selection"] == "valid_loss" and res["selection"] == "valid_loss"
    losses = [r["valid_loss"] for r in rows]
    assert all(np.isfinite(losses)) and "valid_mAP" not in rows[0]
    assert saved["best_epoch"] == 1 + int(np.argmin(losses)) and saved["valid_loss"] == min(losses)


def test_budget_epochs_and_its_validation():
    from avssl.config import ConfigError, FinetuneConfig
    from avssl.finetune.run import budget_epochs

    fc = FinetuneConfig()
    assert fc.max_steps > 0  # by default a run goes on while validation improves
    assert budget_epochs(fc, 40, True) == 75  # 3000 steps of 40: 1,257 training clips in batches of 32
    assert budget_epochs(fc, 200, True) == 30  # never fewer than finetune.epochs
    assert budget_epochs(FinetuneConfig(max_steps=50), 20, True) == 30 and budget_epochs(fc, 40, False) == 30
    assert budget_epochs(FinetuneConfig(epochs=2, max_steps=50), 20, True) == 3  # rounded up to a whole epoch
    assert budget_epochs(FinetuneConfig(max_steps=0), 40, True) == 30  # the fixed budget
    with pytest.raises(ConfigError, match="finetune.max_steps"):
        FinetuneConfig(max_steps=-1)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    from test_finetune import write_tone_task

    return write_tone_task(tmp_path_factory.mktemp("tones"), 8, 0.6, 0.25)


@pytest.mark.parametrize("scripted, stop, best", [
    ([0.3, 0.5, 0.6, 0.7, 0.7, 0.9], 5, 4),  # climbs past the 2 minimum epochs, then one epoch without a gain
    ([0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 6, 6),  # climbs to the cap
    ([0.9, 0.5, 0.6, 0.9, 1.0, 1.0], 2, 1),  # no gain by the minimum: stops there
])
def test_a_run_goes_on_while_validation_improves(tones, tmp_path, monkeypatch, scripted, stop, best):
    """At least ``epochs`` epochs, then ``patience`` decides, up to ``max_steps``; the schedule spans the cap and the
    results report the budget used. Validation accuracies are scripted (the rule is under test, not the tones)."""
    import math

    from avssl.finetune.run import finetune
    from avssl.finetune.validation import Validation
    from test_finetune import FAST

    measure, epochs = Validation.measure, iter(scripted)
    monkeypatch.setattr(Validation, "measure", lambda self, scores: {**measure(self, scores),
                                                                     "valid_accuracy": next(epochs)})
    sets = FAST + ["finetune.epochs=2", "finetune.max_steps=12", "finetune.patience=1", "finetune.min_epoch_steps=2",
                   "finetune.warmup_epochs=1"]  # epochs of 2 steps (15 clips, batches of 8)
    res = finetune("random-init:tiny", f"folder:{tones}", tmp_path / "run", sets=sets, progress=False)
    rows = [_strict_json(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, stop + 1)) and res["epochs"] == stop
    assert res["best_epoch"] == best and res["valid"] == scripted[best - 1]
    assert res["steps"] == 2 * stop and res["stopped_early"] == (stop < 6)
    assert res["budget"] == {"min_epochs": 2, "max_epochs": 6, "steps_per_epoch": 2, "max_steps": 12}
    warmup = 2  # one epoch; then cosine decay to 0 at step 12, not at the end of the 2 minimum epochs
    assert rows[1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (3 - warmup) / (12 - warmup))))
