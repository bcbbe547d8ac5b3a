"""Symmetric InfoNCE between view pairs, with global negatives across ranks and soft targets for mixtures.

For a pair ``a-b`` (e.g. ``spec-video``) the embeddings are L2-normalised, gathered from every rank
(with gradient, :func:`avssl.train.distributed.all_gather_with_grad`), and compared by cosine similarity
divided by the temperature. The loss is the mean of the ``a -> b`` and ``b -> a`` cross-entropies.
Targets are one-hot (the same clip) unless a mix matrix says otherwise (see :class:`ContrastiveLoss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avssl.config import LossConfig
from avssl.pairs import AUDIO_VIEWS, SECOND_CROP, parse_pair
from avssl.train.distributed import all_gather_with_grad, get_rank, get_world_size

MAX_LOGIT_SCALE = 100.0  # a learnable temperature never drops below 0.01


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _is_audio(key: str) -> bool:
    return key.removesuffix(SECOND_CROP) in AUDIO_VIEWS


def _row_normalise(m: torch.Tensor) -> torch.Tensor:
    return m / m.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _mask(logits: torch.Tensor, targets: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """``logits[n, G]`` with the same-source candidates that are not positives (target 0) removed
    (set to the lowest float: zero probability, zero gradient). ``targets``: indices ``[n]`` or
    distributions ``[n, G]``; ``same``: bool ``[n, G]``."""
    positive = targets > 0 if targets.dim() == 2 else F.one_hot(targets, logits.shape[1]).bool()
    return logits.masked_fill(same & ~positive, torch.finfo(logits.dtype).min)


class ContrastiveLoss(nn.Module):
    """InfoNCE over ``cfg.pairs`` with ``cfg.weights`` (default 1), temperature ``cfg.temperature``
    (learnable as ``log(1 / temperature)`` when ``cfg.learn_temperature``), global negatives across
    ranks, and ``cfg.local_loss`` (each rank scores only its own rows against all columns).

    ``forward(emb, mix, sources, gather=True)``: ``emb`` maps views to ``[B, D]`` (not necessarily normalised;
    pairs with a missing view are skipped). A view with the suffix ``2`` is that view on a second audio crop of
    each clip (:mod:`avssl.pairs`): ``"v-v"`` compares ``emb[v]`` with ``emb[v + "2"]`` (COLA-style),
    ``"spec-wave2"`` ``emb["spec"]`` with ``emb["wave2"]``. ``mix`` (``[B, B]``, from :func:`avssl.data.augment.mix`) is the
    audio -> video correspondence: row ``i`` is the distribution over the batch's video clips that
    clip ``i``'s audio is a positive for. Audio -> video targets are its rows, video -> audio
    targets the rows of its row-normalised transpose; audio <-> audio pairs (both from the same
    waveform) always use one-hot targets. ``sources`` (``int64[B]``, e.g.
    :meth:`avssl.data.stream.Batch.source_ids`): with ``cfg.mask_same_source`` every candidate from the
    anchor's source video that is not one of its positives (target 0) is removed from the softmax
    (the ids are gathered across ranks, so this holds for global negatives too).
    Returns ``{"nce/a-b": weight * loss}`` (scalars) whose sum is the objective. In the global mode every rank computes the same global loss; with
    ``local_loss`` the mean of the ranks' losses is the global loss. ``gather=False`` scores this process's
    rows alone and issues no collective (validation on one rank, :mod:`avssl.train.validation`).
    """

    def __init__(self, cfg: LossConfig | None = None):
        super().__init__()
        cfg = cfg or LossConfig()
        self.pairs = [parse_pair(p) for p in cfg.pairs]
        if not self.pairs:
            raise ValueError("loss.pairs is empty; give at least one pair such as 'spec-video'")
        unknown = set(cfg.weights) - set(cfg.pairs)
        if unknown:
            raise ValueError(f"loss.weights names pairs not in loss.pairs: {sorted(unknown)}; pairs: {cfg.pairs}")
        self.names = {pair: f"nce/{p}" for pair, p in zip(self.pairs, cfg.pairs)}
        self.weights = {pair: float(cfg.weights.get(p, 1.0)) for pair, p in zip(self.pairs, cfg.pairs)}
        if cfg.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {cfg.temperature}")
        init = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.local_loss = cfg.local_loss
        self.mask_same_source = cfg.mask_same_source

    @property
    def temperature(self) -> float:
        return 1.0 / float(self.logit_scale().detach())

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self, emb: dict[str, torch.Tensor], mix: torch.Tensor | None = None, sources: torch.Tensor | None = None,
        gather: bool = True,
    ) -> dict[str, torch.Tensor]:
        present = [(a, b) for a, b in self.pairs if a in emb and b in emb]
        if not present:
            raise ValueError(f"no loss pair has both views among the embeddings {sorted(emb)}; pairs: {self.pairs}")
        device = next(iter(emb.values())).device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._losses(emb, mix, sources if self.mask_same_source else None, present, gather)

    def _losses(
        self, emb: dict[str, torch.Tensor], mix: torch.Tensor | None, sources: torch.Tensor | None,
        pairs: list[tuple[str, str]], gather: bool = True,
    ) -> dict[str, torch.Tensor]:
        batch, device = next(iter(emb.values())).shape[0], next(iter(emb.values())).device
        rank, world = (get_rank(), get_world_size()) if gather else (0, 1)
        collect = all_gather_with_grad if gather else _identity
        corr = None
        if mix is not None:
            if mix.shape != (batch, batch):
                raise ValueError(
                    f"mix matrix must be [{batch}, {batch}] for a batch of {batch}, got {tuple(mix.shape)}"
                )
            blocks = collect(mix.detach().float().to(device)).split(batch)
            corr = torch.block_diag(*blocks)  # [G, G]: mixing stays within each rank's batch
        rows = slice(rank * batch, (rank + 1) * batch) if self.local_loss else slice(None)
        same = None  # [rows, G]: candidate j comes from the anchor's source video
        if sources is not None:
            if sources.shape != (batch,):
                raise ValueError(f"sources must be [{batch}] for a batch of {batch}, got {tuple(sources.shape)}")
            ids = collect(sources.to(device))
            same = (ids[:, None] == ids[None, :])[rows]
        labels = torch.arange(batch * world, device=device)[rows]
        scale = self.logit_scale()
        # a deterministic order: every rank must issue the same collectives in the same order
        z = {v: F.normalize(emb[v].float(), dim=-1) for v in dict.fromkeys(v for p in pairs for v in p)}
        gathered = {v: collect(x) for v, x in z.items()}
        out = {}
        for a, b in pairs:
            if self.local_loss:
                logits_ab = scale * z[a] @ gathered[b].T  # [B, G]
                logits_ba = scale * z[b] @ gathered[a].T
            else:
                logits_ab = scale * gathered[a] @ gathered[b].T  # [G, G]
                logits_ba = logits_ab.T
            targets_ab = targets_ba = labels
            if corr is not None and _is_audio(a) != _is_audio(b):
                c = corr if _is_audio(a) else corr.T
                targets_ab, targets_ba = _row_normalise(c)[rows], _row_normalise(c.T)[rows]
            if same is not None:
                logits_ab, logits_ba = _mask(logits_ab, targets_ab, same), _mask(logits_ba, targets_ba, same)
            loss = 0.5 * (F.cross_entropy(logits_ab, targets_ab) + F.cross_entropy(logits_ba, targets_ba))
            out[self.names[(a, b)]] = self.weights[(a, b)] * loss
        return out
