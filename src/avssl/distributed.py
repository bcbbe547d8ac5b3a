"""Process-group setup from torchrun's environment variables and guarded collectives.

Every collective is a no-op (returns its input) when ``torch.distributed`` is not initialised or
the world has one process, so single-process code just runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``).

    Returns ``(rank, world_size, local_rank, device)``: NCCL and ``cuda:LOCAL_RANK`` when CUDA is
    available, else gloo and CPU. Without those variables (a plain ``python`` run) it initialises
    nothing and returns ``(0, 1, 0, cuda:0 or cpu)``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info(
            "rank %d/%d (local %d) joined the %s process group on %s", rank, world_size, local_rank, backend, device
        )
    return rank, world_size, local_rank, device


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's ``[B, ...]`` along dim 0; backward sums the incoming gradients
    over ranks (every rank's loss may use every row) and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` on every rank -> ``[world_size * B, ...]`` (rank order), differentiable.

    All ranks must pass the same shape. The gradient reaching ``x`` is the sum over ranks of the
    gradients of their losses with respect to this rank's rows; DDP's gradient averaging then
    yields the gradient of the mean of the ranks' losses.
    """
    if get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor, no gradient); ``x`` itself when not distributed."""
    if get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / get_world_size()


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
