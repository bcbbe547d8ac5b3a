"""``avssl finetune --resume`` continues the run it finds or refuses: every setting that defines the run (seed, task,
fold, labels per class, start checkpoint, recipe) is stored in its checkpoints, and a differing one is named."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

from avssl.checkpoint import CheckpointError, architecture_config, load_checkpoint, random_model, save_checkpoint
from avssl.config import ConfigError
from avssl.finetune.run import finetune
from test_finetune import FAST, write_tone_task


def _start(path: Path, seed: int) -> str:
    """A pretraining-style checkpoint of the tiny architecture, initialised with ``seed``."""
    cfg = architecture_config("tiny")
    save_checkpoint({"config": cfg.to_dict(), "model": random_model(cfg, seed, views=["spec"]).state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> dict:
    """A run from a checkpoint, seed 0, stopped by SIGTERM during step 11 (epochs are 8 steps, 4 in all)."""
    from avssl.finetune.finetuner import Finetuner

    root = tmp_path_factory.mktemp("resume")
    (root / "task").mkdir()
    task = write_tone_task(root / "task", 8, 0.6, 0.25)
    start, out = _start(root / "start.pt", 0), root / "run"
    step = Finetuner.step

    def step_then_signal(self, i, x, y):
        if i == 10:
            signal.raise_signal(signal.SIGTERM)
        return step(self, i, x, y)

    torch.set_num_threads(1)
    Finetuner.step = step_then_signal
    try:
        res = finetune(start, f"folder:{task}", out, sets=FAST, seed=0, progress=False)
    finally:
        Finetuner.step = step
    assert res == {"stopped": "SIGTERM", "step": 11}
    return {"root": root, "task": task, "start": start, "out": out}


def _resume(run: dict, out: Path | None = None, *, start: str | None = None, task: str | None = None,
            sets: tuple[str, ...] = (), seed: int = 0, fold: str | None = None) -> dict:
    return finetune(start or run["start"], task or f"folder:{run['task']}", out or run["out"], sets=FAST + list(sets),
                    seed=seed, fold=fold, progress=False, resume=True)


def test_a_different_seed_is_refused_and_the_run_is_untouched(stopped):
    before = (stopped["out"] / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"finetune\.seed \(--seed\): stored 0, given 1") as e:
        _resume(stopped, seed=1)
    assert "another --out" in str(e.value) and "--task" not in str(e.value)
    assert (stopped["out"] / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("change, named", [
    ({"sets": ("finetune.labels_per_class=4",)}, "finetune.labels_per_class: stored 0, given 4"),
    ({"fold": "fold2"}, "--fold: stored 'fold1', given 'fold2'"),
    ({"sets": ("finetune.lr=0.003", "embed.window_seconds=0.5")},
     "embed.window_seconds: stored 0.0, given 0.5; finetune.lr: stored 0.001, given 0.003"),
])
def test_each_differing_setting_is_named(stopped, change, named):
    with pytest.raises(ConfigError) as e:
        _resume(stopped, **change)
    assert named in str(e.value)


def test_another_start_checkpoint_or_task_is_refused(stopped, tmp_path):
    other = _start(tmp_path / "other.pt", 1)
    with pytest.raises(ConfigError, match=r"start checkpoint: stored '.*start\.pt' \(sha1 \w{12}\), given "
                                          r"'.*other\.pt' \(sha1 \w{12}\)"):
        _resume(stopped, start=other)
    with pytest.raises(ConfigError, match="random-init:tiny"):
        _resume(stopped, start="random-init:tiny")
    grown = tmp_path / "grown"
    shutil.copytree(stopped["task"], grown)
    with pytest.raises(ConfigError, match=r"--task: stored 'folder:.*task', given 'folder:.*grown'"):
        _resume(stopped, task=f"folder:{grown}")


def test_same_settings_resume_from_a_moved_start_checkpoint(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped["out"], out)
    moved = tmp_path / "moved.pt"
    shutil.copy(stopped["start"], moved)  # same bytes, another path: the same start
    res = _resume(stopped, out, start=str(moved))
    assert res["steps"] == 32 and (out / "model.pt").exists()
    assert _resume(stopped, out) == res  # finished: its results
    with pytest.raises(ConfigError, match=r"finetune\.seed \(--seed\): stored 0, given 1"):
        _resume(stopped, out, seed=1)  # not another run's results under this one's name


def test_changed_clips_are_refused(stopped, tmp_path):
    """Same settings and task name, but a clip added to the folder: the split differs."""
    out = tmp_path / "run"
    shutil.copytree(stopped["out"], out)
    extra = stopped["task"] / "mid tone" / "clip extra.wav"
    shutil.copy(stopped["task"] / "mid tone" / "clip 0.wav", extra)
    try:
        with pytest.raises(ConfigError, match="the task's clips: stored a split of"):
            _resume(stopped, out)
    finally:
        extra.unlink()


def test_a_checkpoint_without_stored_identity_is_refused(stopped, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(stopped["out"], out)
    state = load_checkpoint(out / "checkpoint.pt")
    state.pop("identity")
    save_checkpoint(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="older avssl.*another --out"):
        _resume(stopped, out)
