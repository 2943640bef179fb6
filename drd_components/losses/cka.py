"""Centered Kernel Alignment (CKA) between two sets of features of the same samples.

Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019 (CKA, and
the RBF kernel with a bandwidth tied to the median distance); Song et al., "Feature Selection
via Dependence Maximization", JMLR 2012 (the unbiased HSIC estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["cka", "hsic", "CKALoss"]


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"CKA needs at least 2 dimensions (samples x features), got shape {tuple(x.shape)}.")
    return x.reshape(x.shape[0], -1).float()


def _gram(x: torch.Tensor, kernel: str, sigma: float | None) -> torch.Tensor:
    if kernel == "linear":
        return x @ x.T
    if kernel == "rbf":
        sq = x.pow(2).sum(dim=1)
        dist2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
        if sigma is None:
            n = x.shape[0]
            off_diag = dist2[~torch.eye(n, dtype=torch.bool, device=x.device)]
            median = off_diag.detach().median() if off_diag.numel() else dist2.new_tensor(1.0)
            # bandwidth^2 = median squared distance; fall back to 1 for identical samples.
            bw2 = torch.where(median > 0, median, median.new_tensor(1.0))
        else:
            bw2 = dist2.new_tensor(float(sigma) ** 2)
        return torch.exp(-dist2 / (2.0 * bw2))
    raise ValueError(f"kernel must be 'linear' or 'rbf', got '{kernel}'.")


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Hilbert-Schmidt Independence Criterion of two ``n x n`` Gram matrices.

    Biased: ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n``. Unbiased (Song et al. 2012):
    ``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))`` where
    ``K~``, ``L~`` have zero diagonals.

    Args:
        k: Gram matrix of the first features.
        l: Gram matrix of the second features.
        unbiased: use the unbiased estimator (needs ``n >= 4``).

    Returns:
        a scalar tensor.

    Raises:
        ValueError: for the unbiased estimator with fewer than 4 samples.
    """
    n = k.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}.")
        eye = torch.eye(n, dtype=torch.bool, device=k.device)
        kt = k.masked_fill(eye, 0.0)
        lt = l.masked_fill(eye, 0.0)
        term1 = (kt * lt).sum()  # tr(K~ L~) for symmetric matrices
        term2 = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
        term3 = 2.0 / (n - 2) * (kt.sum(dim=0) * lt.sum(dim=1)).sum()
        return (term1 + term2 - term3) / (n * (n - 3))
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    lc = l - l.mean(dim=0, keepdim=True) - l.mean(dim=1, keepdim=True) + l.mean()
    return (kc * lc).sum() / max(n - 1, 1) ** 2


def _linear_cka_feature_space(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """Biased linear CKA of centred ``n x d`` features through ``d x d`` cross-covariances.

    ``tr(K H L H) = ||Y_c^T X_c||_F^2`` for ``K = X X^T`` and ``L = Y Y^T``, so CKA equals
    ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``: the same value as the Gram form, at
    ``O(n d^2)`` instead of ``O(n^2 d)`` cost, which matters when samples are spatial positions.
    """
    # scale before squaring so float32 does not overflow for large activations
    xc = xc / xc.abs().amax().clamp_min(1e-30)
    yc = yc / yc.abs().amax().clamp_min(1e-30)
    xc = xc / xc.norm().clamp_min(1e-12)
    yc = yc / yc.norm().clamp_min(1e-12)
    hxy = (yc.T @ xc).pow(2).sum()
    denom2 = (xc.T @ xc).pow(2).sum() * (yc.T @ yc).pow(2).sum()
    valid = denom2 > 0
    safe = torch.where(valid, denom2, torch.ones_like(denom2))
    return torch.where(valid, hxy / safe.sqrt(), torch.zeros_like(hxy))


def cka(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "linear",
    unbiased: bool = False,
    sigma: float | None = None,
) -> torch.Tensor:
    """CKA similarity of two feature batches of the same ``n`` samples.

    Features are flattened per sample (``n x ...`` -> ``n x d``); the two sides may have different
    ``d``. Computation runs in float32 with autocast disabled, whatever the input dtype.

    A side whose features do not vary across the batch (e.g. all-constant maps) carries no
    similarity information: its self-HSIC is 0 and CKA is defined as 0 there (no NaN, zero
    gradient through the denominator).

    Args:
        x: ``n x ...`` features.
        y: ``n x ...`` features.
        kernel: ``"linear"`` (default) or ``"rbf"``.
        unbiased: use the unbiased HSIC estimator (better for small batches, needs ``n >= 4``).
        sigma: RBF bandwidth; ``None`` uses the square root of the median squared distance.

    Returns:
        a scalar in ``[0, 1]`` (the unbiased estimator can leave that range slightly).

    Raises:
        ValueError: when the batch sizes differ, or for the reasons of :func:`hsic`.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same samples: batch sizes differ ({x.shape[0]} vs {y.shape[0]}).")
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        xf, yf = _flatten(x), _flatten(y)
        if kernel == "linear":
            # centring the features is equivalent to centring the linear Gram matrix, and is
            # better conditioned in float32.
            xf = xf - xf.mean(dim=0, keepdim=True)
            yf = yf - yf.mean(dim=0, keepdim=True)
            if not unbiased and xf.shape[0] > min(xf.shape[1], yf.shape[1]):
                return _linear_cka_feature_space(xf, yf)
        k = _gram(xf, kernel, sigma)
        l = _gram(yf, kernel, sigma)
        hxy = hsic(k, l, unbiased)
        denom2 = hsic(k, k, unbiased) * hsic(l, l, unbiased)
        valid = denom2 > 0
        safe = torch.where(valid, denom2, torch.ones_like(denom2))
        return torch.where(valid, hxy / safe.sqrt(), torch.zeros_like(hxy))


class CKALoss(_Loss):
    """``1 - CKA(x, y)`` between two feature batches, with optional size reduction for large maps.

    Two choices of what a CKA *sample* is:

    * ``samples="images"`` (the default of the papers' formulation): one sample per image, its
      whole map flattened. With a mini-batch of ``n`` images the Gram matrices are ``n x n`` and,
      for high-dimensional maps, close to diagonal for *any* two networks: the biased linear
      estimate then sits near 1 from the start and the loss barely acts (measured on real data:
      0.93 in the first epoch). The unbiased estimator (``unbiased=True``) removes that diagonal
      bias.
    * ``samples="positions"``: every spatial position of every image is a sample and the channels
      are its features (``B * prod(spatial)`` samples, up to ``max_positions`` drawn at random,
      the same positions on both sides). This compares the two maps position by position, is
      invariant to any orthogonal transform and isotropic scaling of the channels, and gives a
      dense, well-conditioned signal from a small batch. Both maps must share their spatial size
      (the projectors resample teacher maps to the student stage's size).

    Args:
        kernel: ``"linear"`` (default) or ``"rbf"``.
        unbiased: use the unbiased HSIC estimator.
        sigma: RBF bandwidth (``None``: median heuristic).
        pool_size: adaptive-average-pool spatial maps to this size per axis before flattening
            (``None`` keeps full resolution). Useful for large 3D maps.
        spatial_samples: instead of pooling, compare this many randomly sampled spatial positions
            (the same positions on both sides; both maps must then share their spatial size).
            Drawn anew every call. ``None`` disables sampling.
        samples: ``"images"`` or ``"positions"`` (see above).
        max_positions: with ``samples="positions"``, at most this many positions are compared
            (drawn anew every call); ``None`` compares all of them.

    Raises:
        ValueError: for an unknown kernel or sample mode.
    """

    def __init__(
        self,
        kernel: str = "linear",
        unbiased: bool = False,
        sigma: float | None = None,
        pool_size: int | None = None,
        spatial_samples: int | None = None,
        samples: str = "images",
        max_positions: int | None = 4096,
    ) -> None:
        super().__init__()
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got '{kernel}'.")
        if pool_size is not None and spatial_samples is not None:
            raise ValueError("choose either pool_size or spatial_samples, not both.")
        if samples not in ("images", "positions"):
            raise ValueError(f"samples must be 'images' or 'positions', got '{samples}'.")
        self.kernel = kernel
        self.unbiased = unbiased
        self.sigma = sigma
        self.pool_size = pool_size
        self.spatial_samples = spatial_samples
        self.samples = samples
        self.max_positions = max_positions

    def positions(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps as ``positions x channels`` matrices (the same random positions on both sides)."""
        if x.ndim < 3 or y.ndim < 3:
            raise ValueError(
                f"samples='positions' needs B x C x spatial maps, got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"samples='positions' compares the same positions: batch and spatial sizes must match, got "
                f"{tuple(x.shape)} vs {tuple(y.shape)}."
            )
        xp = x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
        yp = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
        if self.max_positions is not None and xp.shape[0] > self.max_positions:
            idx = torch.randperm(xp.shape[0], device=x.device)[: self.max_positions]
            xp, yp = xp[idx], yp[idx]
        return xp, yp

    def reduce(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the configured pooling or spatial sampling to both maps."""
        if self.pool_size is not None:
            x, y = (_adaptive_pool(t, self.pool_size) for t in (x, y))
        elif self.spatial_samples is not None:
            if x.shape[2:] != y.shape[2:]:
                raise ValueError(f"spatial sampling needs equal spatial sizes, got {tuple(x.shape)} vs {tuple(y.shape)}.")
            n_pos = int(torch.tensor(x.shape[2:]).prod()) if x.ndim > 2 else 1
            if n_pos > self.spatial_samples:
                idx = torch.randperm(n_pos, device=x.device)[: self.spatial_samples]
                x = x.flatten(2)[:, :, idx]
                y = y.flatten(2)[:, :, idx]
        return x, y

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CKA after reduction (no ``1 -``)."""
        x, y = self.reduce(x, y)
        if self.samples == "positions":
            x, y = self.positions(x, y)
        return cka(x, y, kernel=self.kernel, unbiased=self.unbiased, sigma=self.sigma)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return ``1 - CKA(x, y)``."""
        return 1.0 - self.similarity(x, y)


def _adaptive_pool(t: torch.Tensor, size: int) -> torch.Tensor:
    if t.ndim == 4:
        return F.adaptive_avg_pool2d(t, size)
    if t.ndim == 5:
        return F.adaptive_avg_pool3d(t, size)
    return t

