"""Validation during pretraining (``data.val`` / ``--val-data``): rows at the right steps, numbers that are
deterministic and equal an independent computation from the checkpoint, training left bit-identical."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.checkpoint import load_checkpoint, model_from_checkpoint
from avssl.cli import main as cli_main
from avssl.config import Config, LossConfig, load_config
from avssl.data.stream import Batch, DataError
from avssl.train.losses import ContrastiveLoss
from avssl.train.retrieval import AVClip, retrieval
from avssl.data.shards import read_clips
from avssl.data.shardset import resolve_shards
from avssl.train.pretrain import pretrain, read_metrics
from avssl.train.validation import load_validation, validate
from test_data_stream import FPS, SIZE, SR, planted_clip, write_shards

BASE = [f"audio.sample_rate={SR}", f"video.fps={FPS}", f"video.size={SIZE}", "data.crop_seconds=0.5",
        "data.batch_size=4", "data.shuffle_buffer=8", "train.log_every=1", "data.num_workers=0", "train.steps=5"]
VAL_KEYS = {*(f"val/nce/{p}" for p in LossConfig().pairs), "val/loss", "val/a2v_top1",  # the default pairs
            "val/a2v_top5", "val/chance_top5", "val/seconds"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """Training shards (videos 0-15) and validation shards (videos 100-107: other sources, other noise)."""
    root = tmp_path_factory.mktemp("val-data")
    train = write_shards(root / "train", [planted_clip(i) for i in range(16)], per_shard=4)
    val = write_shards(root / "val", [planted_clip(i, seed=1) for i in range(100, 108)], per_shard=4)
    return train, val


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> tuple[Path, Path]:
    """The same 5 steps without and with validation (every 2 steps, through the CLI)."""
    torch.set_num_threads(1)
    train, val = data
    root = tmp_path_factory.mktemp("val-runs")
    pretrain(load_config("tiny", BASE), train, root / "plain", progress=False)
    args = ["pretrain", "--config", "tiny", "--data", str(train), "--out", str(root / "val"), "--val-data", str(val)]
    assert cli_main(args + [a for kv in BASE + ["train.val_every=2"] for a in ("--set", kv)]) == 0
    return root / "plain", root / "val"


def test_val_rows_at_the_right_steps_with_the_right_keys(runs):
    _, out = runs
    val = read_metrics(out, split="val")
    assert [r["step"] for r in val] == [2, 4, 5]  # every val_every steps and at the end
    for r in val:
        assert set(r) == {"step"} | VAL_KEYS
        assert 4 * r["val/a2v_top1"] in range(9) and r["val/chance_top5"] == 5 / 8  # shares of 8 videos
        assert r["val/loss"] == pytest.approx(sum(r[k] for k in VAL_KEYS if k.startswith("val/nce/")))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]  # training rows: as before
    assert (out / "curves.png").is_file() and list((out / "tb").glob("events.out.tfevents.*"))


def test_validation_does_not_change_training(runs):
    """Same seed with and without validation: every training number and the final state are bit-identical."""
    plain, val = runs
    for a, b in zip(read_metrics(plain), read_metrics(val), strict=True):
        assert {k: v for k, v in a.items() if k not in ("clips_per_s", "data_wait")} == {
            k: v for k, v in b.items() if k not in ("clips_per_s", "data_wait")}
    a, b = load_checkpoint(plain / "checkpoint.pt"), load_checkpoint(val / "checkpoint.pt")
    for k in a["model"]:  # BatchNorm running statistics included: validation never updates them
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["rng"][0]["augment"], b["rng"][0]["augment"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def _clip_crops(clips: list, n: int, t: int) -> Batch:
    """Crop 1 of each clip, cut by hand: its first ``n`` samples and first ``t`` frames."""
    audio = torch.from_numpy(np.stack([c.audio[:n] for c in clips]))
    frames = torch.from_numpy(np.stack([c.frames[:t] for c in clips])).permute(0, 1, 4, 2, 3)
    return Batch(audio, frames, [c.key for c in clips])


def test_val_numbers_are_deterministic_and_equal_an_independent_computation(runs, data):
    _, out = runs
    model, cfg = model_from_checkpoint(out / "checkpoint.pt")
    clips = read_clips(data[1])
    want = retrieval(model, cfg, [AVClip(c.audio, c.frames, c.key) for c in clips])  # one clip per source video
    loss = ContrastiveLoss(cfg.loss)
    loss.load_state_dict(load_checkpoint(out / "checkpoint.pt")["loss"])
    nce = []
    with torch.no_grad():
        for part in (clips[:4], clips[4:]):  # batches of data.batch_size in the shards' order
            b = _clip_crops(part, int(0.5 * SR), int(0.5 * FPS))
            nce.append(loss(model(b.audio, b.frames), None, b.source_ids())["nce/spec-video"].item())
    row = read_metrics(out, split="val")[-1]
    assert row["val/a2v_top1"] == want["a2v_top1"] and row["val/a2v_top5"] == want["a2v_top5"]
    assert row["val/nce/spec-video"] == pytest.approx(np.mean(nce), rel=1e-5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vset = load_validation(data[1], cfg)
    first, second = (validate(model, loss, vset, cfg, torch.device("cpu")) for _ in range(2))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    first.pop("val/seconds"), second.pop("val/seconds")
    assert first == second
    assert first == pytest.approx({k: v for k, v in row.items() if k in first}, rel=1e-6)


def test_val_every_zero_validates_once_at_the_end_and_audio_only_cross_crop_pairs(data, tmp_path):
    train, val = data
    cfg = load_config("tiny", BASE + ["train.steps=3", "train.val_every=0", f"data.val={val}",
                                      "model.views=[spec, wave]", "loss.pairs=[spec-wave2, spec-spec]"])
    pretrain(cfg, train, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run", split="val")
    assert [r["step"] for r in rows] == [3]
    assert set(rows[0]) == {"step", "val/nce/spec-wave2", "val/nce/spec-spec", "val/loss", "val/seconds"}


def test_mismatched_or_overlapping_validation_sets_are_named(data, tmp_path, caplog):
    train, _ = data
    other_fps = write_shards(tmp_path / "fps4", [planted_clip(i, fps=4.0) for i in range(100, 104)], per_shard=4,
                             fps=4.0)
    cfg = load_config("tiny", BASE + [f"data.val={other_fps}"])
    with pytest.raises(DataError, match=rf"{other_fps} \(data.val\): shards were ingested with fps=4.0 but the "
                                        r"config has video.fps=8.0"):
        pretrain(cfg, train, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # failed before any training
    shared = write_shards(tmp_path / "shared", [planted_clip(i) for i in (3, 14, 100)], per_shard=3)
    with caplog.at_level(logging.WARNING, logger="avssl.train.validation"):
        load_validation(shared, load_config("tiny", BASE), resolve_shards(train))
    assert "shares 2 of its 3 source videos with the training shards (e.g. vid0003, vid0014)" in caplog.text


def test_sweep_keys_ignore_validation_and_sweep_takes_val_data():
    import argparse

    from avssl.sweep.run import add_sweep_arguments
    from avssl.sweep.plan import Cell, train_key

    cfg = load_config("tiny")
    with_val = load_config("tiny", ["data.val=/somewhere", "train.val_every=7"])
    assert train_key(cfg, "d") == train_key(with_val, "d")
    assert Cell("a", "train", 0, cfg).key == Cell("a", "train", 0, with_val).key
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args = parser.parse_args(["--data", "d", "--tasks", "t", "--out", "o", "--val-data", "v"])
    assert args.val_data == "v"


def _rank_main(rank: int, world: int, port: int, train: str, val: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    pretrain(load_config("tiny", BASE + ["train.steps=2", "train.val_every=1", "data.batch_size=2",
                                         f"data.val={val}"]), train, out, progress=False)
    torch.distributed.destroy_process_group()


def test_two_ranks_validate_on_rank_zero(data, tmp_path):
    """Rank 0 scores the whole set alone (no collective inside), the other rank waits; the numbers are those of one
    process on the final checkpoint."""
    from test_train import _free_port

    import torch._dynamo  # noqa: F401  (DDP imports it; once here rather than in each forked rank)

    out = tmp_path / "ddp"
    torch.multiprocessing.start_processes(_rank_main, args=(2, _free_port(), str(data[0]), str(data[1]), str(out)),
                                          nprocs=2, start_method="fork")
    rows = read_metrics(out, split="val")
    assert [r["step"] for r in rows] == [1, 2]
    model, cfg = model_from_checkpoint(out / "checkpoint.pt")
    loss = ContrastiveLoss(cfg.loss)
    got = validate(model, loss, load_validation(data[1], cfg), cfg, torch.device("cpu"))
    assert got["val/a2v_top5"] == rows[-1]["val/a2v_top5"]
    assert got["val/loss"] == pytest.approx(rows[-1]["val/loss"], rel=1e-5)
    assert isinstance(Config.from_dict(load_checkpoint(out / "checkpoint.pt")["config"]).data.val, str)
