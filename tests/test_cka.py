"""CKA: the properties the DRD objective relies on."""

import numpy as np
import pytest
import torch

from drd_components.losses import CKALoss, cka


def _numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Direct evaluation of tr(K H L H) / (n-1)^2 with linear kernels."""
    n = x.shape[0]
    x = x.reshape(n, -1)
    y = y.reshape(n, -1)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hs(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hs(k, l) / np.sqrt(hs(k, k) * hs(l, l))


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, 4, 4, generator=g, dtype=torch.float64), torch.randn(16, 40, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_is_one(feats, kernel, unbiased):
    x, _ = feats
    assert float(cka(x, x, kernel=kernel, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-5)


def test_orthogonal_and_scale_invariance(feats):
    x, y = feats
    xf = x.reshape(16, -1)
    q, _ = torch.linalg.qr(torch.randn(xf.shape[1], xf.shape[1], dtype=torch.float64))
    base = cka(xf, y)
    assert float(cka(xf @ q, y)) == pytest.approx(float(base), abs=1e-5)
    assert float(cka(xf * 7.5, y)) == pytest.approx(float(base), abs=1e-5)
    assert float(cka(xf, y * 0.01)) == pytest.approx(float(base), abs=1e-5)
    # a non-isotropic scaling does change CKA, so the check above can fail
    aniso = xf * torch.linspace(0.1, 10, xf.shape[1], dtype=torch.float64)
    assert abs(float(cka(aniso, y)) - float(base)) > 1e-3


def test_symmetry_and_numpy_reference(feats):
    x, y = feats
    assert float(cka(x, y)) == pytest.approx(float(cka(y, x)), abs=1e-6)
    assert float(cka(x, y)) == pytest.approx(_numpy_cka(x.numpy(), y.numpy()), abs=1e-5)


def test_unbiased_agrees_with_biased_for_large_n():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2000, 5, generator=g)
    x = z @ torch.randn(5, 30, generator=g)
    y = z @ torch.randn(5, 20, generator=g) + 0.5 * torch.randn(2000, 20, generator=g)
    biased, unbiased = float(cka(x, y)), float(cka(x, y, unbiased=True))
    assert biased == pytest.approx(unbiased, abs=0.01)
    # and for a small batch they do differ (the bias is real)
    assert abs(float(cka(x[:8], y[:8])) - float(cka(x[:8], y[:8], unbiased=True))) > 1e-3


def test_constant_features_give_zero_not_nan():
    x = torch.ones(8, 10, requires_grad=True)
    y = torch.randn(8, 6)
    value = cka(x, y)
    assert float(value) == 0.0
    (1 - value).backward()
    assert torch.isfinite(x.grad).all()
    assert float(cka(torch.zeros(8, 3), torch.zeros(8, 3))) == 0.0


def test_float32_accumulation_under_autocast():
    x = torch.randn(8, 64).to(torch.bfloat16)
    y = x.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = cka(x, y)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(1.0, abs=1e-4)


def test_loss_pooling_and_sampling_for_3d_maps():
    x = torch.randn(4, 8, 16, 16, 16)
    y = x * 3.0
    assert float(CKALoss(pool_size=4)(x, y)) == pytest.approx(0.0, abs=1e-5)
    assert float(CKALoss(spatial_samples=100)(x, y)) == pytest.approx(0.0, abs=1e-5)
    assert float(CKALoss()(x, torch.randn(4, 5, 16, 16, 16))) > 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="batch sizes differ"):
        cka(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 4"):
        cka(torch.randn(3, 3), torch.randn(3, 3), unbiased=True)
    with pytest.raises(ValueError, match="kernel"):
        CKALoss(kernel="poly")
