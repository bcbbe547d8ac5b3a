"""One fine-tuning run's model and optimizer step (:class:`Finetuner`): the tower with its head, AdamW with the
tower's lower rate, the warm-up and cosine schedule, mixup, spectrogram masks, the BatchNorm statistics, and the
classifier that scores whole clips. The loop around it (data, epochs, checkpoints, outputs) is
:func:`avssl.finetune.run.finetune`."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from avssl.finetune.classifier import Classifier, Head
from avssl.config import Config
from avssl.embed.embedder import Embedder
from avssl.finetune.data import random_crops
from avssl.models.spec import SpecMask


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _Moments:
    """Per-channel count, mean and sum of squared deviations (float64) of tensors ``[N, C, *]``, merged batch by
    batch (Chan et al.'s pairwise update), so every value weighs alike whatever the batch sizes."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, torch.zeros(()), torch.zeros(())

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # [C, values]
        n, mean = x.shape[1], x.mean(1)
        m2 = (x - mean[:, None]).square().sum(1)
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * n / total)
        self.n = total

    def store(self, bn: nn.Module) -> None:
        """Write the mean and unbiased variance (BatchNorm's convention) as ``bn``'s running statistics."""
        if self.n < 2:
            raise ValueError(f"BatchNorm statistics need at least 2 values per channel, got {self.n}")
        bn.running_mean.copy_(self.mean.to(bn.running_mean.dtype))
        bn.running_var.copy_((self.m2 / (self.n - 1)).to(bn.running_var.dtype))
        bn.num_batches_tracked.zero_()


class Finetuner:
    """Tower, head, optimizer and the generator of crops, mixup and masks; the training step and validation."""

    def __init__(self, cfg: Config, tower: nn.Module, labels: list[str], multilabel: bool, steps_per_epoch: int,
                 epochs: int):
        """``epochs`` of ``steps_per_epoch`` steps: the budget the learning-rate schedule spans."""
        fc = self.fc = cfg.finetune
        self.cfg, self.labels, self.multilabel = cfg, labels, multilabel
        self.tower = tower.train()
        self.embedder = Embedder(tower, cfg, fc.view, features=fc.features)  # the windows and read-out of inference
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fc.seed)
            self.head = Head(self.embedder.embedding_dim, len(labels))
        self.dropout = nn.Dropout(fc.head_dropout)
        self.generator = torch.Generator().manual_seed(fc.seed)
        if fc.spec_mask and hasattr(tower, "mask"):  # the spectrogram tower: SpecAugment-style stripes in training
            tower.mask = SpecMask(fc.seed)
            tower.mask.use_generator(self.generator)
        groups = [{"params": list(self.head.parameters()), "lr": fc.lr}]
        if fc.tower_lr_scale > 0:
            groups.append({"params": list(tower.parameters()), "lr": fc.lr * fc.tower_lr_scale})
        else:
            tower.requires_grad_(False)
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=fc.weight_decay)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.warmup = int(round(fc.warmup_epochs * steps_per_epoch))
        self.classifier = Classifier(self.embedder, self.head, labels, multilabel)
        self.train_mode()

    def train_mode(self) -> None:
        """Tower and head in training mode, the tower's BatchNorm layers in eval mode unless ``bn_stats=batch``
        (the head standardises each batch, and keeps running statistics for inference, as it learns)."""
        self.tower.train()
        self.head.train()
        if self.fc.bn_stats != "batch":
            for m in _batchnorms(self.tower):
                m.eval()

    @torch.no_grad()
    def estimate_bn_stats(self, clips: list[np.ndarray], window: int) -> None:
        """Set BatchNorm statistics to the mean and (unbiased) variance over one random window of each training clip
        (batches of ``batch_size``, nothing else in training mode, a generator of its own): the head's always (its
        standardisation: exactly the statistics of the training clips' features, every clip weighing alike, a last
        batch of one clip included), the tower's too with ``bn_stats=task`` (over every value each layer sees, its
        earlier layers normalising each batch with the batch's own statistics)."""
        g = torch.Generator().manual_seed(self.fc.seed + 1)
        tower_bns = _batchnorms(self.tower) if self.fc.bn_stats == "task" else []
        moments = {m: _Moments() for m in tower_bns}
        hooks = [m.register_forward_pre_hook(lambda m, args: moments[m].add(args[0])) for m in tower_bns]
        head = _Moments()
        self.tower.eval()
        self.head.eval()
        for m in tower_bns:
            m.train()  # normalise with the batch's statistics (no running average is read or kept)
        try:
            for i in range(0, len(clips), self.fc.batch_size):
                crops = random_crops(clips[i : i + self.fc.batch_size], window, g)
                head.add(self.embedder.forward_windows(crops)[0])
        finally:
            for h in hooks:
                h.remove()
        for m, mom in [*moments.items(), (self.head[0], head)]:
            mom.store(m)
        self.train_mode()

    def lr_factor(self, step: int) -> float:
        """Linear warm-up to the base rate, then cosine decay to 0 at the end of the budget."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(1, self.total_steps - self.warmup)))

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on crops ``x[B, window]`` with targets ``y`` (class ids or multi-hot); the loss."""
        fc = self.fc
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.lr_factor(step)
        target = y.float() if self.multilabel else nn.functional.one_hot(y, len(self.labels)).float()
        if fc.mixup_alpha > 0:  # mixup: each clip with a partner of the batch, targets mixed alike
            lam = torch.distributions.Beta(fc.mixup_alpha, fc.mixup_alpha).sample((len(x),)).clamp(0, 1)
            partner = torch.randperm(len(x), generator=self.generator)
            lam = torch.maximum(lam, 1 - lam)  # the clip stays the larger part (as pretraining's mixup)
            x = lam[:, None] * x + (1 - lam[:, None]) * x[partner]
            target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
        logits = self.head(self.dropout(self.embedder.forward_windows(x)[0]))
        if self.multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = -(target * logits.log_softmax(-1)).sum(-1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if fc.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], fc.grad_clip)
        self.optimizer.step()
        return loss.item()

    def scores(self, clips: list[np.ndarray]) -> np.ndarray:
        """Scores of whole clips as :meth:`Classifier.predict` gives them (eval mode, every window)."""
        self.classifier.eval()
        try:
            sr = self.classifier.sample_rate
            return np.concatenate([self.classifier.predict(clips[i : i + 64], sr) for i in range(0, len(clips), 64)])
        finally:
            self.train_mode()

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"tower": copy.deepcopy(self.tower.state_dict()), "head": copy.deepcopy(self.head.state_dict())}

    def load_weights(self, w: dict[str, dict[str, torch.Tensor]]) -> None:
        self.tower.load_state_dict(w["tower"])
        self.head.load_state_dict(w["head"])
