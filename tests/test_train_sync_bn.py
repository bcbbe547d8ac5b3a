"""BatchNorm under several ranks: statistics of the global batch, never of one rank's share.

A positive pair always sits on one rank. With per-rank BatchNorm statistics its two embeddings
share a "same rank" signature (the rank's batch composition) that negatives from other ranks lack,
so the InfoNCE loss can fall below what the content allows. Two checks on gloo (CPU):

* the trainer's 2-rank forward and backward equal one process on the whole batch (embeddings,
  DDP-averaged gradients, running statistics);
* a planted toy whose only shared content is a class: no honest model can push the loss below
  ``E[log n_same]`` (``n_same``: clips of the anchor's class in the global batch); per-rank BN
  does, global BN does not.

Run as a script for the measured table in docs/training.md: ``python tests/test_train_sync_bn.py``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from avssl.train import distributed
from avssl.config import LossConfig, load_config
from avssl.train.losses import ContrastiveLoss
from avssl.train.pretrain import Trainer

log = logging.getLogger(__name__)
SR, FPS, SIZE = 16000, 8.0, 16
# every tower on one crop: the step below runs the model on the first crop only
CFG = [f"audio.sample_rate={SR}", f"video.fps={FPS}", f"video.size={SIZE}", "data.crop_seconds=0.5",
       "loss.learn_temperature=true", "loss.pairs=[spec-video,wave-video,spec-wave]"]
HALF = 3  # clips per rank


def _init(rank: int, world: int, init_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(n, SR // 2, generator=g) * torch.linspace(0.1, 1.0, n)[:, None]
    frames = torch.randint(0, 256, (n, 4, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return audio, frames


def _step(trainer: Trainer, audio: torch.Tensor, frames: torch.Tensor) -> dict:
    """One forward + backward (no optimizer step): embeddings, gradients, BatchNorm buffers."""
    emb = trainer.train_model(audio, frames)
    sum(trainer.loss_fn(emb).values()).backward()
    return {"emb": {k: v.detach() for k, v in emb.items()},
            "grad": {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None},
            "buffers": {k: b.clone() for k, b in trainer.model.named_buffers()}}


def _trainer_rank(rank: int, world: int, init_file: str, out: str) -> None:
    _init(rank, world, init_file)
    try:
        trainer = Trainer(load_config("tiny", CFG), torch.device("cpu"), rank=rank, world=world)
        audio, frames = _inputs(world * HALF)
        part = slice(rank * HALF, (rank + 1) * HALF)
        torch.save(_step(trainer, audio[part], frames[part]), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_trainer_equals_one_process_on_the_global_batch(tmp_path):
    import torch._dynamo  # noqa: F401  (DDP imports it; once here rather than in each forked rank)

    torch.multiprocessing.start_processes(_trainer_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                          start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    audio, frames = _inputs(2 * HALF)
    want = _step(Trainer(load_config("tiny", CFG), torch.device("cpu")), audio, frames)
    for view, e in want["emb"].items():  # the forward normalised with the statistics of all 6 clips
        torch.testing.assert_close(torch.cat([r["emb"][view] for r in ranks]), e, rtol=1e-4, atol=1e-5)
    assert want["grad"].keys() == ranks[0]["grad"].keys() and len(want["grad"]) > 10
    for r in ranks:
        for k, g in want["grad"].items():  # through the statistics too (DDP averages the ranks)
            torch.testing.assert_close(r["grad"][k], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()), msg=k)
        for k, b in want["buffers"].items():  # running statistics of the global batch, the same on both ranks
            torch.testing.assert_close(r["buffers"][k], b, rtol=1e-4, atol=1e-6, msg=k)


def test_sync_bn_false_is_refused_under_several_ranks(tmp_path):
    from avssl.config import ConfigError

    with pytest.raises(ConfigError, match="per-rank BatchNorm"):
        Trainer(load_config("tiny", CFG + ["train.sync_bn=false"]), torch.device("cpu"), world=2)


def _global_bn_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """GlobalBatchNorm on this rank's half of a fixed batch: outputs, input and weight gradients, buffers."""
    _init(rank, world, init_file)
    try:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(6, 3, 5, 2, generator=g) * 3 + 1, torch.randn(6, 3, 5, 2, generator=g)
        bn = distributed.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
        part = slice(3 * rank, 3 * rank + 3)
        xr = x[part].clone().requires_grad_()
        y = bn(xr)
        (y * w[part]).sum().backward()
        bias = distributed.all_reduce_mean(bn.bias.grad) * world  # the gradient of the summed objective
        torch.save({"y": y.detach(), "dx": xr.grad, "dbias": bias, "var": bn.running_var.clone()},
                   Path(out) / f"bn{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_global_batchnorm_equals_batchnorm_of_the_global_batch(tmp_path):
    torch.multiprocessing.start_processes(_global_bn_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                          start_method="fork")
    got = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 3, 5, 2, generator=g) * 3 + 1, torch.randn(6, 3, 5, 2, generator=g)
    x = x.double().requires_grad_()
    bn = nn.BatchNorm2d(3).double()
    y = bn(x)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in got]).double(), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["dx"] for r in got]).double(), x.grad, rtol=1e-4, atol=1e-5)
    for r in got:
        torch.testing.assert_close(r["dbias"].double(), bn.bias.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["var"].double(), bn.running_var, rtol=1e-5, atol=1e-6)


def test_global_batchnorm_is_plain_batchnorm_without_a_process_group():
    conv = distributed.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert isinstance(conv, distributed.GlobalBatchNorm)
    assert set(conv.state_dict()) == set(nn.BatchNorm2d(3).state_dict())
    x = torch.randn(4, 3, 5, 2)
    torch.testing.assert_close(conv(x), nn.BatchNorm2d(3)(x))
    conv.eval()
    torch.testing.assert_close(conv(x), (x - conv.running_mean.view(1, 3, 1, 1))
                               / torch.sqrt(conv.running_var.view(1, 3, 1, 1) + conv.eps))


# ------------------------------------------------------------------------------- the planted toy


def _toy_batch(step: int, n: int, classes: int) -> torch.Tensor:
    """The global batch's classes at ``step`` (the same on every rank)."""
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1000 + step))


def honest_floor(labels: torch.Tensor) -> float:
    """``mean_i log n_same(i)``: the InfoNCE loss of a model that knows each clip's class and nothing
    else (same-class candidates are indistinguishable). No honest model goes below it."""
    same = (labels[:, None] == labels[None, :]).sum(1).double()
    return float(same.log().mean())


def _tower(classes: int, global_bn: bool) -> nn.Module:
    net = nn.Sequential(nn.Linear(classes, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                        nn.ReLU(), nn.Linear(64, 32))
    return distributed.convert_sync_batchnorm(net) if global_bn else net


def _toy_rank(rank: int, world: int, init_file: str, out: str, per_rank: int, classes: int, steps: int,
              global_bn: bool) -> None:
    """Train audio/video towers that see only each clip's class (one-hot); report the late losses."""
    _init(rank, world, init_file)
    try:
        torch.manual_seed(0)
        towers = nn.ModuleDict({"spec": _tower(classes, global_bn), "video": _tower(classes, global_bn)})
        loss_fn = ContrastiveLoss(LossConfig(pairs=["spec-video"], temperature=0.1, learn_temperature=True))
        params = [*towers.parameters(), *loss_fn.parameters()]
        opt = torch.optim.Adam(params, lr=1e-2)
        losses, floors = [], []
        for step in range(steps):
            labels = _toy_batch(step, world * per_rank, classes)
            x = nn.functional.one_hot(labels[rank * per_rank : (rank + 1) * per_rank], classes).float()
            loss = loss_fn({v: t(x) for v, t in towers.items()})["nce/spec-video"]
            opt.zero_grad()
            loss.backward()
            for p in params:
                p.grad = distributed.all_reduce_mean(p.grad)
            opt.step()
            if step >= steps // 2:
                losses.append(loss.item())
                floors.append(honest_floor(labels))
        if rank == 0:
            torch.save({"loss": sum(losses) / len(losses), "floor": sum(floors) / len(floors)}, Path(out))
    finally:
        torch.distributed.destroy_process_group()


def toy_leak(world: int, per_rank: int, classes: int, steps: int, global_bn: bool) -> dict[str, float]:
    """Mean loss over the second half of ``steps`` and the honest floor of the same batches."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.start_processes(
            _toy_rank, args=(world, f"{tmp}/init", f"{tmp}/out.pt", per_rank, classes, steps, global_bn),
            nprocs=world, start_method="fork")
        return torch.load(f"{tmp}/out.pt")


def test_per_rank_batchnorm_beats_the_honest_floor_and_global_batchnorm_does_not():
    leak = toy_leak(2, 8, 4, 80, global_bn=False)
    fixed = toy_leak(2, 8, 4, 80, global_bn=True)
    assert leak["floor"] == pytest.approx(fixed["floor"])  # the same batches
    assert leak["loss"] < leak["floor"] - 0.1, leak  # the shortcut: below what the content allows
    assert fixed["loss"] > fixed["floor"] - 0.02, fixed


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    log.info("| ranks x clips | classes | honest floor | loss, per-rank BN | loss, global BN |")
    for world, per_rank, classes in ((2, 8, 4), (4, 8, 8), (4, 8, 4)):
        leak = toy_leak(world, per_rank, classes, steps, global_bn=False)
        fixed = toy_leak(world, per_rank, classes, steps, global_bn=True)
        log.info("| %d x %d | %d | %.3f | %.3f | %.3f |", world, per_rank, classes, leak["floor"], leak["loss"],
                 fixed["loss"])
