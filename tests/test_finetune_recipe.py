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
    return Finetuner(cfg, tower, ["a", "b"], False, 1)


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
