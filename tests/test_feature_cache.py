"""Teacher-feature cache: exact reuse, invalidation, input guard, and the cached DRD trainer."""

import pytest
import torch
from monai.data import DataLoader

from drd_components.engines import DRDTrainer
from drd_components.engines.feature_cache import (
    CachedDRDTrainer,
    TeacherFeatureCache,
    module_fingerprint,
    transforms_signature,
)
from drd_components.losses import DRDLoss
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher

TINY = (8, 16, 32, 64)


class CountingTeacher(ResNetStandInTeacher):
    """Stand-in teacher that counts the samples it computes features for."""

    def __init__(self, **kwargs):
        super().__init__(block_inplanes=TINY, **kwargs)
        self.samples_seen = 0

    def stage_features(self, x):
        self.samples_seen += x.shape[0]
        return super().stage_features(x)


def _teacher(seed=0):
    torch.manual_seed(seed)
    return CountingTeacher()


def _batch(ids, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(len(ids), 1, size, size, generator=g), "image_id": list(ids)}


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_cached_features_equal_a_fresh_forward_and_are_reused(tmp_path, storage):
    teacher = _teacher()
    cache = TeacherFeatureCache(teacher, storage=storage, cache_dir=tmp_path, dtype=torch.float32)
    batch = _batch(["a", "b", "c"])
    fresh = teacher.stage_features(batch["image"])
    teacher.samples_seen = 0
    first = cache(batch["image"], batch)
    second = cache(batch["image"], batch)
    assert teacher.samples_seen == 3  # the second call was served from the store
    for f, a, b in zip(fresh, first, second):
        assert torch.equal(f, a) and torch.equal(f, b)
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    # a batch mixing cached and new ids computes only the new ones, in the right order
    mixed = {"image": torch.cat([batch["image"][1:2], torch.rand(1, 1, 32, 32)]), "image_id": ["b", "d"]}
    out = cache(mixed["image"], mixed)
    assert teacher.samples_seen == 4
    assert torch.equal(out[0][0], fresh[0][1])
    assert torch.equal(out[0][1], teacher.stage_features(mixed["image"][1:])[0][0])


def test_float16_storage_is_close_to_the_fresh_forward():
    teacher = _teacher()
    cache = TeacherFeatureCache(teacher)
    batch = _batch(["a", "b"])
    fresh = teacher.stage_features(batch["image"])
    cache(batch["image"], batch)
    for f, c in zip(fresh, cache(batch["image"], batch)):
        assert c.dtype == torch.float32
        torch.testing.assert_close(c, f, rtol=2e-3, atol=2e-3)


def test_key_changes_with_taps_weights_and_preprocessing_and_disk_entries_are_not_reused(tmp_path):
    teacher = _teacher()
    batch = _batch(["a", "b"])
    all_taps = TeacherFeatureCache(teacher, storage="disk", cache_dir=tmp_path)
    all_taps(batch["image"], batch)
    last_tap = TeacherFeatureCache(teacher, taps=[3], storage="disk", cache_dir=tmp_path)
    assert last_tap.key != all_taps.key
    assert len(last_tap) == 0
    teacher.samples_seen = 0
    feats = last_tap(batch["image"], batch)
    assert teacher.samples_seen == 2  # recomputed, not read from the all-taps entries
    assert feats[0] is None and feats[3] is not None
    assert TeacherFeatureCache(teacher, storage="disk", cache_dir=tmp_path).key == all_taps.key
    assert TeacherFeatureCache(teacher, preprocessing_signature="resize 64").key != all_taps.key
    other = _teacher(seed=1)
    assert module_fingerprint(other) != module_fingerprint(teacher)
    assert TeacherFeatureCache(other).key != all_taps.key


def test_transforms_signature_sees_parameters():
    from monai.transforms import Compose, Resized, ScaleIntensityd

    a = transforms_signature(Compose([ScaleIntensityd("image"), Resized("image", (64, 64))]))
    b = transforms_signature(Compose([ScaleIntensityd("image"), Resized("image", (32, 32))]))
    assert a != b and "Resized" in a


def test_changed_teacher_input_for_a_cached_id_raises_and_missing_keys_are_named():
    teacher = _teacher()
    cache = TeacherFeatureCache(teacher)
    cache(*(lambda b: (b["image"], b))(_batch(["a"], seed=0)))
    augmented = _batch(["a"], seed=1)
    with pytest.raises(ValueError, match="random augmentation"):
        cache(augmented["image"], augmented)
    with pytest.raises(KeyError, match="image_id"):
        cache(augmented["image"], {"image": augmented["image"]})
    with pytest.raises(KeyError, match="image_teacher"):
        TeacherFeatureCache(teacher, input_key="image_teacher")(augmented["image"], augmented)


def test_input_key_feeds_the_teacher_the_unaugmented_view():
    teacher = _teacher()
    cache = TeacherFeatureCache(teacher, input_key="image_teacher", dtype=torch.float32)
    clean = torch.rand(2, 1, 32, 32)
    for epoch in range(2):
        batch = {"image": torch.rand(2, 1, 32, 32), "image_teacher": clean, "image_id": ["a", "b"]}
        out = cache(batch["image"], batch)  # the student view changes every epoch: no error
    assert torch.equal(out[2], teacher.stage_features(clean)[2])


def _trainer(cls, epochs, **kwargs):
    torch.manual_seed(0)
    teacher = CountingTeacher()
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 32, 32])
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, 32, 32, generator=g), "label": torch.tensor(i % 3), "image_id": f"s{i}"}
            for i in range(8)]
    loader = DataLoader(data, batch_size=4, shuffle=False)
    extra = {}
    if cls is CachedDRDTrainer:
        extra["feature_cache"] = TeacherFeatureCache(teacher, taps=projectors.teacher_taps, dtype=torch.float32)
    trainer = cls(device="cpu", max_epochs=epochs, train_data_loader=loader, network=student, optimizer=opt,
                  loss_function=DRDLoss(torch.nn.CrossEntropyLoss()), teacher=teacher, projectors=projectors,
                  **extra, **kwargs)
    teacher.samples_seen = 0
    return trainer, teacher


def test_cached_drd_trainer_matches_the_uncached_one_and_runs_the_teacher_once_per_sample():
    losses = {}
    for cls in (DRDTrainer, CachedDRDTrainer):
        trainer, teacher = _trainer(cls, epochs=2)
        trainer.run()
        losses[cls] = trainer.state.drd_terms["loss"]
        if cls is CachedDRDTrainer:
            assert teacher.samples_seen == 8  # first epoch only
        else:
            assert teacher.samples_seen == 16
    assert losses[CachedDRDTrainer] == pytest.approx(losses[DRDTrainer], rel=1e-5)
