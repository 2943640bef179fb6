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


def test_feature_space_form_equals_the_gram_form():
    # n > d takes the d x d cross-covariance path; it must give the Gram-matrix value
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64)
    y = x[:, :7] @ torch.randn(7, 9, generator=g, dtype=torch.float64) + torch.randn(300, 9, generator=g, dtype=torch.float64)
    assert float(cka(x, y)) == pytest.approx(_numpy_cka(x.numpy(), y.numpy()), abs=1e-5)
    # huge activations do not overflow float32
    assert float(cka(x.float() * 1e18, y.float())) == pytest.approx(float(cka(x, y)), abs=1e-4)


def test_batch_of_images_cka_is_near_one_for_unrelated_maps_but_positions_cka_is_not():
    # the bias the 'positions' mode and the unbiased estimator exist for: 8 images of unrelated,
    # high-dimensional random maps look "similar" to biased image-level CKA
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 32, 16, 16, generator=g)
    b = torch.randn(8, 64, 16, 16, generator=g)
    assert float(CKALoss().similarity(a, b)) > 0.8
    assert float(CKALoss(unbiased=True).similarity(a, b)) < 0.1
    assert float(CKALoss(samples="positions").similarity(a, b)) < 0.1


def test_positions_mode_invariances_and_errors():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(4, 16, 8, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    rotated = torch.einsum("dc,bchw->bdhw", q, a) * 5.0  # orthogonal channel mix + isotropic scale
    loss = CKALoss(samples="positions", max_positions=None)
    assert float(loss(a, rotated)) == pytest.approx(0.0, abs=1e-5)
    # a spatial shuffle of one side destroys the position-wise correspondence
    shuffled = a.flatten(2)[:, :, torch.randperm(64, generator=g)].reshape_as(a)
    assert float(loss(a, shuffled)) > 0.5
    # sampled positions: the same positions are taken on both sides
    assert float(CKALoss(samples="positions", max_positions=50)(a, rotated)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="spatial sizes must match"):
        loss(a, torch.randn(4, 16, 4, 4))
    with pytest.raises(ValueError, match="samples must be"):
        CKALoss(samples="pixels")
