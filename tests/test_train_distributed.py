"""Two gloo processes on CPU: the gathered loss and its gradients equal one process on the whole batch."""

import itertools
import os

import pytest
import torch
import torch.multiprocessing as mp

from avssl.train import distributed
from avssl.config import LossConfig
from avssl.train.losses import ContrastiveLoss

WORLD, LOCAL_BATCH, IN_DIM, DIM = 2, 4, 6, 5
SOURCES = torch.tensor([7, 1, 2, 7, 3, 1, 4, 7])  # source video ids of the global batch: shared within and across ranks
PAIRS = ["spec-video", "wave-video", "spec-wave"]


def _data():
    """Inputs for the whole (global) batch, a shared tiny model per view, and per-rank mix matrices."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_BATCH
    inputs = {v: torch.randn(n, IN_DIM, generator=g) for v in ("spec", "wave", "video")}
    weights = {v: torch.randn(IN_DIM, DIM, generator=g) for v in inputs}
    mixes = []
    for _ in range(WORLD):
        lam = 0.5 + 0.5 * torch.rand(LOCAL_BATCH, generator=g)
        m = torch.diag(lam)
        m[torch.arange(LOCAL_BATCH), torch.randperm(LOCAL_BATCH, generator=g)] += 1 - lam
        mixes.append(m)
    return inputs, weights, mixes


def _run(inputs, weights, mix, local_loss, learn_temperature=True, sources=None):
    """Loss terms and gradients (model weights + temperature) for one process's share of the batch."""
    params = {v: w.clone().requires_grad_(True) for v, w in weights.items()}
    loss_fn = ContrastiveLoss(
        LossConfig(pairs=PAIRS, temperature=0.2, local_loss=local_loss, learn_temperature=learn_temperature)
    )
    emb = {v: x @ params[v] for v, x in inputs.items()}
    terms = loss_fn(emb, mix, sources)
    sum(terms.values()).backward()
    grads = {v: p.grad for v, p in params.items()} | {"log_scale": loss_fn.log_scale.grad}
    return {k: t.detach() for k, t in terms.items()}, grads


def _worker(rank, init_file, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert distributed.get_rank() == rank and distributed.get_world_size() == WORLD
        assert distributed.broadcast_object({"r": rank}) == {"r": 0}
        mean = distributed.all_reduce_mean(torch.tensor([float(rank)]))
        inputs, weights, mixes = _data()
        part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local = {v: x[part] for v, x in inputs.items()}
        gathered = distributed.all_gather_with_grad(local["spec"])
        results = {"mean": mean, "gathered": gathered}
        for local_loss, use_mix, masked in itertools.product((False, True), repeat=3):
            terms, grads = _run(local, weights, mixes[rank] if use_mix else None, local_loss,
                                sources=SOURCES[part] if masked else None)
            # what DDP does: average the gradients over ranks
            results[(local_loss, use_mix, masked)] = (
                {k: distributed.all_reduce_mean(t) for k, t in terms.items()},
                {k: distributed.all_reduce_mean(t) for k, t in grads.items()},
                terms,
            )
        distributed.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_collectives(two_rank_results):
    inputs, _, _ = _data()
    for res in two_rank_results:
        torch.testing.assert_close(res["mean"], torch.tensor([0.5]))
        torch.testing.assert_close(res["gathered"], inputs["spec"])


@pytest.mark.parametrize("local_loss", [False, True])
@pytest.mark.parametrize("use_mix", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_gathered_loss_and_gradients_equal_single_process(two_rank_results, local_loss, use_mix, masked):
    """Also with same-source masking: the source ids are gathered with the embeddings."""
    inputs, weights, mixes = _data()
    mix = torch.block_diag(*mixes) if use_mix else None
    want_terms, want_grads = _run(inputs, weights, mix, local_loss, sources=SOURCES if masked else None)
    if masked:  # the mask changes the loss (a check that it is applied at all)
        assert want_terms["nce/spec-video"] != _run(inputs, weights, mix, local_loss)[0]["nce/spec-video"]
    for res in two_rank_results:
        terms, grads, own = res[(local_loss, use_mix, masked)]
        for k in want_terms:
            torch.testing.assert_close(terms[k], want_terms[k], rtol=1e-5, atol=1e-6)
            if not local_loss:  # the global loss is the same on every rank
                torch.testing.assert_close(own[k], want_terms[k], rtol=1e-5, atol=1e-6)
        for k in want_grads:
            torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-4, atol=1e-6)


def test_single_process_collectives_are_no_ops():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    assert distributed.all_reduce_mean(x) is x
    assert distributed.broadcast_object([1]) == [1]
    distributed.barrier()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rank, world, local, device = distributed.init_distributed()
    assert (rank, world, local) == (0, 1, 0) and device.type in ("cpu", "cuda")
