"""The pretraining loop end to end on tiny generated shards: outputs, exact resume, two ranks, errors, learning."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import socket
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from avssl.checkpoint import CheckpointError, load_checkpoint
from avssl.cli import main as cli_main
from avssl.config import Config, ConfigError, LossConfig, load_config
from avssl.data.stream import DataError
from avssl.models import build_model
from avssl.train.pretrain import embedding_metrics, pretrain
from conftest import sigkill_when
from test_data_stream import FPS, SIZE, SR, planted_clip, write_shards

BASE = [f"audio.sample_rate={SR}", f"video.fps={FPS}", f"video.size={SIZE}", "data.crop_seconds=0.5",
        "data.batch_size=4", "data.shuffle_buffer=8", "train.log_every=1"]
RUN = BASE + ["train.steps=6", "train.ckpt_every=3", "data.num_workers=2"]
LOSS_KEYS = ("loss", *(f"nce/{p}" for p in LossConfig().pairs))  # the default pairs


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add contention (the suite runs with -n 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("train-shards"), [planted_clip(i) for i in range(16)], per_shard=4)


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory) -> Path:
    """6 uninterrupted steps through the CLI (2 loader workers, checkpoints at 3 and 6)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "full"
    args = ["pretrain", "--config", "tiny", "--data", str(shards), "--out", str(out), "--no-progress"]
    assert cli_main(args + [a for kv in RUN for a in ("--set", kv)]) == 0
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_outputs(full_run):
    cfg = load_config("tiny", RUN)
    assert yaml.safe_load((full_run / "config.yaml").read_text()) == cfg.to_dict()
    metrics = rows(full_run)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]
    for r in metrics:
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS)
        assert math.isclose(r["loss"], sum(r[k] for k in LOSS_KEYS[1:]), rel_tol=1e-5)
        assert 4 * r["retrieval/a2v_top1"] in (0, 1, 2, 3, 4)  # a share of one batch of 4 clips
        assert 0 <= r["data_wait"] <= 1 and r["clips_per_s"] > 0  # timings: only their range is known
        assert {"align/spec-video", "uniform/spec", "uniform/video", "lr", "grad_norm", "epoch"} <= set(r)
    assert metrics[0]["lr"] < metrics[2]["lr"]  # warm-up (5 steps in the tiny preset)
    assert [r["epoch"] for r in metrics] == [0, 0, 0, 0, 1, 1]  # 16 clips / batch 4
    assert list((full_run / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(full_run / "checkpoint.pt")
    assert state["step"] == 6 and load_checkpoint(full_run / "checkpoint-prev.pt")["step"] == 3
    assert {"optimizer", "scheduler", "rng", "loss", "format_version"} <= set(state)
    model = build_model(Config.from_dict(state["config"]))  # self-describing: rebuilds with no other input
    model.load_state_dict(state["model"])
    emb = model(torch.randn(2, SR // 2), torch.rand(2, 4, 3, SIZE, SIZE))
    assert set(emb) == {"spec", "wave", "video"} and all(torch.isfinite(e).all() for e in emb.values())


class _SignalAtStep(logging.Handler):
    """Sends SIGTERM to this process when the trainer logs step ``step`` (a preemption)."""

    def __init__(self, step: int):
        super().__init__()
        self.prefix = f"step {step} "

    def emit(self, record):
        if record.getMessage().startswith(self.prefix):
            signal.raise_signal(signal.SIGTERM)


def test_interrupt_and_resume_equals_uninterrupted(full_run, shards, tmp_path):
    cfg = load_config("tiny", RUN)
    out = tmp_path / "resumed"
    pretrain(cfg, shards, out, progress=False, max_seconds=0)  # time limit: stops after step 1
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1
    logger = logging.getLogger("avssl.train.pretrain")
    handler, level = _SignalAtStep(4), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        pretrain(cfg, shards, out, resume=True, progress=False)  # SIGTERM at step 4: saves and returns
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    pretrain(cfg, shards, out, resume=True, progress=False)
    got, want = rows(out), rows(full_run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(got, want):
        for k in LOSS_KEYS + ("lr", "retrieval/a2v_top1"):
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["step"], k)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(full_run / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_sigkill_then_resume_equals_uninterrupted(full_run, shards, tmp_path):
    """``avssl pretrain`` in a subprocess, SIGKILLed (with its loader workers) at a seeded random step
    with a checkpoint every step (the kill may land inside a save), then ``--resume``."""
    out, kill_at = tmp_path / "killed", random.Random(0).randint(1, 3)  # >= 3 steps left: it cannot finish first
    sets = [a for kv in RUN + ["train.ckpt_every=1"] for a in ("--set", kv)]
    args = ["pretrain", "--config", "tiny", "--data", str(shards), "--out", str(out), "--no-progress", *sets]
    returncode = sigkill_when(args, tmp_path / "log.txt", lambda: (out / "checkpoint.pt").exists() and any(
        r.get("step", 0) >= kill_at for r in _rows_so_far(out)))
    assert returncode == -signal.SIGKILL
    finished = [p for p in out.iterdir() if p.suffix == ".pt"]
    assert out / "checkpoint.pt" in finished
    for p in finished:  # whatever looks finished is complete; a cut save is only ever a hidden .tmp
        assert 1 <= load_checkpoint(p)["step"] <= kill_at + 1, p
    assert all(p.suffix in (".pt", ".yaml", ".jsonl", ".txt") or p.name == "tb" or p.name.endswith(".tmp")
               for p in out.iterdir()), sorted(out.iterdir())
    args = ["pretrain", "--config", "tiny", "--data", str(shards), "--out", str(out), "--no-progress", "--resume"]
    assert cli_main(args + [a for kv in RUN for a in ("--set", kv)]) == 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    got, want = rows(out), rows(full_run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(got, want):
        for k in LOSS_KEYS + ("lr",):
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["step"], k)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(full_run / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _rows_so_far(out: Path) -> list[dict]:
    """The complete lines of a live run's metrics.jsonl."""
    path = out / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, shards: str, out: str) -> None:
    """One torchrun-like rank: env vars, then the library entry point; saves its own final weights."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import avssl.train.pretrain as train
    import avssl.train.trainer as trainer

    built, losses = [], []
    build, make_loss = trainer.build_model, trainer.ContrastiveLoss
    trainer.build_model = lambda cfg: built.append(build(cfg)) or built[-1]
    trainer.ContrastiveLoss = lambda cfg: losses.append(make_loss(cfg)) or losses[-1]
    cfg = load_config("tiny", BASE + ["train.steps=3", "train.ckpt_every=2", "data.num_workers=0",
                                      "loss.learn_temperature=true"])
    train.pretrain(cfg, shards, out, progress=False)
    torch.save(built[0].state_dict(), Path(out) / f"rank{rank}.pt")
    torch.save(losses[0].state_dict(), Path(out) / f"loss{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_identical_parameters(shards, tmp_path):
    out = tmp_path / "ddp"
    import torch._dynamo  # noqa: F401  (DDP imports it; once here rather than in each forked rank)

    # fork: the ranks inherit the imported modules (spawn would re-import torch in each, ~10 s on 2 cores)
    torch.multiprocessing.start_processes(_rank_main, args=(2, _free_port(), str(shards), str(out)), nprocs=2,
                                          start_method="fork")
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    state = load_checkpoint(out / "checkpoint.pt")
    init = build_model(Config.from_dict(state["config"])).state_dict()
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if r0[k].is_floating_point())  # it trained
    assert r0.keys() == state["model"].keys() == init.keys()  # GlobalBatchNorm keeps BatchNorm's state names
    for k in r0:  # parameters AND BatchNorm running statistics: those of the global batch, equal on both ranks
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], state["model"][k]), k
    t0, t1 = torch.load(out / "loss0.pt"), torch.load(out / "loss1.pt")  # the learnable temperature, outside DDP
    assert torch.equal(t0["log_scale"], t1["log_scale"])
    assert not torch.equal(t0["log_scale"], torch.tensor(math.log(10.0)))
    assert state["step"] == 3 and len(state["rng"]) == 2  # every rank's generator, for an exact resume
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


def test_bad_config_missing_data_and_mismatch_fail_clearly(shards, tmp_path):
    args = ["pretrain", "--config", "tiny", "--data", str(shards), "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        cli_main(args + ["--set", "train.stepz=3"])
    with pytest.raises(ConfigError, match="'spec-video' uses 'video', which is not in model.views"):
        pretrain(load_config("tiny", BASE + ["model.views=[spec, wave]"]), shards, tmp_path / "o")
    with pytest.raises(DataError, match="no such shard folder"):
        pretrain(load_config("tiny", BASE), tmp_path / "missing", tmp_path / "o")
    with pytest.raises(DataError, match="video.fps"):
        pretrain(load_config("tiny", BASE[:1] + BASE[2:] + ["video.fps=10"]), shards, tmp_path / "o")
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_corrupt_checkpoint_is_reported_and_previous_kept(full_run, shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    with pytest.raises(CheckpointError, match="already holds"):  # never overwrite a run by accident
        pretrain(load_config("tiny", RUN), shards, out, progress=False)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*checkpoint-prev.pt"):
        pretrain(load_config("tiny", RUN), shards, out, resume=True, progress=False)
    assert load_checkpoint(out / "checkpoint-prev.pt")["step"] == 3


def test_failed_save_keeps_the_previous_checkpoint(full_run, tmp_path, monkeypatch):
    from avssl.checkpoint import save_rotating as _save

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        _save(out, {"config": {}, "model": {}, "step": 7})
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert not list(out.glob("*.tmp"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretrain_on_cuda_bf16_channels_last(shards, tmp_path):
    """The bf16 CUDA run follows the fp32 CPU run of the same config, data and seed (bf16 rounding aside)."""
    cfg = load_config("tiny", BASE + ["train.steps=3", "data.num_workers=1", "train.channels_last=true"])
    path = pretrain(cfg, shards, tmp_path / "gpu", progress=False)  # precision auto: bf16 autocast on CUDA
    assert load_checkpoint(path)["step"] == 3
    cpu = load_config("tiny", BASE + ["train.steps=3", "data.num_workers=1", "train.precision=fp32"])
    with mock.patch("torch.cuda.is_available", lambda: False):  # the same code path, on the CPU
        pretrain(cpu, shards, tmp_path / "cpu", progress=False)
    gpu_rows, cpu_rows = rows(tmp_path / "gpu"), rows(tmp_path / "cpu")
    assert [r["step"] for r in gpu_rows] == [r["step"] for r in cpu_rows] == [1, 2, 3]
    for g, c in zip(gpu_rows, cpu_rows):  # same batches and initial weights: only the arithmetic differs
        for k in LOSS_KEYS:
            assert g[k] == pytest.approx(c[k], rel=0.05), (k, g, c)


def test_ablations_audio_only_two_crop_mixing_lars(shards, tmp_path):
    """Audio-only multi-format (spec-wave) plus two-crop (spec-spec), with mixup, under LARS."""
    cfg = load_config("tiny", BASE + ["train.steps=2", "model.views=[spec, wave]", "loss.pairs=[spec-wave, spec-spec]",
                                      "augment.mix=mixup", "optim.name=lars", "optim.lr=0.1", "data.num_workers=0"])
    path = pretrain(cfg, shards, tmp_path / "cola", progress=False)
    metrics = rows(tmp_path / "cola")
    assert {"nce/spec-wave", "nce/spec-spec", "align/spec-spec2", "uniform/wave"} <= set(metrics[-1])
    assert "retrieval/a2v_top1" not in metrics[-1]
    assert all(math.isclose(r["loss"], r["nce/spec-wave"] + r["nce/spec-spec"], rel_tol=1e-5) for r in metrics)
    assert load_checkpoint(path)["step"] == 2


def test_loss_decreases_on_planted_data(tmp_path):
    """Four classes with a class tone and a class colour: audio and video agree, the loss must drop."""
    clips = [planted_clip(i, num_classes=4) for i in range(32)]
    folder = write_shards(tmp_path / "planted", clips, per_shard=8)
    cfg = load_config("tiny", BASE + ["train.steps=16", "model.views=[spec, video]", "loss.pairs=[spec-video]",
                                      "augment.mix=none", "data.batch_size=8", "data.num_workers=0",
                                      "optim.lr=0.003", "optim.warmup_steps=3"])
    pretrain(cfg, folder, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in rows(tmp_path / "run")]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, losses


def test_pretrain_on_ingested_videos(tmp_path):
    """The real seam: generated videos -> ``avssl.ingest.run`` -> shards -> two training steps."""
    import numpy as np

    from avssl.ingest.run import ingest
    from avssl.media.video import encode_video

    rng = np.random.default_rng(0)
    for i in range(3):
        t = np.arange(2 * SR) / SR
        audio = 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t).astype(np.float32)
        frames = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
        encode_video(tmp_path / f"v{i}.mp4", frames, FPS, audio=audio, sample_rate=SR)
    cfg = load_config("tiny", BASE + ["train.steps=2", "data.num_workers=0", "data.batch_size=3"])
    manifest = ingest([tmp_path], tmp_path / "shards", cfg, workers=1, progress=False)
    assert manifest["total_samples"] == 3
    pretrain(cfg, tmp_path / "shards", tmp_path / "run", progress=False)
    assert [r["step"] for r in rows(tmp_path / "run")] == [1, 2]


def test_embedding_metrics():  # the schedule: tests/test_train_optim.py
    z = torch.nn.functional.one_hot(torch.arange(4), 8).float()
    m = embedding_metrics({"spec": z, "video": 3 * z})  # same directions: perfect retrieval, zero distance
    assert m["retrieval/a2v_top1"] == 1 and m["align/spec-video"] == pytest.approx(0)
    assert m["uniform/spec"] == pytest.approx(-4.0)  # orthonormal: every squared distance is 2
    m = embedding_metrics({"spec": z, "video": z.roll(1, dims=0)})
    assert m["retrieval/a2v_top1"] == 0


def test_resume_with_spec_masks_equals_uninterrupted(shards, tmp_path):
    """Spec masks draw from the trainer's per-rank generator, whose state the checkpoint holds."""
    cfg = load_config("tiny", BASE + ["train.steps=3", "train.ckpt_every=3", "data.num_workers=0",
                                      "augment.spec_mask=true", "model.views=[spec, wave]", "loss.pairs=[spec-wave]"])
    pretrain(cfg, shards, tmp_path / "full", progress=False)
    pretrain(cfg, shards, tmp_path / "resumed", progress=False, max_seconds=0)  # stops after step 1
    pretrain(cfg, shards, tmp_path / "resumed", resume=True, progress=False)
    got, want = rows(tmp_path / "resumed"), rows(tmp_path / "full")
    assert [r["step"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-6), g["step"]


def test_spec_masks_differ_per_rank():
    from avssl.train.pretrain import Trainer

    cfg = load_config("tiny", BASE + ["augment.spec_mask=true"])
    x = torch.ones(2, 1, 50, 16)

    def masks(rank: int) -> torch.Tensor:
        mask = Trainer(cfg, torch.device("cpu"), rank=rank).model.towers["spec"].mask
        return torch.stack([mask(x) for _ in range(3)])

    assert torch.equal(masks(0), masks(0)) and not torch.equal(masks(0), masks(1))


def test_trainer_checks_a_config_built_in_code():
    from dataclasses import replace

    from avssl.train.trainer import Trainer

    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match=r"train\.precision='fp16'; use one of auto, bf16, fp32"):
        Trainer(replace(cfg, train=replace(cfg.train, precision="fp16")), torch.device("cpu"))


def test_keep_every_keeps_each_steps_weights_and_leaves_training_and_sweep_keys_alone(full_run, shards, tmp_path):
    from avssl.sweep.plan import Cell

    out = tmp_path / "kept"
    pretrain(load_config("tiny", RUN + ["train.keep_every=2"]), shards, out, progress=False)
    snaps = sorted(p.name for p in out.glob("checkpoint-step*.pt"))
    assert snaps == ["checkpoint-step0000002.pt", "checkpoint-step0000004.pt", "checkpoint-step0000006.pt"]
    states = {s: load_checkpoint(out / f"checkpoint-step{s:07d}.pt") for s in (2, 4, 6)}
    assert [states[s]["step"] for s in (2, 4, 6)] == [2, 4, 6]  # later saves did not overwrite a kept step
    w2, w4 = states[2]["model"], states[4]["model"]
    assert any(not torch.equal(w2[k], w4[k]) for k in w2)
    final = load_checkpoint(full_run / "checkpoint.pt")["model"]  # the same run without snapshots
    for k in final:
        assert torch.equal(states[6]["model"][k], final[k]), k
    assert [r["loss"] for r in rows(out)] == [r["loss"] for r in rows(full_run)]
    keys = {Cell("c", "train", 0, load_config("tiny", RUN + [f"train.keep_every={n}"]), data="d").key for n in (0, 2)}
    assert len(keys) == 1  # what is kept is not what is trained: a sweep reuses the cell
    with pytest.raises(ConfigError, match="train.keep_every"):
        load_config("tiny", ["train.keep_every=-1"])
