"""The linear probe on frozen embeddings and its metrics (stage 2 of :mod:`avssl.evaluate.run`: never touches a model).

The protocol (written down in ``docs/evaluation.md``): standardise with training statistics, train a
linear softmax classifier (sigmoid/BCE per class for multi-label tasks) with Adam, one head per L2
weight at once, pick the L2 weight and the epoch on a validation split (the task's own, or carved
from train only, :func:`_carve`), and test the best head. Metrics: accuracy, mAP, ROC AUC, d'.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from avssl.evaluate.tasks_base import Task

log = logging.getLogger(__name__)

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)  # L2 weights tried on the validation split


def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy of ``scores[n, K]`` against class indices ``y_true[n]``."""
    return float(np.mean(np.argmax(scores, axis=1) == y_true))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the step precision-recall curve of one class (scikit-learn's definition:
    sum over distinct thresholds of (R_n - R_{n-1}) P_n). ``y_true`` in {0, 1}; NaN without positives."""
    y_true = np.asarray(y_true, dtype=np.float64)
    if y_true.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, y = np.asarray(score)[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie group
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    precision, recall = tp / (tp + fp), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of one class (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true) > 0
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: ``sqrt(2) * Phi^-1(auc)`` (as reported for AudioSet)."""
    auc = min(max(auc, 1e-6), 1 - 1e-6)
    return math.sqrt(2.0) * statistics.NormalDist().inv_cdf(auc)


def classification_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics for ``scores[n, K]``: ``accuracy`` (single-label ``y[n]`` only), macro ``mAP``,
    macro ``auc`` and ``d_prime`` (classes without positives, or without negatives, are skipped)."""
    multilabel = y.ndim == 2
    onehot = y if multilabel else np.eye(scores.shape[1], dtype=np.float32)[y]
    aps = [average_precision(onehot[:, k], scores[:, k]) for k in range(scores.shape[1])]
    aucs = [roc_auc(onehot[:, k], scores[:, k]) for k in range(scores.shape[1])]
    auc = float(np.nanmean(aucs)) if not all(map(math.isnan, aucs)) else float("nan")
    out = {"mAP": float(np.nanmean(aps)), "auc": auc, "d_prime": d_prime(auc) if not math.isnan(auc) else float("nan")}
    if not multilabel:
        out["accuracy"] = accuracy(y, scores)
    return out


# ---------------------------------------------------------------------------------------- probe


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """Run tiny CPU tensor work on one thread: intra-op threads only spin on matrices this small
    (measured ~50x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _carve(
    y: np.ndarray, share: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (train, valid): stratified when every class has >= 2 examples (with more
    classes than the validation share holds, by :func:`_carve_keeping_classes`: no class loses its training
    examples).

    With ``groups`` (one id per example, e.g. the source recording) no group straddles the two:
    ``StratifiedGroupKFold`` with ``round(1 / share)`` folds (its first fold is the validation
    set) for single-label ``y``, else ``GroupShuffleSplit``; ignored (with a warning) when there
    are fewer than two groups."""
    import warnings

    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    if groups is not None and len(np.unique(groups)) >= 2:
        n_splits = max(2, int(round(1 / share)))
        if y.ndim == 1 and len(np.unique(groups)) >= n_splits:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        else:
            splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
        with warnings.catch_warnings():  # a class with fewer groups than folds is expected, not news
            warnings.simplefilter("ignore", UserWarning)
            tr, va = next(splitter.split(np.zeros(len(y)), y if y.ndim == 1 else None, groups))
        return np.sort(tr), np.sort(va)
    if groups is not None:
        log.warning("fewer than two example groups: the validation split is carved without them")
    counts = np.unique(y, return_counts=True)[1] if y.ndim == 1 else np.zeros(0)
    if y.ndim == 1 and counts.min() >= 2 and len(counts) > min(share, 1 - share) * len(y):
        return _carve_keeping_classes(y, share, seed)  # more classes than a validation split holds
    stratify = y.ndim == 1 and counts.min() >= 2
    splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(n_splits=1, test_size=share, random_state=seed)
    tr, va = next(splitter.split(np.zeros(len(y)), y if stratify else None))
    return np.sort(tr), np.sort(va)


def class_quota(counts: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """How many of its ``counts[c]`` examples class ``c`` gives to validation: ``floor(share * n_c)``, plus one more
    with probability equal to the remainder, but never its last one (a class without examples gives none)."""
    quota = share * counts
    return np.minimum(np.floor(quota).astype(int) + (rng.random(len(counts)) < quota % 1), np.maximum(counts - 1, 0))


def _carve_keeping_classes(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A validation carve of single-label ``y`` for tasks with few examples per class (e.g. 3): class ``c``
    gives ``floor(share * n_c)`` examples, plus one more with probability equal to the remainder, but never
    its last one, so every class keeps at least one training example and the expected size is ``share``."""
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = class_quota(counts, share, rng)
    if take.sum() == 0:  # every draw missed (a small task): one validation example from a random class
        take[rng.choice(np.flatnonzero(counts > 1))] = 1
    valid = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)])
    return np.setdiff1d(np.arange(len(y)), valid), np.sort(valid)


def _score(y: np.ndarray, scores: np.ndarray) -> float:
    """Multi-label validation criterion: mAP over classes with positives."""
    return float(np.nanmean([average_precision(y[:, k], scores[:, k]) for k in range(y.shape[1]) if y[:, k].any()]))


def probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    valid_x: np.ndarray | None = None,
    valid_y: np.ndarray | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    lr: float = 1e-2,
    batch_size: int = 256,
    max_epochs: int = 200,
    min_steps: int = 600,
    patience: int = 15,
    valid_share: float = 0.2,
    groups: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a linear classifier on frozen embeddings and test it.

    ``*_x``: ``float[n, D]``; ``*_y``: class indices ``int[n]`` (softmax + cross-entropy) or
    multi-hot ``{0,1}[n, K]`` (per-class sigmoid + BCE). Without ``valid_x`` a validation split
    (``valid_share``, stratified when possible, seeded) is carved from the training data, keeping
    each of ``groups`` (one id per training example, e.g. its source recording) on one side.
    Features are standardised with the training mean/std. One linear layer per L2 weight in
    ``weight_decays`` is trained at once with Adam (``lr``, minibatches of ``batch_size``, at
    least ``min_steps`` steps up to ``max_epochs`` epochs, stopping after ``patience`` epochs
    without a validation gain); the (weight, epoch) with the best validation score is tested.

    Returns ``{"metrics": {...}, "scores": float32[n_test, K] (probabilities), "weight_decay",
    "epoch", "valid_score", "num_train", "num_valid"}``.
    """
    device = torch.device(device or "cpu")
    with _one_thread(device):
        train_x, train_y, valid_x, valid_y, test_x, test_y = _splits(
            train_x, train_y, test_x, test_y, valid_x, valid_y, valid_share, seed, groups)
        multilabel = train_y.ndim == 2
        if multilabel:
            k = train_y.shape[1]
        else:
            k = num_classes or int(max(train_y.max(), valid_y.max(), test_y.max())) + 1
        xt, xv, xs = _standardise(train_x, (train_x, valid_x, test_x), device)
        yt = torch.from_numpy(train_y).to(device, torch.float32 if multilabel else torch.long)
        epochs = min(max_epochs, max(1, math.ceil(min_steps / math.ceil(xt.shape[0] / batch_size))))
        best = _fit_heads(xt, yt, xv, valid_y, k, weight_decays, seed=seed, lr=lr, batch_size=batch_size,
                          epochs=epochs, patience=patience)
        j = max(range(len(weight_decays)), key=lambda i: (best[i][0], weight_decays[i]))  # ties: the stronger regulariser
        score, epoch, w, b = best[j]
        scores = _predict(xs, w, b, multilabel)
        return {
            "metrics": classification_metrics(test_y, scores),
            "scores": scores.astype(np.float32),
            "weight_decay": float(weight_decays[j]),
            "epoch": int(epoch) + 1,
            "valid_score": float(score),
            "num_train": int(len(train_x)),
            "num_valid": int(len(valid_x)),
        }


def _splits(train_x, train_y, test_x, test_y, valid_x, valid_y, valid_share: float, seed: int,
            groups: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """``(train_x, train_y, valid_x, valid_y, test_x, test_y)`` as arrays (features float32), the
    validation split carved from the training data (:func:`_carve`) when ``valid_x`` is None."""
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if valid_x is None:
        tr, va = _carve(train_y, valid_share, seed, groups)
        train_x, valid_x, train_y, valid_y = train_x[tr], train_x[va], train_y[tr], train_y[va]
    valid_x, valid_y = np.asarray(valid_x, np.float32), np.asarray(valid_y)
    return train_x, train_y, valid_x, valid_y, test_x, test_y


def _standardise(train_x: np.ndarray, arrays: tuple[np.ndarray, ...], device: torch.device) -> list[torch.Tensor]:
    """Each of ``arrays`` standardised with the mean and std (1 where ~0) of ``train_x``, as float32 tensors."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return [torch.from_numpy((a - mean) / std).float().to(device) for a in arrays]


def _fit_heads(
    xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, valid_y: np.ndarray, k: int,
    weight_decays: tuple[float, ...], *, seed: int, lr: float, batch_size: int, epochs: int, patience: int,
) -> list[tuple[float, int, torch.Tensor | None, torch.Tensor | None]]:
    """Train one linear head ``[D, K]`` per L2 weight at once (Adam, seeded init and minibatch order)
    for up to ``epochs`` epochs, stopping ``patience`` epochs after the last validation gain of any head.

    Returns, per head, ``(best validation score, its epoch, weight [D, K], bias [1, K])``."""
    device, multilabel = xt.device, yt.ndim == 2
    yv = torch.from_numpy(valid_y).to(device)
    gen = torch.Generator().manual_seed(seed)
    g, d = len(weight_decays), xt.shape[1]
    weight = (torch.randn(g, d, k, generator=gen) * 0.01).to(device).requires_grad_()
    bias = torch.zeros(g, 1, k, device=device, requires_grad=True)
    wd = torch.tensor(weight_decays, dtype=torch.float32, device=device)[:, None, None]
    opt = torch.optim.Adam([weight, bias], lr=lr)
    best = [(-math.inf, -1, None, None)] * g  # (score, epoch, weight, bias) per L2 weight
    for epoch in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=gen).to(device)
        _train_epoch(xt, yt, perm, weight, bias, wd, opt, batch_size)
        val = _validation_scores(xv, yv, valid_y, weight, bias, multilabel)
        for j in range(g):
            if val[j] > best[j][0]:
                best[j] = (val[j], epoch, weight[j].detach().clone(), bias[j].detach().clone())
        if epoch - max(b[1] for b in best) >= patience:
            break
    return best


def _train_epoch(xt: torch.Tensor, yt: torch.Tensor, perm: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 wd: torch.Tensor, opt: torch.optim.Optimizer, batch_size: int) -> None:
    """One pass over the training rows in the order ``perm``: an optimizer step per minibatch on every head
    (``weight [G, D, K]``, ``bias [G, 1, K]``), loss = mean (cross-entropy | BCE) + 0.5 * ``wd`` * |weight|^2."""
    g, k = weight.shape[0], weight.shape[2]
    for i in range(0, xt.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        logits = torch.einsum("nd,gdk->gnk", xt[idx], weight) + bias  # [G, b, K]
        if yt.ndim == 2:
            loss = F.binary_cross_entropy_with_logits(logits, yt[idx].expand(g, -1, -1), reduction="none")
            loss = loss.mean(dim=(1, 2)).sum()
        else:
            loss = F.cross_entropy(logits.reshape(-1, k), yt[idx].repeat(g), reduction="sum") / len(idx)
        loss = loss + 0.5 * (wd * weight.square()).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _validation_scores(xv: torch.Tensor, yv: torch.Tensor, valid_y: np.ndarray, weight: torch.Tensor,
                       bias: torch.Tensor, multilabel: bool) -> list[float]:
    """Each head's validation score: accuracy, or mAP over classes (:func:`_score`) when ``multilabel``."""
    logits = torch.einsum("nd,gdk->gnk", xv, weight) + bias
    if multilabel:
        return [_score(valid_y, torch.sigmoid(logits[j]).cpu().numpy()) for j in range(len(logits))]
    return (logits.argmax(-1) == yv).float().mean(-1).tolist()


@torch.no_grad()
def _predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Class probabilities ``[n, K]`` of one head: sigmoid (multi-label) or softmax."""
    logits = x @ w + b
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)).cpu().numpy()


# ---------------------------------------------------------------------------------------- a task's folds


def _chance(task: Task, train: np.ndarray, test: np.ndarray) -> float:
    """The headline metric of a constant predictor: the training majority class (accuracy) or
    the test label prevalence (mAP of a constant score)."""
    y_tr, y_te = task.targets(train), task.targets(test)
    if task.multilabel:
        pos = y_te.sum(0)
        return float(np.mean(y_te.mean(0)[pos > 0]))
    return float(np.mean(y_te == np.bincount(y_tr, minlength=len(task.classes)).argmax()))


def run_probes(
    task: Task, x: np.ndarray, *, seeds: int = 3, device: str | None = None, blocks: list[int] | None = None
) -> tuple[dict, np.ndarray | None]:
    """Probe every fold of ``task`` with ``seeds`` seeds on the embeddings ``x[len(examples), D]``.

    ``blocks`` (the width of each block's part of ``x``, ``Embedder.layer_dims``): each fold and seed
    also probes every block alone and tests the read-out with the best validation score
    (:func:`_best_readout`); the summary counts the choices under ``"readouts"``.

    Returns (summary dict, confusion counts ``int64[K, K]`` summed over folds and seeds, or None
    for multi-label tasks)."""
    y_all = task.targets()
    k = len(task.classes)
    confusion = None if task.multilabel else np.zeros((k, k), dtype=np.int64)
    runs, chance = [], []
    for fold in task.folds:
        tr, te = task.indices(fold.train), task.indices(fold.test)
        va = task.indices(fold.valid) if fold.valid else None
        chance.append(_chance(task, tr, te))
        groups = [task.examples[i].group for i in tr]  # examples without a group are groups of their own
        groups = None if all(g is None for g in groups) else np.array(
            [f"#{i}" if g is None else f"g:{g}" for i, g in zip(tr, groups)])
        x_tr, x_te, x_va = x[tr], x[te], None if va is None else x[va]  # rows gathered once per fold
        for seed in range(seeds):
            readout, res = _best_readout(
                blocks, lambda cols: probe(  # noqa: B023 (called at once)
                    x_tr[:, cols], y_all[tr], x_te[:, cols], y_all[te],
                    valid_x=None if x_va is None else x_va[:, cols], valid_y=None if va is None else y_all[va],
                    num_classes=k, seed=seed, groups=groups, device=device))
            runs.append({"fold": fold.name, "seed": seed, "readout": readout,
                         "weight_decay": res["weight_decay"], "epoch": res["epoch"],
                         "valid_score": res["valid_score"], "num_train": res["num_train"],
                         "num_valid": res["num_valid"], "num_test": int(len(te)), **res["metrics"]})
            if confusion is not None:
                np.add.at(confusion, (y_all[te], res["scores"].argmax(1)), 1)
    names = [m for m in ("accuracy", "mAP", "d_prime", "auc") if m in runs[0]]
    metrics = {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs]))}
               for m in names}
    summary = {"metric": task.metric, "mean": metrics[task.metric]["mean"], "std": metrics[task.metric]["std"],
               "chance": float(np.mean(chance)), "metrics": metrics, "runs": runs}
    if blocks is not None:
        summary["readouts"] = dict(Counter(r["readout"] for r in runs))
    return summary, confusion


def _best_readout(blocks: list[int] | None, fit: Callable[[Any], dict]) -> tuple[str, dict]:
    """``fit(columns)`` on all columns (``"all"``) and, given ``blocks``, on each block's columns
    (``"block N"``, last block first); returns the read-out with the best validation score (ties: the
    earlier one) and its probe result. Test data never enters the choice."""
    candidates: list[tuple[str, Any]] = [("all", slice(None))]
    if blocks is not None:
        candidates += [(f"block {i + 1}", cols) for i, cols in reversed(list(enumerate(block_columns(blocks))))]
    best: tuple[str, dict] | None = None
    for name, cols in candidates:
        res = fit(cols)
        if best is None or res["valid_score"] > best[1]["valid_score"]:
            best = (name, res)
    assert best is not None
    return best


def block_columns(blocks: list[int]) -> list[slice]:
    """Each block's columns of a ``layers`` embedding whose blocks are ``blocks`` wide, in order."""
    ends = np.cumsum(blocks)
    return [slice(int(e - w), int(e)) for e, w in zip(ends, blocks)]
