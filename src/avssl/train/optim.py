"""The optimizer and the learning-rate schedule of pretraining: AdamW or LARS, linear warm-up then cosine."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from avssl.config import Config, ConfigError


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017).

    Groups with ``lars=False`` (biases, norm parameters) get neither the trust ratio nor weight decay.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    pn, dn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    """AdamW or LARS; weight decay (and LARS adaptation) only on parameters with ``ndim > 1``."""
    o = cfg.optim
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    plain = [p for p in params if p.requires_grad and p.ndim <= 1]
    if o.name == "adamw":
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    if o.name == "lars":
        groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0, "lars": False}]
        return LARS(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=o.betas[0])
    raise ConfigError(f"optim.name={o.name!r} is not supported; use adamw or lars")


def build_schedule(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate per step: :func:`lr_factor` over ``cfg.train.steps`` with ``cfg.optim``'s warm-up and floor."""
    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=o.warmup_steps, total=cfg.train.steps, min_ratio=o.min_lr_ratio)
    )
