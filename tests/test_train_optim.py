"""The optimizer and schedule (avssl.train.optim): LARS against a hand-computed step, parameter groups, the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from avssl.config import ConfigError, OptimConfig, load_config
from avssl.train.optim import LARS, build_optimizer, build_schedule, lr_factor


def test_lr_factor_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(25)]
    assert f[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert f[12] == pytest.approx(0.55)  # half way through the cosine: the mean of 1 and the floor
    assert f[8] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert f[20:] == pytest.approx([0.1] * 5)  # the floor, also past the end
    assert all(a > b for a, b in zip(f[4:20], f[5:21]))


def test_lars_step_matches_a_hand_computation():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars": False}], lr=0.5, weight_decay=0.1,
               momentum=0.9, eta=0.01)
    grads = [(torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])), (torch.tensor([[0.0, 1.0]]), torch.tensor([-1.0]))]
    want_w, want_b, buf_w, buf_b = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0]), 0.0, 0.0
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        d = gw + 0.1 * want_w  # weight decay, then the trust ratio eta * |w| / |d|
        d = d * (0.01 * want_w.norm() / d.norm())
        buf_w = 0.9 * buf_w + d
        buf_b = 0.9 * buf_b + gb  # a plain group: no decay, no trust ratio
        want_w, want_b = want_w - 0.5 * buf_w, want_b - 0.5 * buf_b
        opt.step()
        torch.testing.assert_close(w.detach(), want_w)
        torch.testing.assert_close(b.detach(), want_b)


def _cfg(name: str):
    return load_config("tiny", {"optim": {"name": name, "lr": 0.2, "weight_decay": 0.05, "warmup_steps": 2},
                                "train": {"steps": 10}})


@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer_decays_only_matrices(name, kind):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    frozen = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    opt = build_optimizer([*model.parameters(), frozen], _cfg(name))
    assert isinstance(opt, kind)
    decay, plain = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert [p.shape for p in plain["params"]] == [torch.Size([4]), torch.Size([4]), torch.Size([4])]
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0 and decay["lr"] == 0.2
    assert plain.get("lars", False) is False and (name == "adamw" or decay["lars"] is True)


def test_build_optimizer_refuses_an_unknown_name_even_without_loading():
    from avssl.config import Config

    with pytest.raises(ConfigError, match="adamw or lars"):
        build_optimizer([torch.nn.Parameter(torch.ones(2, 2))], Config(optim=OptimConfig(name="sgd")))


def test_build_schedule_follows_lr_factor():
    cfg = _cfg("adamw")
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2, 2))], cfg)
    schedule = build_schedule(opt, cfg)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen == pytest.approx([0.2 * lr_factor(s, 2, 10, cfg.optim.min_lr_ratio) for s in range(12)])

