"""Linear probe on precomputed (e.g. cached) teacher features: the frozen teacher's own reference.

:class:`~drd_components.baselines.teacher_head.TeacherWithHead` trains a probe head through the
bundle's trainer, which runs the teacher on every step. When the teacher's features of the
training set already exist (a filled :class:`~drd_components.engines.MultiViewFeatureCache`), a
probe needs no further teacher forward on them: :func:`pool_taps` turns each sample's tapped maps
into one vector (global average per tap, concatenated), and :func:`fit_linear_probe` fits a
multinomial logistic regression to those vectors (standardised, L2-regularised, full-batch
L-BFGS: deterministic, and fast for a few thousand samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearFeatureProbe", "fit_linear_probe", "pool_taps", "select_linear_probe", "PROBE_WEIGHT_DECAYS"]


def pool_taps(features: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Concatenate the global average of every tap: ``[B, C_t, *spatial]`` (or ``[B, N, C]`` tokens) -> ``[B, sum C_t]``.

    ``None`` entries (taps not kept) are skipped.

    Raises:
        ValueError: when no tap is given or the taps disagree on the batch size.
    """
    pooled = []
    for f in features:
        if f is None:
            continue
        f = f.float()
        pooled.append(f.mean(1) if f.ndim == 3 else f.flatten(2).mean(2))
    if not pooled:
        raise ValueError("pool_taps needs at least one teacher tap (every entry was None).")
    if len({p.shape[0] for p in pooled}) != 1:
        raise ValueError(f"teacher taps of different batch sizes: {[p.shape[0] for p in pooled]}.")
    return torch.cat(pooled, dim=1)


class LinearFeatureProbe(nn.Module):
    """``logits = W ((x - mean) / std) + b`` on pooled teacher features.

    Args:
        num_features: length of a pooled feature vector.
        num_classes: classes.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-3,
    max_iter: int = 500,
) -> LinearFeatureProbe:
    """Fit a :class:`LinearFeatureProbe` by full-batch L-BFGS on cross-entropy + ``weight_decay * |W|^2 / 2``.

    Args:
        features: ``[N, F]`` pooled features (see :func:`pool_taps`).
        labels: ``[N]`` integer classes in ``[0, num_classes)``.
        num_classes: classes.
        weight_decay: L2 strength on the weights (not the bias), per sample.
        max_iter: L-BFGS iterations.

    Raises:
        ValueError: for mismatched lengths or labels out of range.
    """
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features [N, F] and labels [N] expected, got {tuple(features.shape)} and {tuple(labels.shape)}.")
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}].")
    x = features.detach().float()
    y = labels.long()
    probe = LinearFeatureProbe(x.shape[1], num_classes)
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0).clamp_min(1e-6))
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    opt = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 0.5 * weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.eval()


PROBE_WEIGHT_DECAYS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Weight decays :func:`select_linear_probe` tries by default."""


def select_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    num_classes: int,
    score: Callable[[torch.Tensor], float],
    weight_decays: Sequence[float] = PROBE_WEIGHT_DECAYS,
) -> tuple[LinearFeatureProbe, float, dict[float, float]]:
    """Fit one :func:`fit_linear_probe` per weight decay and keep the one ``score`` ranks highest on validation.

    Args:
        train_features, train_labels: ``[N, F]`` and ``[N]``.
        val_features: ``[M, F]`` validation features.
        num_classes: classes.
        score: validation logits ``[M, num_classes]`` -> a number, higher is better (e.g. accuracy or AUC).
        weight_decays: the grid.

    Returns:
        the chosen probe, its weight decay, and the validation score of every weight decay tried.
    """
    tried: dict[float, tuple[float, LinearFeatureProbe]] = {}
    for wd in weight_decays:
        probe = fit_linear_probe(train_features, train_labels, num_classes, weight_decay=wd)
        with torch.no_grad():
            tried[wd] = (float(score(probe(val_features))), probe)
    best = max(tried, key=lambda k: tried[k][0])
    return tried[best][1], best, {k: v[0] for k, v in tried.items()}
