"""Process-group setup from torchrun's environment variables, guarded collectives and BatchNorm over
the global batch.

Every collective is a no-op (returns its input) when ``torch.distributed`` is not initialised or
the world has one process, so single-process code just runs.

:class:`GlobalBatchNorm` (via :func:`convert_sync_batchnorm`) normalises with the statistics of the
global batch on every backend, CPU gloo included: a positive pair always sits on one rank, so
per-rank statistics would give it a shared "same rank" signature that negatives from other ranks
lack, and the contrastive loss could fall below what the content allows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

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


class _AllReduceSumWithGrad(torch.autograd.Function):
    """The sum of ``x`` over ranks; backward sums the incoming gradients over ranks (every rank's loss
    depends on the sum), as :class:`_AllGatherWithGrad` does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable (``x`` itself when not distributed)."""
    if not is_initialized():
        return x
    return _AllReduceSumWithGrad.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), on the CPU (gloo).

    torch's :class:`~torch.nn.SyncBatchNorm` refuses CPU tensors (and DDP refuses it on CPU
    modules); here the statistics come from two small differentiable all-reduces per layer:
    per-channel sums and counts (the mean), then per-channel sums of squared deviations (the
    biased variance used to normalise); running statistics take the unbiased variance, as in
    :class:`torch.nn.BatchNorm2d`. Outside training, or without a process group, it is a plain
    BatchNorm. Inputs ``[B, C, ...]``; parameter and buffer names are BatchNorm's, so state dicts
    load into the unconverted model.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [B, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not is_initialized():
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])
        sums = all_reduce_sum_with_grad(torch.cat([x.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum_with_grad(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var, alpha=m)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` normalising over the global batch: torch's
    :class:`~torch.nn.SyncBatchNorm` on accelerators (fused kernels), :class:`GlobalBatchNorm` on
    the CPU. Parameters and buffers are shared with the originals; returns the converted module."""
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        if module.track_running_stats:
            bn.running_mean, bn.running_var = module.running_mean, module.running_var
            bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


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
