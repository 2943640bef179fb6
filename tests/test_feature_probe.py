"""Linear probe on cached teacher features (the demo's teacher reference) and ``MultiViewFeatureCache.compute``."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader

from drd_components.baselines.feature_probe import LinearFeatureProbe, fit_linear_probe, pool_taps
from drd_components.data.multiview import MultiViewDataset
from drd_components.engines.feature_cache import MultiViewFeatureCache
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher

TINY = (8, 16, 32, 64)


def test_pool_taps_averages_maps_and_tokens_and_skips_untapped():
    maps = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    tokens = torch.randn(2, 5, 6)  # [B, N, C]
    pooled = pool_taps([maps, None, tokens])
    assert pooled.shape == (2, 3 + 6)
    assert torch.allclose(pooled[:, :3], maps.mean((2, 3)))
    assert torch.allclose(pooled[:, 3:], tokens.mean(1))
    with pytest.raises(ValueError, match="at least one"):
        pool_taps([None])
    with pytest.raises(ValueError, match="batch sizes"):
        pool_taps([maps, torch.randn(3, 2, 2, 2)])


def test_probe_separates_separable_classes_and_weight_decay_shrinks_weights():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 20, generator=g) + 50.0  # an offset: the probe standardises
    probe = fit_linear_probe(x, y, 3, weight_decay=1e-3)
    assert isinstance(probe, LinearFeatureProbe)
    x_new = centres[y] + torch.randn(300, 20, generator=g) + 50.0
    assert float((probe(x_new).argmax(1) == y).float().mean()) > 0.95
    strong = fit_linear_probe(x, y, 3, weight_decay=10.0)
    assert strong.linear.weight.norm() < probe.linear.weight.norm()
    again = fit_linear_probe(x, y, 3, weight_decay=1e-3)
    assert torch.equal(again.linear.weight, probe.linear.weight)  # deterministic


def test_probe_rejects_bad_labels_and_shapes():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_linear_probe(x, torch.tensor([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="features"):
        fit_linear_probe(x, torch.tensor([0, 1]), 2)


def test_compute_matches_what_the_cache_serves_for_the_same_input(tmp_path):
    torch.manual_seed(0)
    teacher = ResNetStandInTeacher(block_inplanes=TINY, spatial_size=64)  # maps larger than the student's: resampled
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 32, 32])
    data = [{"image": torch.rand(1, 32, 32), "label": torch.tensor(i % 3), "image_id": f"s{i}"} for i in range(5)]
    ds = MultiViewDataset(data, None, None, num_views=1, num_workers=0, progress=False)
    cache = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=str(tmp_path))
    cache.fill(ds, batch_size=2)
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=False)))
    served = cache(batch["image"], batch)
    computed = cache.compute(batch["image"])
    raw = teacher.stage_features(batch["image"])
    student_sizes = [f.shape[2:] for f in student.forward_stages(batch["image"])]
    assert len(served) == len(computed) == len(raw)
    for t, (s, c) in enumerate(zip(served, computed)):
        assert (s is None) == (c is None)
        if s is not None:
            assert s.shape[2:] == student_sizes[t] != raw[t].shape[2:]  # stored at the projector's size
            assert torch.equal(s, c)
    # the probe reference pools exactly these features
    assert pool_taps(served).shape[0] == 5


def test_select_linear_probe_keeps_the_weight_decay_best_on_validation():
    from drd_components.baselines.feature_probe import select_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=g)
    y = (x[:, 0] > 0).long()
    xv = torch.randn(40, 6, generator=g)
    yv = (xv[:, 0] > 0).long()
    probe, wd, tried = select_linear_probe(x[:60], y[:60], xv, 2, score=lambda l: (l.argmax(1) == yv).float().mean(),
                                           weight_decays=(1e-3, 1e4))
    assert set(tried) == {1e-3, 1e4} and wd == max(tried, key=tried.get)
    assert wd == 1e-3 and tried[1e-3] > 0.8  # a huge penalty flattens the probe to chance
