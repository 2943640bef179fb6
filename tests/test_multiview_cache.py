"""Multi-view teacher cache: view reproducibility and alignment, cache key, corruption, sampler, k-of-N hybrid paths."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import RandAdjustContrastd, RandAffined, RandCropByPosNegLabeld, RandFlipd

from drd_components.data.multiview import MultiViewDataset, MultiViewSampler, view_random_seed
from drd_components.engines import DRDTrainer
from drd_components.engines.feature_cache import (
    CachedDRDTrainer,
    MultiViewFeatureCache,
    TeacherFeatureCache,
    _prepare_feature,
    stored_feature_shape,
)
from drd_components.losses import DRDLoss
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher

TINY = (8, 16, 32, 64)
N, K, SIZE = 6, 3, 32


class CountingTeacher(ResNetStandInTeacher):
    """Stand-in teacher that counts the samples it computes features for (a private counter: the
    cache key includes the teacher's public attributes)."""

    def __init__(self, **kwargs):
        super().__init__(block_inplanes=TINY, **kwargs)
        self._seen = 0

    def stage_features(self, x):
        self._seen += x.shape[0]
        return super().stage_features(x)


def _teacher(seed=0, spatial_size=64):
    """Resizes its input to 64: its maps are twice the student's size, so the cache stores them downsampled."""
    torch.manual_seed(seed)
    return CountingTeacher(spatial_size=spatial_size)


def _models(teacher):
    torch.manual_seed(1)
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, SIZE, SIZE])
    return student, projectors


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        image = torch.rand(1, SIZE, SIZE, generator=g)
        # "label" is a copy of the image: the same spatial transform must leave them equal
        out.append({"image": image, "label": image.clone(), "cls": torch.tensor(i % 3), "image_id": f"s{i}"})
    return out


def _random(prob=0.5, keys=("image", "label")):
    keys = list(keys)
    return [
        RandFlipd(keys, prob=prob, spatial_axis=0),
        RandAffined(keys, prob=prob, rotate_range=[0.3], scale_range=[0.1, 0.1], padding_mode="zeros"),
        RandAdjustContrastd("image", prob=0.3, gamma=[0.8, 1.25]),
    ]


def _dataset(num_views=K, view_seed=0, random=True, prob=0.5, data=None):
    return MultiViewDataset(data if data is not None else _data(), None, _random(prob) if random else None,
                            num_views=num_views, view_seed=view_seed, num_workers=0, progress=False)


def _cls_view(item):
    """Classification items: 'cls' is the label."""
    return {**item, "label": item["cls"]}


# ------------------------------------------------------------------------------------------ views and sampler
def test_views_are_reproducible_differ_across_v_and_move_image_and_label_together():
    ds = _dataset()
    assert (len(ds), ds.num_entries, ds.items_per_view) == (N * K, N * K, 1)
    again = _dataset()  # a fresh dataset (another process / run) with the same view seed
    for index in [0, 5, 4, 17, 3]:  # any order
        a, b, c = ds[index], ds[index], again[index]
        assert a["view_id"] == index and a["sample_index"] == index // K
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])
        assert torch.equal(a["label"], c["label"])
    for i in range(N):
        views = [ds.get_view(i, v) for v in range(K)]
        assert any(not torch.equal(views[0]["image"], v["image"]) for v in views[1:]), f"sample {i}: all views equal"
    # the label (a copy of the image) went through the same flip / affine with the same parameters:
    # without the intensity-only transform, label == image for every view
    geo = MultiViewDataset(_data(), None, _random()[:2], num_views=K, num_workers=0, progress=False)
    moved = 0
    for index in range(len(geo)):
        item = geo[index]
        assert torch.equal(item["image"], item["label"]), f"view {index}: image and label transformed differently"
        moved += not torch.equal(item["image"], _data()[index // K]["image"])
    assert moved > 0
    assert _dataset(view_seed=1)[4]["image"].ne(ds[4]["image"]).any()
    assert view_random_seed(0, 1, 2) == view_random_seed(0, 1, 2) != view_random_seed(0, 2, 1)


def test_views_are_the_same_in_dataloader_workers():
    ds = _dataset()
    sampler = MultiViewSampler(N, K, seed=3)
    sampler.set_epoch(2)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2)
    seen = 0
    for batch in loader:
        for j, vid in enumerate(batch["view_id"].tolist()):
            assert torch.equal(batch["image"][j], ds[vid]["image"])
            seen += 1
    assert seen == N


def test_sampler_draws_one_view_per_sample_reproducibly_per_epoch():
    sampler = MultiViewSampler(N, K, seed=0)
    epochs = {}
    for epoch in range(1, 41):
        sampler.set_epoch(epoch)
        ids = list(sampler)
        assert sorted(i // K for i in ids) == list(range(N))  # every sample once
        epochs[epoch] = ids
    resumed = MultiViewSampler(N, K, seed=0)  # a resumed run: a new sampler, set to the epoch it resumes at
    resumed.set_epoch(7)
    assert list(resumed) == epochs[7]
    assert epochs[1] != epochs[2]
    counts = np.bincount([i % K for ids in epochs.values() for i in ids], minlength=K)
    assert counts.min() > 0.6 * counts.mean()  # views drawn uniformly
    other_seed = MultiViewSampler(N, K, seed=1)
    other_seed.set_epoch(7)
    assert list(other_seed) != epochs[7]
    # distributed: two ranks split one epoch's list
    ranks = [MultiViewSampler(N, K, seed=0, num_replicas=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(7)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(epochs[7])
    assert list(MultiViewSampler(N, 1, seed=0, shuffle=False)) == list(range(N))


# ------------------------------------------------------------------------------------------ cache contents
def test_cached_features_equal_the_teacher_on_a_recomputed_view_at_the_projector_size(tmp_path):
    teacher = _teacher()
    _, projectors = _models(teacher)
    ds = _dataset()
    cache = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path, dtype="float16")
    stats = cache.fill(ds, batch_size=4)
    assert stats["computed"] == N * K and len(cache) == N * K
    # stored at the student stage sizes (half the teacher's maps)
    raw_shapes = [tuple(f.shape[1:]) for f in teacher.stage_features(torch.zeros(1, 1, SIZE, SIZE))]
    assert cache.stored_shapes == {t: (s[0], s[1] // 2, s[2] // 2) for t, s in enumerate(raw_shapes)}
    assert cache.stored_shapes == {t: stored_feature_shape(cache.plans[t], raw_shapes[t]) for t in range(4)}
    assert cache.bytes_per_entry == sum(np.prod(s) for s in cache.stored_shapes.values()) * 2 + 45
    fresh_ds = _dataset()  # recompute the views in a fresh dataset with the same seeds
    for vid in [0, 7, 11, 17]:
        view = fresh_ds[vid]
        teacher._seen = 0
        served = cache(view["image"][None], {"view_id": torch.tensor([vid])})
        assert teacher._seen == 0  # a hit
        direct = teacher.stage_features(view["image"][None])
        for t, (proj, f) in enumerate(zip(projectors.projectors, direct)):
            expected = torch.nn.functional.interpolate(f, size=proj.out_size, mode="bilinear", align_corners=False)
            torch.testing.assert_close(served[t], expected, rtol=2e-3, atol=2e-3)  # fp16 rounding only
    # the projectors see maps already at their size: same output as the uncached path up to fp16
    x = torch.stack([fresh_ds[v]["image"] for v in (1, 2)])
    projectors.eval()
    with torch.no_grad():
        a = projectors(cache(x, {"view_id": torch.tensor([1, 2])}))
        b = projectors(teacher.stage_features(x))
    for ra, rb in zip(a, b):
        torch.testing.assert_close(ra, rb, rtol=1e-2, atol=1e-2)


def test_float32_storage_is_exact_and_k1_without_augmentation_matches_the_single_view_cache(tmp_path):
    teacher = _teacher()
    _, projectors = _models(teacher)
    data = _data()
    ds = MultiViewDataset(data, None, None, num_views=1, num_workers=0, progress=False)
    new = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path, dtype="float32")
    old = TeacherFeatureCache(teacher, taps=projectors.teacher_taps, dtype=torch.float32)
    batch = {"image": torch.stack([d["image"] for d in data]), "image_id": [d["image_id"] for d in data],
             "view_id": torch.arange(N)}
    projectors.eval()
    with torch.no_grad():
        for _ in range(2):  # computed, then served
            a = projectors(new(batch["image"], batch))
            b = projectors(old(batch["image"], batch))
            for ra, rb in zip(a, b):
                torch.testing.assert_close(ra, rb, rtol=1e-5, atol=1e-6)


def _train(cache_kind, tmp_path, epochs=2, num_views=1, random=False, seed=0, shuffle=False, prefill=False, **kwargs):
    teacher = _teacher()
    student, projectors = _models(teacher)
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    data = [_cls_view(d) for d in _data(8)]
    extra = {}
    if cache_kind == "none":
        loader = DataLoader(data, batch_size=4, shuffle=False)
        cls = DRDTrainer
    elif cache_kind == "single":
        loader = DataLoader(data, batch_size=4, shuffle=False)
        cls = CachedDRDTrainer
        extra["feature_cache"] = TeacherFeatureCache(teacher, taps=projectors.teacher_taps, dtype=torch.float32)
    else:
        ds = MultiViewDataset(data, None, _random(keys=("image",)) if random else None, num_views=num_views,
                              num_workers=0, progress=False)
        loader = DataLoader(ds, batch_size=4, sampler=MultiViewSampler(ds.num_samples, num_views, seed=seed, shuffle=shuffle))
        cls = CachedDRDTrainer
        extra["feature_cache"] = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path, dtype=cache_kind)
        if prefill:
            extra["feature_cache"].fill(ds, batch_size=4)
    teacher._seen = 0
    trainer = cls(device="cpu", max_epochs=epochs, train_data_loader=loader, network=student, optimizer=opt,
                  loss_function=DRDLoss(torch.nn.CrossEntropyLoss()), teacher=teacher, projectors=projectors,
                  **extra, **kwargs)
    trainer.state.seen_views = {}

    def record(engine):
        engine.state.seen_views.setdefault(engine.state.epoch, []).extend(
            engine.state.batch["view_id"].tolist() if "view_id" in engine.state.batch else [])

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, record)
    return trainer, teacher


def test_cached_trainer_k1_equals_uncached_and_single_view_cache(tmp_path):
    losses = {}
    for kind in ("none", "single", "float32"):
        trainer, teacher = _train(kind, tmp_path / kind)
        trainer.run()
        losses[kind] = trainer.state.drd_terms["loss"]
        assert teacher._seen == (16 if kind == "none" else 8)
    assert losses["float32"] == pytest.approx(losses["none"], rel=1e-5)
    assert losses["single"] == pytest.approx(losses["none"], rel=1e-5)


def test_teacher_runs_n_times_k_during_fill_and_never_during_training(tmp_path):
    trainer, teacher = _train("float16", tmp_path, epochs=3, num_views=4, random=True, shuffle=True, prefill=False)
    cache = trainer.feature_cache
    teacher._seen = 0
    assert cache.fill(trainer.data_loader.dataset, batch_size=3)["computed"] == 8 * 4
    assert teacher._seen == 8 * 4 and len(cache) == 32
    teacher._seen = 0
    trainer.run()
    assert teacher._seen == 0 and cache.misses == 32 and cache.hits == 3 * 8
    assert all(len(v) == 8 for v in trainer.state.seen_views.values())
    # a second process / run on the same key: nothing to compute
    again = MultiViewFeatureCache(teacher, trainer.projectors, trainer.data_loader.dataset, cache_dir=tmp_path)
    assert again.directory == cache.directory and again.fill(trainer.data_loader.dataset)["computed"] == 0


def test_resumed_run_draws_the_same_views(tmp_path):
    full, _ = _train("float16", tmp_path / "a", epochs=3, num_views=4, random=True, shuffle=True)
    full.run()
    resumed, _ = _train("float16", tmp_path / "b", epochs=3, num_views=4, random=True, shuffle=True)
    resumed.state.epoch, resumed.state.iteration = 1, 2  # as ResumeFromLatestCheckpoint leaves it after epoch 1
    resumed.run()
    assert set(resumed.state.seen_views) == {2, 3}
    for epoch in (2, 3):
        assert resumed.state.seen_views[epoch] == full.state.seen_views[epoch]
    assert full.state.seen_views[1] != full.state.seen_views[2]


def test_multi_sample_crops_get_one_entry_each_and_stay_aligned(tmp_path):
    data = _data(4)
    for d in data:
        d["label"] = (d["image"] > 0.5).float()
    crop = [RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=[16, 16], pos=1, neg=1, num_samples=2)]
    ds = MultiViewDataset(data, None, crop, num_views=2, num_workers=0, progress=False)
    assert (ds.items_per_view, ds.num_entries, len(ds)) == (2, 16, 8)
    items = ds[3]
    assert [it["view_id"] for it in items] == [6, 7] and all(it["sample_index"] == 1 for it in items)
    for it in items:
        assert torch.equal(it["label"], (it["image"] > 0.5).float())  # crop of image and label at the same place
    teacher = _teacher(spatial_size=None)
    torch.manual_seed(1)
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 16, 16])
    cache = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path)
    teacher._seen = 0
    assert cache.fill(ds, batch_size=3)["computed"] == 16 and teacher._seen == 16
    vids = torch.tensor([it["view_id"] for it in items])
    served = cache(torch.stack([it["image"] for it in items]), {"view_id": vids})
    direct = teacher.stage_features(torch.stack([it["image"] for it in items]))
    for s, d in zip(served, direct):
        torch.testing.assert_close(s, d, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------ key, corruption
def test_key_changes_select_a_new_folder_and_nothing_is_reused(tmp_path):
    teacher = _teacher()
    _, projectors = _models(teacher)
    base = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    base.fill(_dataset(), batch_size=6)
    same = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    assert same.directory == base.directory and len(same) == N * K
    other_teacher = _teacher(seed=5)
    _, other_proj = _models(other_teacher)
    variants = {
        "teacher weights": MultiViewFeatureCache(other_teacher, other_proj, _dataset(), cache_dir=tmp_path),
        "K": MultiViewFeatureCache(teacher, projectors, _dataset(num_views=K + 1), cache_dir=tmp_path),
        "view_seed": MultiViewFeatureCache(teacher, projectors, _dataset(view_seed=1), cache_dir=tmp_path),
        "random transforms": MultiViewFeatureCache(teacher, projectors, _dataset(prob=0.4), cache_dir=tmp_path),
        "sample order": MultiViewFeatureCache(teacher, projectors, _dataset(data=list(reversed(_data()))), cache_dir=tmp_path),
        "dtype": MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path, dtype="float32"),
        "teacher preprocessing": MultiViewFeatureCache(_teacher(spatial_size=48), projectors, _dataset(), cache_dir=tmp_path),
    }
    dirs = {base.directory} | {c.directory for c in variants.values()}
    assert len(dirs) == len(variants) + 1, "a changed key reused a folder"
    for name, cache in variants.items():
        assert len(cache) == 0, name
    # the run's seed is not part of the key (only the sampler sees it): runs with different seeds share the cache
    assert same.key == base.key


def _row_offset(path, entry):
    arr = np.load(path, mmap_mode="r")
    return arr.offset + entry * arr[0].nbytes, arr[0].nbytes


def test_corrupt_entry_is_recomputed_never_returned(tmp_path, caplog):
    teacher = _teacher()
    _, projectors = _models(teacher)
    ds = _dataset()
    MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path).fill(ds, batch_size=6)
    cache = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    view = ds[4]
    good = [f.clone() for f in cache(view["image"][None], {"view_id": torch.tensor([4])}) if f is not None]
    offset, nbytes = _row_offset(cache.directory / "tap1.npy", 4)
    with open(cache.directory / "tap1.npy", "r+b") as f:  # garbage in one entry's features
        f.seek(offset)
        f.write(np.full(nbytes // 2, 1000.0, dtype=np.float16).tobytes())
    reader = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    teacher._seen = 0
    with caplog.at_level(logging.WARNING):
        out = [f for f in reader(view["image"][None], {"view_id": torch.tensor([4])}) if f is not None]
    assert "CRC-32" in caplog.text and reader.corrupt == 1 and teacher._seen == 1
    for a, b in zip(out, good):  # the teacher's values (recomputed in another batch: fp16 rounding may differ)
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
    assert out[1].abs().max() < 100
    teacher._seen = 0
    again = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    again(view["image"][None], {"view_id": torch.tensor([4])})
    assert teacher._seen == 0 and again.corrupt == 0  # the recomputed entry was written back
    # a corrupt checksum is caught the same way
    crc = np.load(again.directory / "crc32.npy", mmap_mode="r+")
    crc[4] ^= 1
    crc.flush()
    del crc
    last = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    last(view["image"][None], {"view_id": torch.tensor([4])})
    assert last.corrupt == 1 and teacher._seen == 1


@pytest.mark.parametrize("damage", ["truncated array", "meta does not parse", "meta of another key", "missing array"])
def test_damaged_store_is_rebuilt(tmp_path, caplog, damage):
    teacher = _teacher()
    _, projectors = _models(teacher)
    ds = _dataset()
    filled = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path)
    filled.fill(ds, batch_size=6)
    view = ds[5]
    good = [f.clone() for f in filled(view["image"][None], {"view_id": torch.tensor([5])}) if f is not None]
    folder = filled.directory
    if damage == "truncated array":
        path = folder / "tap2.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "meta does not parse":
        (folder / "meta.json").write_text('{"key": ')
    elif damage == "meta of another key":
        meta = json.loads((folder / "meta.json").read_text())
        meta["key"]["num_entries"] += 1
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        (folder / "filled.npy").unlink()
    with caplog.at_level(logging.WARNING):
        cache = MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)
    assert cache.rebuilds == 1 and "rebuilding" in caplog.text and len(cache) == 0
    teacher._seen = 0
    out = [f for f in cache(view["image"][None], {"view_id": torch.tensor([5])}) if f is not None]
    assert teacher._seen == 1
    for a, b in zip(out, good):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
    assert len(MultiViewFeatureCache(teacher, projectors, _dataset(), cache_dir=tmp_path)) == 1


def test_changed_input_for_a_stored_view_is_recomputed(tmp_path, caplog):
    teacher = _teacher()
    _, projectors = _models(teacher)
    ds = _dataset()
    cache = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path)
    view = ds[2]
    cache(view["image"][None], {"view_id": torch.tensor([2])})
    flipped = torch.flip(view["image"], dims=[1])[None]  # same intensity statistics, other geometry
    with caplog.at_level(logging.WARNING):
        out = cache(flipped, {"view_id": torch.tensor([2])})
    assert cache.stale == 1 and "differs" in caplog.text
    direct = _prepare_feature(cache.plans[3], teacher.stage_features(flipped)[3])
    torch.testing.assert_close(out[3], direct, rtol=2e-3, atol=2e-3)
    with pytest.raises(KeyError, match="view_id"):
        cache(flipped, {"image": flipped})


def test_memory_store_and_cap(tmp_path):
    teacher = _teacher()
    _, projectors = _models(teacher)
    ds = _dataset()
    memory = MultiViewFeatureCache(teacher, projectors, ds)  # no cache_dir: RAM only, no limit
    memory.fill(ds, batch_size=6)
    assert len(memory) == N * K and memory.directory is None
    teacher._seen = 0
    memory(ds[3]["image"][None], {"view_id": torch.tensor([3])})
    assert teacher._seen == 0
    entry = memory.bytes_per_entry - 45
    capped = MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path, memory_bytes=3 * entry)
    capped.fill(ds, batch_size=6)
    assert len(capped._memory) == 3 and capped._memory_used <= 3 * entry
    assert len(capped) == N * K  # all on disk


# ------------------------------------------------------------------------------------------ k of N hybrid paths
def test_k_of_n_scaled_loss_is_unbiased_over_all_draws():
    torch.manual_seed(0)
    loss = DRDLoss(torch.nn.CrossEntropyLoss())
    pred, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    hybrids = [torch.randn(4, 3) for _ in range(4)]
    feats = [torch.randn(4, 5) for _ in range(4)]
    full = loss(pred, target, hybrids, feats, feats, alpha=0.7, beta=0.4)
    for k in (1, 2, 3):
        draws = list(itertools.combinations(range(4), k))  # uniform without replacement: every subset equally likely
        terms = [loss(pred, target, [hybrids[j] for j in d], feats, feats, alpha=0.7, beta=0.4,
                      hybrid_scale=DRDLoss.subset_scale(4, k)) for d in draws]
        for key in ("loss", "loss_hybrid", "loss_kl"):
            mean = torch.stack([t[key] for t in terms]).mean()
            torch.testing.assert_close(mean, full[key], rtol=1e-5, atol=1e-6)
        for t in terms:  # CKA and the task term do not depend on the draw
            assert torch.equal(t["loss_cka"], full["loss_cka"]) and torch.equal(t["loss_task"], full["loss_task"])
    with pytest.raises(ValueError):
        DRDLoss.subset_scale(4, 5)


def _drd_trainer(k, epochs=1):
    torch.manual_seed(0)
    teacher = ResNetStandInTeacher(block_inplanes=TINY)
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, SIZE, SIZE])
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    data = [_cls_view(d) for d in _data(8)]
    loader = DataLoader(data, batch_size=4, shuffle=False)
    trainer = DRDTrainer(device="cpu", max_epochs=epochs, train_data_loader=loader, network=student, optimizer=opt,
                         loss_function=DRDLoss(torch.nn.CrossEntropyLoss()), teacher=teacher, projectors=projectors,
                         hybrid_stages_per_step=k, hybrid_seed=3)
    return trainer, student


def test_k_equal_n_is_exactly_full_drd_and_draws_are_reproducible():
    runs = {}
    for k in (None, 4, 8):
        trainer, student = _drd_trainer(k, epochs=2)
        trainer.run()
        runs[k] = (trainer.state.drd_terms, [p.detach().clone() for p in student.parameters()])
    for k in (4, 8):
        assert runs[k][0] == runs[None][0]
        assert all(torch.equal(a, b) for a, b in zip(runs[k][1], runs[None][1]))
    trainer, _ = _drd_trainer(2)
    draws = [trainer.draw_hybrid_stages(it) for it in range(1, 401)]
    assert all(len(d) == 2 and d == sorted(set(d)) for d in draws)
    other, _ = _drd_trainer(2)
    assert draws == [other.draw_hybrid_stages(it) for it in range(1, 401)]  # depends on (seed, iteration) only
    freq = np.bincount([j for d in draws for j in d], minlength=4) / len(draws)
    np.testing.assert_allclose(freq, 0.5, atol=0.08)
    trainer.run()
    assert len(trainer.state.hybrid_stages) == 2 and np.isfinite(trainer.state.drd_terms["loss"])
    with pytest.raises(ValueError):
        _drd_trainer(0)


def test_k_of_n_iteration_uses_the_drawn_stages_and_the_scale(monkeypatch):
    trainer, _ = _drd_trainer(1)
    seen = {}
    original = DRDLoss.forward

    def spy(self, *args, **kwargs):
        seen.update(n_hybrids=len(kwargs["hybrid_outputs"]), scale=kwargs["hybrid_scale"],
                    n_cka=len(kwargs["reprogrammed_features"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DRDLoss, "forward", spy)
    trainer.run()
    assert seen == {"n_hybrids": 1, "scale": 4.0, "n_cka": 4}
    assert trainer.state.hybrid_stages == [trainer.projectors.student_stages[j] for j in trainer.draw_hybrid_stages(2)]


# ------------------------------------------------------------------------------------------ the bundle overlay
@pytest.mark.parametrize("bundle", ["busi_ultrasound_classification", "fives_fundus_vessel_segmentation"])
def test_overlay_fills_with_the_tool_then_trains_without_the_teacher(tmp_path, bundle):
    """train_drd_cache.json on a 2D classification and a 2D segmentation bundle: the fill tool computes
    every view once; one training epoch (another parser, same key) then never runs the teacher."""
    from tests.bundle_utils import BUNDLES, write_standin_teacher
    from tests.test_bundles import TINY_TEACHER, run_workflow, tiny_overrides, write_dataset
    from tools.bundle_specs import BY_NAME
    from tools.fill_teacher_cache import fill

    spec = BY_NAME[bundle]
    root = BUNDLES / bundle
    train_ids = json.loads((root / "configs" / "train.json").read_text())
    data = write_dataset(spec, tmp_path / "data")
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=2, in_channels=spec.in_channels, block_inplanes=(8, 8, 16, 16))
    common = dict(tiny_overrides(spec, train_ids), **TINY_TEACHER, dataset_dir=str(data), output_dir=str(tmp_path / "out"),
                  teacher_checkpoint=str(teacher), teacher_cache_views=2, teacher_cache_dir=str(tmp_path / "cache"))
    configs = ["train.json", "teacher_standin.json", "train_drd_cache.json"]
    stats = fill([str(root / "configs" / c) for c in configs], bundle_root=str(root), **common)
    n_train = len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"])
    assert stats["computed"] == stats["entries"] == stats["stored"] == 2 * n_train
    assert stats["disk_bytes"] > 0 and stats["bytes_per_entry"] > 0

    wf = run_workflow(bundle, configs, **common, num_epochs=1, val_interval=1)
    trainer = wf.parser.get_parsed_content("train#trainer")
    cache = wf.parser.get_parsed_content("teacher_feature_cache")
    assert isinstance(trainer, CachedDRDTrainer) and trainer.feature_cache is cache
    assert str(cache.directory) == stats["directory"]
    assert cache.misses == 0 and cache.hits > 0  # the teacher never ran during training
    terms = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    for key in ("loss", "loss_task", "loss_hybrid", "loss_kl", "loss_cka"):
        assert torch.isfinite(torch.as_tensor(terms[key])).all(), key
    ds = wf.parser.get_parsed_content("train#dataset")
    assert isinstance(ds, MultiViewDataset) and ds.num_views == 2
    if spec.task == "segmentation":  # image, label and mask of a view come from one transform
        view = ds[1]
        assert view["image"].shape[1:] == view["label"].shape[1:] == view["mask"].shape[1:]


# ------------------------------------------------------------------------------------------ tools
def test_sizes_table_matches_a_real_cache_of_the_bundle():
    """tools/benchmark_cache.py sizes: shapes from a meta-device dry run equal a real cache's entries."""
    from monai.bundle import ConfigParser

    from tests.bundle_utils import BUNDLES
    from tools.benchmark_cache import entry_sizes, sizes

    rows = sizes(views=8, bundles="retina_fundus_classification,vessel_mra_classification")
    assert len(rows) == 3 and all("error" not in r for r in rows)  # + VesselMNIST3D at student 32^3 / teacher 64^3
    vessel, vessel_small = rows[1], rows[2]
    assert vessel["stored_shapes"][0] == (256, 16, 16, 16) and vessel["teacher_spatial_size"] == [96, 96, 96]
    assert vessel_small["stored_shapes"][0] == (256, 8, 8, 8) and vessel["sample_bytes"] == 8 * vessel["entry_bytes"]
    expected = entry_sizes("retina_fundus_classification")
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "retina_fundus_classification" / "configs" / "train.json"))
    parser["teacher_checkpoint"] = None
    parser.parse(reset=True)
    teacher, projectors = parser.get_parsed_content("teacher"), parser.get_parsed_content("projectors")
    cache = MultiViewFeatureCache(teacher, projectors, num_entries=1)
    cache(torch.rand(1, 3, 64, 64), {"view_id": torch.tensor([0])})
    assert cache.stored_shapes == expected["stored_shapes"] and cache.bytes_per_entry == expected["entry_bytes"]


def test_benchmark_tool_runs_every_variant_on_tiny_data(tmp_path):
    from drd_components.data.synthetic import write_synthetic_busi
    from tests.bundle_utils import write_standin_teacher
    from tools.benchmark_cache import VARIANTS, run

    data = write_synthetic_busi(tmp_path / "busi", n_per_class=3, size=32, seed=1)
    teacher = write_standin_teacher(tmp_path / "teacher.pt", block_inplanes=(8, 8, 16, 16))
    report = run("busi_ultrasound_classification", str(data), teacher_overlay="teacher_standin.json", epochs=1,
                 workdir=str(tmp_path / "work"), output=str(tmp_path / "report.json"), variants=list(VARIANTS),
                 overrides={"num_workers": 0, "image_size": [32, 32], "batch_size": 4, "teacher_checkpoint": str(teacher),
                            "teacher_def#block_inplanes": [8, 8, 16, 16]})
    results = report["variants"]
    assert set(results) == set(VARIANTS) and json.loads((tmp_path / "report.json").read_text())["bundle"]
    for name, r in results.items():
        assert r["steady_epoch_s"] > 0 and r["peak_rss_bytes"] > 0 and np.isfinite(report["ratios"][name])
    for name in ("cache_k4", "cache_k8", "cache_k8_hybrid1"):
        r = results[name]
        assert r["cache_disk_bytes"] > 0 and r["cache_misses"] == r.get("fill_computed", 0)
    assert results["cache_k8"]["cache_entries"] == 2 * results["cache_k4"]["cache_entries"]
    # the k=1 variant has the same key as K=8: it finds the cache filled and never runs the teacher
    assert results["cache_k8_hybrid1"]["cache_dir"] == results["cache_k8"]["cache_dir"]
    assert results["cache_k8_hybrid1"]["fill_computed"] == 0 and results["cache_k8_hybrid1"]["cache_misses"] == 0
    assert results["cache_k4"]["cache_entries"] == 4 * results["cache_k1"]["cache_entries"]
    assert results["cache_k1_hybrid1"]["cache_dir"] == results["cache_k1"]["cache_dir"]
    assert results["cache_k1_hybrid1"]["cache_misses"] == 0


def test_medmnist_runs_in_different_output_folders_share_one_cache(tmp_path):
    """The MedMNIST datalist identifies samples by source MD5 + split + index, not by the PNG paths
    each run writes under its own output_dir: a second run with another folder finds every feature."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    from drd_components.data.medmnist import medmnist_datalist
    from tests.fake_datasets import write_fake_retinamnist

    src = write_fake_retinamnist(tmp_path / "src")
    teacher = CountingTeacher(spatial_size=32, in_channels=3)
    torch.manual_seed(1)
    student = StagedResNet18(2, 3, 5, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 3, 28, 28])
    load = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image", channel_dim=-1), ScaleIntensityd("image")]

    def cache_for(run: str) -> tuple[MultiViewFeatureCache, MultiViewDataset]:
        data = medmnist_datalist(src, tmp_path / run / "datalist.json", verify_md5=False)["training"]
        ds = MultiViewDataset(data, load, [RandFlipd("image", prob=0.5, spatial_axis=0)], num_views=2,
                              num_workers=0, progress=False)
        return MultiViewFeatureCache(teacher, projectors, ds, cache_dir=tmp_path / "shared_cache"), ds

    first, ds1 = cache_for("run_a")
    assert first.fill(ds1, batch_size=4)["computed"] == 10 * 2
    second, ds2 = cache_for("run_b")
    assert ds2.data[0]["image"] != ds1.data[0]["image"]  # the images really live in another folder
    teacher._seen = 0
    assert second.directory == first.directory and second.fill(ds2, batch_size=4)["computed"] == 0
    assert teacher._seen == 0
    # a different source file (another MD5) is another identity: nothing is reused
    other = write_fake_retinamnist(tmp_path / "other")
    with np.load(other / "retinamnist.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"] = 255 - arrays["train_images"]
    np.savez_compressed(other / "retinamnist.npz", **arrays)
    data = medmnist_datalist(other, tmp_path / "run_c" / "datalist.json", verify_md5=False)["training"]
    ds3 = MultiViewDataset(data, load, [RandFlipd("image", prob=0.5, spatial_axis=0)], num_views=2, num_workers=0,
                           progress=False)
    third = MultiViewFeatureCache(teacher, projectors, ds3, cache_dir=tmp_path / "shared_cache")
    assert third.directory != first.directory
