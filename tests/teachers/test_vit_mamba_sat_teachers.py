"""MedSAM, Medical SAM Adapter, Swin-UMamba and SAT teachers against their official checkpoint layouts.

Each test writes a random-weight checkpoint in the official container and key layout (from the
manifests in ``shared/docs/teacher_manifests``) and checks strict loading, error reporting, the
refusal of foreign pickles, the tapped feature shapes, freezing and a forward pass on small inputs.

Scale-downs, to keep the file fast on 2 CPU cores:

- inputs are small (64-128 px 2D, ``64 x 32 x 32`` 3D) instead of the models' default sizes; the
  documented default shapes are checked against the same stride formulas;
- optimizer states in the nnU-Net and SAT containers carry AdamW moments for a few tensors only
  (the real files hold them for every parameter); the teachers never read them, but the
  containers' numpy float64 learning rates and logs are real, so the numpy allow-list is exercised;
- the SAT-Pro file holds only the 144 ``module.backbone.encoder.*`` names (72 tensors, 265 M
  parameters) plus a few other keys of the official layout and one unknown head key, not the whole
  894 M-name model; SAT-Nano is written in full (all 292 names, aliases tied).
"""

from __future__ import annotations

import collections
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from drd_components.teachers.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    numpy_scalar_safe_globals,
    sha256sum,
)
from drd_components.teachers.medical_sam_adapter import MedicalSAMAdapterTeacher
from drd_components.teachers.preprocessing import SampleIntensityNorm
from drd_components.teachers.sam_vit import MedSAMTeacher
from drd_components.teachers.sat import SAT_VARIANTS, SATTeacher, check_aliases
from drd_components.teachers.swin_umamba import SwinUMambaTeacher, selective_scan, selective_scan_reference
from tests.teachers.manifest_checkpoint import load_manifest, manifest_state_dict

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

_EXECUTED: list[str] = []


def _record(tag: str) -> str:
    _EXECUTED.append(tag)
    return tag


class _Payload:
    """A pickled object that would run code (``_record``) if it were ever unpickled."""

    def __reduce__(self):
        return (_record, ("payload executed",))


def _adamw_state(state: dict, lr: float, n_moments: int = 2) -> dict:
    """An AdamW ``state_dict()`` with numpy float64 learning rates and moments for a few tensors."""
    params = list(range(len(state)))
    small = sorted(params, key=lambda i: list(state.values())[i].numel())[:n_moments]
    values = list(state.values())
    return {
        "state": {
            i: {
                "step": torch.tensor(1000.0),
                "exp_avg": torch.zeros_like(values[i]),
                "exp_avg_sq": torch.zeros_like(values[i]),
            }
            for i in small
        },
        "param_groups": [
            {
                "lr": np.float64(lr),
                "initial_lr": np.float64(lr * 10),
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.05,
                "amsgrad": False,
                "foreach": None,
                "maximize": False,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "params": params,
            }
        ],
    }


def _nnunet_container(weights: dict) -> dict:
    """nnU-Net v2 ``save_checkpoint`` dict (numpy float64 logs, AdamW, grad scaler, init args)."""
    epochs = 3
    return {
        "network_weights": weights,
        "optimizer_state": _adamw_state(weights, 1e-4),
        "grad_scaler_state": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 7,
        },
        "logging": {
            "mean_fg_dice": [np.float64(0.5 + 0.1 * i) for i in range(epochs)],
            "ema_fg_dice": [np.float64(0.45 + 0.1 * i) for i in range(epochs)],
            "dice_per_class_or_region": [[np.float64(0.6)] * 13 for _ in range(epochs)],
            "train_losses": [np.float64(-0.5 - 0.1 * i) for i in range(epochs)],
            "val_losses": [np.float64(-0.4 - 0.1 * i) for i in range(epochs)],
            "lrs": [1e-4, 9.9e-5, 9.8e-5],
            "epoch_start_timestamps": [1.7e9 + i for i in range(epochs)],
            "epoch_end_timestamps": [1.7e9 + i + 0.5 for i in range(epochs)],
        },
        "_best_ema": np.float64(0.65),
        "current_epoch": 100,
        "init_args": {
            "plans": {
                "dataset_name": "Dataset702_AbdomenMR",
                "plans_name": "nnUNetPlans",
                "configurations": {"2d": {"batch_size": 30}},
            },
            "configuration": "2d",
            "fold": "all",
            "dataset_json": {
                "channel_names": {"0": "MR"},
                "labels": {"background": 0, "liver": 1},
                "file_ending": ".nii.gz",
            },
            "unpack_dataset": True,
            "device": torch.device("cuda"),
        },
        "trainer_name": "nnUNetTrainerSwinUMamba",
        "inference_allowed_mirroring_axes": (0, 1),
    }


def _sat_container(model_state: dict) -> dict:
    """SAT ``train/trainer.py`` dict: step, DDP model state dict, AdamW state with numpy float64 lr."""
    return {"step": 123456, "model_state_dict": model_state, "optimizer_state_dict": _adamw_state(model_state, 1e-5)}


def _to_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch zip file so numpy scalars pickle as ``numpy.core.multiarray.scalar`` (numpy 1.x)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(info, data)
    tmp.replace(path)


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _renamed(state: dict, key: str, new_key: str) -> dict:
    return collections.OrderedDict((new_key if k == key else k, v) for k, v in state.items())


def _without(state: dict, key: str) -> dict:
    return collections.OrderedDict((k, v) for k, v in state.items() if k != key)


def _assert_frozen(teacher) -> None:
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())


def _vit_shapes(b: int, size: int) -> list[tuple[int, ...]]:
    g = size // 16
    return [(b, 768, g, g)] * 4 + [(b, 256, g, g)]


def _swin_shapes(b: int, h: int, w: int) -> list[tuple[int, ...]]:
    return [(b, 96 * 2**i, h // (4 * 2**i), w // (4 * 2**i)) for i in range(4)]


def _sat_shapes(b: int, variant: str, size, taps=(2, 3, 4, 5)) -> list[tuple[int, ...]]:
    feats = SAT_VARIANTS[variant]["features"]
    return [(b, feats[t], *(s // 2**t for s in size)) for t in taps]


def _shape_doc(shape) -> str:
    return " x ".join(["B", *map(str, shape[1:])])


# ------------------------------------------------------------------------------------------------
# foreign pickles and documented shapes (all four teachers)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,container",
    [
        (lambda p: MedSAMTeacher(p, spatial_size=64), None),
        (lambda p: MedicalSAMAdapterTeacher(p, spatial_size=64, sam_checkpoint=p), None),
        (lambda p: SwinUMambaTeacher(p, spatial_size=64), "network_weights"),
        (lambda p: SATTeacher(p, spatial_size=(64, 32, 32)), "model_state_dict"),
    ],
    ids=["medsam", "msa", "swin_umamba", "sat"],
)
def test_foreign_pickled_object_is_refused(tmp_path, build, container):
    weights = {"image_encoder.pos_embed": torch.zeros(1)}
    obj = {container: weights, "extra": _Payload()} if container else {**weights, "extra": _Payload()}
    path = _save(obj, tmp_path / "evil.pth")
    _EXECUTED.clear()
    with pytest.raises(CheckpointError, match="weights_only"):
        build(path)
    assert _EXECUTED == []


@pytest.mark.parametrize(
    "build",
    [
        lambda p, h: MedSAMTeacher(p, sha256=h, spatial_size=64),
        lambda p, h: MedicalSAMAdapterTeacher(p, sha256=h, spatial_size=64, sam_checkpoint=p, sam_sha256=h),
        lambda p, h: SwinUMambaTeacher(p, sha256=h, spatial_size=64),
        lambda p, h: SATTeacher(p, sha256=h, spatial_size=(64, 32, 32)),
    ],
    ids=["medsam", "msa", "swin_umamba", "sat"],
)
def test_checksum_mismatch_is_refused(tmp_path, build):
    path = _save({"w": torch.zeros(1)}, tmp_path / "file.pth")
    with pytest.raises(CheckpointError, match="checksum"):
        build(path, "0" * 64)


def test_numpy_allow_list_is_minimal(tmp_path):
    """numpy scalars load with the allow-list; numpy arrays (another global) stay refused."""
    ok = _save({"network_weights": {"w": torch.zeros(1)}, "logging": {"x": [np.float64(1.5)]}}, tmp_path / "ok.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint_file(ok)  # plain weights_only refuses numpy scalars
    assert load_checkpoint_file(ok, allowed_globals=numpy_scalar_safe_globals())["logging"]["x"] == [1.5]
    bad = _save({"network_weights": {"w": torch.zeros(1)}, "logging": {"x": np.zeros(3)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint_file(bad, allowed_globals=numpy_scalar_safe_globals())


def test_documented_default_shapes():
    for cls in (MedSAMTeacher, MedicalSAMAdapterTeacher):
        for shape in _vit_shapes(1, 1024):
            assert f"``{_shape_doc(shape)}``" in cls.__doc__
    for shape in _swin_shapes(1, 256, 256):
        assert f"``{_shape_doc(shape)}``" in SwinUMambaTeacher.__doc__
    for variant in ("nano", "pro"):
        for (_, c, *grid), t in zip(_sat_shapes(1, variant, (288, 288, 96), range(6)), range(6)):
            row = next(line for line in SATTeacher.__doc__.splitlines() if line.strip().startswith(f"E{t} "))
            assert str(c) in row.split() and " x ".join(map(str, grid)) in row
    assert SATTeacher.tap_names == ("E2", "E3", "E4", "E5") and SATTeacher.spatial_dims == 3
    assert SwinUMambaTeacher.tap_names == ("S1", "S2", "S3", "S4") and SwinUMambaTeacher.spatial_dims == 2
    assert (
        MedSAMTeacher.tap_names
        == MedicalSAMAdapterTeacher.tap_names
        == ("block2", "block5", "block8", "block11", "neck")
    )


def test_sample_intensity_norm():
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 100.0]]])
    z = SampleIntensityNorm("zscore")(x)
    assert torch.allclose(z.mean(), torch.tensor(0.0), atol=1e-6) and torch.allclose(
        z.std(unbiased=False), torch.tensor(1.0)
    )
    m = SampleIntensityNorm("minmax")(x)
    assert m.min() == 0 and m.max() == 1
    c = SampleIntensityNorm("none", percentiles=(0.0, 75.0), nonzero=True)(x)
    # non-zero values 1, 2, 3, 100: 75th percentile = 3 + 0.25 * 97; the zero stays zero
    assert c[0, 0, 0] == 0 and torch.isclose(c[0, 0, 4], torch.tensor(3 + 0.25 * 97))
    ref = np.percentile(np.arange(1000.0), 99.5)
    assert torch.isclose(
        SampleIntensityNorm("none", percentiles=(0.5, 99.5))(torch.arange(1000.0)[None, None]).max(),
        torch.tensor(ref, dtype=torch.float32),
    )


# ------------------------------------------------------------------------------------------------
# MedSAM
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_layout_file(tmp_path_factory):
    """A flat ``Sam`` ViT-B state dict: the layout of ``medsam_vit_b.pth`` and ``sam_vit_b_01ec64.pth``."""
    state = manifest_state_dict(load_manifest("medsam"))
    folder = tmp_path_factory.mktemp("sam_vit_b")
    return state, folder, _save(state, folder / "medsam_vit_b.pth")


@pytest.fixture(scope="class")
def medsam(sam_layout_file):
    state, folder, path = sam_layout_file
    teacher = MedSAMTeacher(path, sha256=sha256sum(path), spatial_size=64)
    return state, folder, path, teacher


class TestMedSAM:
    def test_loads_strictly_and_weights_equal_file(self, medsam):
        state, _, _, teacher = medsam
        own = teacher.image_encoder.state_dict()
        assert len(own) == 177 == sum(k.startswith("image_encoder.") for k in state)
        for k, v in own.items():
            assert torch.equal(v, state["image_encoder." + k]), k

    @pytest.mark.parametrize("edit", ["renamed", "missing"])
    def test_bad_key_names_the_key(self, medsam, edit):
        state, folder, _, _ = medsam
        key = "image_encoder.blocks.3.attn.qkv.weight" if edit == "renamed" else "image_encoder.neck.1.bias"
        bad = _renamed(state, key, key + "_old") if edit == "renamed" else _without(state, key)
        path = folder / f"{edit}.pth"
        _save(bad, path)
        try:
            with pytest.raises(CheckpointError, match=re.escape(key)):
                MedSAMTeacher(str(path), spatial_size=64)
        finally:
            path.unlink()

    def test_features_frozen_and_preprocessing(self, medsam):
        teacher = medsam[3]
        _assert_frozen(teacher)
        raw = torch.rand(1, 1, 50, 70) * 1000 - 500  # grey, arbitrary range
        pre = teacher.preprocessing(raw)
        assert pre.shape == (1, 3, 64, 64) and pre.min() >= 0 and pre.max() <= 1
        feats = teacher.stage_features(raw)
        assert [tuple(f.shape) for f in feats] == _vit_shapes(1, 64)
        assert all(torch.isfinite(f).all() and not f.requires_grad for f in feats)

    def test_ct_window_and_bad_size(self):
        teacher = MedSAMTeacher(spatial_size=32, window=(-160, 240))
        pre = teacher.preprocessing(torch.tensor([-1000.0, 0.0, 40.0, 3000.0]).view(1, 1, 2, 2))
        assert pre.shape == (1, 3, 32, 32) and pre.min() == 0 and pre.max() == 1
        with pytest.raises(ValueError):
            MedSAMTeacher(spatial_size=100)


# ------------------------------------------------------------------------------------------------
# Medical SAM Adapter
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def msa(sam_layout_file, tmp_path_factory):
    base_state, _, base = sam_layout_file  # same layout as sam_vit_b_01ec64.pth
    zoo_state = manifest_state_dict(load_manifest("msa"), seed=2)
    folder = tmp_path_factory.mktemp("msa")
    zoo = _save(zoo_state, folder / "Melanoma_Photo_SAM_1024.pth")
    teacher = MedicalSAMAdapterTeacher(
        zoo, sha256=sha256sum(zoo), sam_sha256=None, spatial_size=64, sam_checkpoint=base
    )
    return base_state, zoo_state, folder, base, zoo, teacher


class TestMedicalSAMAdapter:
    def test_loads_strictly_and_weights_equal_files(self, msa):
        base_state, zoo_state, _, _, _, teacher = msa
        own = teacher.image_encoder.state_dict()
        adapters = {k for k in own if "_Adapter." in k}
        assert len(adapters) == 144 == len(zoo_state)
        for k, v in own.items():
            src = zoo_state if k in adapters else base_state
            assert torch.equal(v, src["image_encoder." + k]), k
        assert not any("rel_pos" in k for k in own)  # rel_pos="zero": MSA runs without rel-pos bias

    def test_sam_rel_pos_and_wrapped_unprefixed_zoo_file(self, msa):
        base_state, zoo_state, folder, base, _, _ = msa
        wrapped = {"state_dict": collections.OrderedDict((k[len("image_encoder.") :], v) for k, v in zoo_state.items())}
        path = _save(wrapped, folder / "wrapped.pth")
        teacher = MedicalSAMAdapterTeacher(path, spatial_size=64, sam_checkpoint=base, rel_pos="sam")
        own = teacher.image_encoder.state_dict()
        assert torch.equal(own["blocks.2.attn.rel_pos_h"], base_state["image_encoder.blocks.2.attn.rel_pos_h"])
        assert torch.equal(
            own["blocks.0.MLP_Adapter.D_fc1.weight"], zoo_state["image_encoder.blocks.0.MLP_Adapter.D_fc1.weight"]
        )

    @pytest.mark.parametrize("edit", ["renamed", "missing"])
    def test_bad_adapter_key_names_the_key(self, msa, edit):
        _, zoo_state, folder, base, _, _ = msa
        key = (
            "image_encoder.blocks.0.MLP_Adapter.D_fc1.weight"
            if edit == "renamed"
            else "image_encoder.blocks.11.Depth_Adapter.D_fc2.bias"
        )
        bad = (
            _renamed(zoo_state, key, key.replace("MLP_Adapter", "Mlp_Adapter"))
            if edit == "renamed"
            else _without(zoo_state, key)
        )
        path = _save(bad, folder / f"{edit}.pth")
        with pytest.raises(CheckpointError, match=re.escape(key)):
            MedicalSAMAdapterTeacher(path, spatial_size=64, sam_checkpoint=base)

    def test_adapters_need_the_base(self, msa):
        with pytest.raises(ValueError, match="sam_checkpoint"):
            MedicalSAMAdapterTeacher(msa[4], spatial_size=64)

    def test_features_frozen_and_preprocessing(self, msa):
        teacher = msa[5]
        _assert_frozen(teacher)
        feats = teacher.stage_features(torch.rand(1, 1, 80, 48))
        assert [tuple(f.shape) for f in feats] == _vit_shapes(1, 64)
        assert all(torch.isfinite(f).all() for f in feats)
        sam_scaled = MedicalSAMAdapterTeacher(spatial_size=32, input_scaling="sam")
        pre = sam_scaled.preprocessing(torch.ones(1, 3, 16, 16))
        assert torch.allclose(
            pre[0, :, 0, 0], torch.tensor([(255 - 123.675) / 58.395, (255 - 116.28) / 57.12, (255 - 103.53) / 57.375])
        )


# ------------------------------------------------------------------------------------------------
# Swin-UMamba
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def swin(tmp_path_factory):
    state = manifest_state_dict(load_manifest("swin_umamba"))
    folder = tmp_path_factory.mktemp("swin_umamba")
    path = folder / "checkpoint_final.pth"
    _save(_nnunet_container(state), path)
    _to_numpy1_pickle(path)  # the released files were written with numpy 1.x
    teacher = SwinUMambaTeacher(str(path), spatial_size=64)
    return state, folder, str(path), teacher


class TestSwinUMamba:
    def test_loads_strictly_and_weights_equal_file(self, swin):
        state, _, path, teacher = swin
        with zipfile.ZipFile(path) as z:  # the file really uses numpy-1.x global names
            pkl = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
        assert b"numpy.core.multiarray\nscalar" in pkl and b"numpy._core" not in pkl
        own = teacher.state_dict()
        assert len(own) == 212
        for k, v in own.items():
            assert torch.equal(v, state[k]), k

    def test_numpy2_written_file_loads(self, swin):
        state, folder, _, _ = swin
        small = collections.OrderedDict((k, v) for k, v in state.items() if k.startswith(("stem.", "vssm_encoder.")))
        path = _save(_nnunet_container(small), folder / "numpy2.pth")
        teacher = SwinUMambaTeacher(path, spatial_size=64)
        assert torch.equal(teacher.stem[0].weight, state["stem.0.weight"])

    @pytest.mark.parametrize("edit", ["renamed", "missing"])
    def test_bad_key_names_the_key(self, swin, edit):
        state, folder, _, _ = swin
        key = "vssm_encoder.layers.2.blocks.4.self_attention.A_logs" if edit == "renamed" else "stem.1.bias"
        bad = _renamed(state, key, key.replace("A_logs", "A_log")) if edit == "renamed" else _without(state, key)
        path = folder / f"{edit}.pth"
        _save(_nnunet_container(bad), path)
        try:
            with pytest.raises(CheckpointError, match=re.escape(key)):
                SwinUMambaTeacher(str(path), spatial_size=64)
        finally:
            path.unlink()

    def test_wrong_in_channels_is_a_shape_mismatch(self, swin):
        with pytest.raises(CheckpointError, match=re.escape("stem.0.weight")):
            SwinUMambaTeacher(swin[2], spatial_size=64, in_channels=3)

    def test_features_frozen_and_preprocessing(self, swin):
        teacher = swin[3]
        _assert_frozen(teacher)
        raw = torch.rand(2, 1, 70, 50) * 800 + 100
        pre = teacher.preprocessing(raw)
        assert pre.shape == (2, 1, 64, 64)
        assert torch.allclose(pre.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
        feats = teacher.stage_features(raw[:1])
        assert [tuple(f.shape) for f in feats] == _swin_shapes(1, 64, 64)
        assert all(torch.isfinite(f).all() for f in feats)

    def test_naive_scan_block_agrees(self, swin):
        """A loaded VSS block gives the same output with the chunked and the per-step scan."""
        ss2d = swin[3].vssm_encoder.layers[0].blocks[1].self_attention
        x = torch.randn(1, 12, 10, 96)  # L = 120 tokens
        with torch.inference_mode():
            chunked = ss2d(x)
            ss2d.scan = "naive"
            try:
                naive = ss2d(x)
            finally:
                ss2d.scan = "chunked"
        torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("length,chunk", [(1, None), (37, None), (37, 1), (37, 5), (64, 8), (50, 64)])
def test_selective_scan_matches_naive_loop(length, chunk):
    gen = torch.Generator().manual_seed(length)
    b, groups, per_group, n = 2, 4, 6, 16
    d = groups * per_group
    u = torch.randn(b, d, length, generator=gen)
    delta = torch.randn(b, d, length, generator=gen)
    A = -torch.exp(torch.randn(d, n, generator=gen))
    B = torch.randn(b, groups, n, length, generator=gen)
    C = torch.randn(b, groups, n, length, generator=gen)
    D = torch.randn(d, generator=gen)
    bias = torch.randn(d, generator=gen)
    ref = selective_scan_reference(u, delta, A, B, C, D, bias, delta_softplus=True)
    out = selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True, chunk_size=chunk)
    assert out.shape == (b, d, length) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    # ungrouped B/C (b x n x l), no bias/softplus/D
    out2 = selective_scan(u, delta.abs(), A, B[:, 0], C[:, 0], chunk_size=chunk, delta_softplus=False)
    ref2 = selective_scan_reference(u, delta.abs(), A, B[:, 0], C[:, 0], delta_softplus=False)
    torch.testing.assert_close(out2, ref2, atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# SAT
# ------------------------------------------------------------------------------------------------

SAT_INPUT = (64, 32, 32)  # smallest input whose bottleneck (E5) has more than one voxel


@pytest.fixture(scope="class")
def sat_nano(tmp_path_factory):
    state = manifest_state_dict(load_manifest("sat_nano"))  # all 292 names, aliases tied
    folder = tmp_path_factory.mktemp("sat_nano")
    path = _save(_sat_container(state), folder / "nano.pth")
    teacher = SATTeacher(path, spatial_size=SAT_INPUT, variant="nano")
    return state, folder, path, teacher


class TestSATNano:
    def test_loads_strictly_and_weights_equal_file(self, sat_nano):
        state, _, _, teacher = sat_nano
        own = teacher.encoder.state_dict()
        assert len(own) == 96 == sum(k.startswith("module.backbone.encoder.") for k in state)
        for k, v in own.items():
            assert torch.equal(v, state["module.backbone.encoder." + k]), k
        assert len({p.data_ptr() for p in teacher.parameters()}) == 48  # aliases share storage

    @pytest.mark.parametrize("edit", ["renamed", "missing"])
    def test_bad_key_names_the_key(self, sat_nano, edit):
        state, folder, _, _ = sat_nano
        if edit == "renamed":
            key = "module.backbone.encoder.stages.3.0.convs.1.conv.weight"
            bad = _renamed(state, key, key.replace("convs.1", "convs.9"))
        else:
            key = "module.backbone.encoder.stages.5.0.convs.0.all_modules.1.bias"
            bad = _without(state, key)
        path = folder / f"{edit}.pth"
        _save(_sat_container(bad), path)
        try:
            with pytest.raises(CheckpointError, match=re.escape(key)):
                SATTeacher(str(path), spatial_size=SAT_INPUT)
        finally:
            path.unlink()

    def test_wrong_variant_and_unknown_backbone_key(self, sat_nano, tmp_path):
        with pytest.raises(CheckpointError, match="shape mismatches"):
            SATTeacher(sat_nano[2], spatial_size=SAT_INPUT, variant="pro")
        path = _save(_sat_container({"module.backbone.foo.weight": torch.zeros(2)}), tmp_path / "foo.pth")
        with pytest.raises(CheckpointError, match=re.escape("module.backbone.foo.weight")):
            SATTeacher(path, spatial_size=SAT_INPUT)

    def test_differing_aliases_are_refused(self):
        k = "module.backbone.encoder.stages.0.0.convs.0."
        same = torch.ones(3)
        check_aliases({k + "conv.bias": same, k + "all_modules.0.bias": same})
        with pytest.raises(CheckpointError, match="aliased"):
            check_aliases({k + "conv.bias": same, k + "all_modules.0.bias": torch.zeros(3)})

    def test_features_frozen_and_preprocessing(self, sat_nano):
        teacher = sat_nano[3]
        _assert_frozen(teacher)
        ct = torch.rand(1, 1, 40, 40, 20) * 3000 - 1500  # HU
        pre = teacher.preprocessing(ct)
        assert pre.shape == (1, 3, *SAT_INPUT) and abs(pre.mean().item()) < 1e-4
        feats = teacher.stage_features(ct)
        assert [tuple(f.shape) for f in feats] == _sat_shapes(1, "nano", SAT_INPUT)
        assert all(torch.isfinite(f).all() for f in feats)
        mr = SATTeacher(spatial_size=None, modality="mr", taps=(0, 1))
        assert mr.tap_names == ("E0", "E1")
        assert [tuple(f.shape) for f in mr.stage_features(torch.rand(1, 1, 16, 16, 16))] == _sat_shapes(
            1, "nano", (16, 16, 16), (0, 1)
        )


def test_sat_pro_encoder_keys(tmp_path):
    """SAT-Pro: the 144 encoder names plus a few other official keys (see the module docstring)."""
    manifest = load_manifest("sat_pro")
    state = manifest_state_dict(manifest, prefix_filter="module.backbone.encoder.")
    others = [k for k, _, _ in manifest["keys"] if not k.startswith("module.backbone.encoder.")]
    extra = [k for k in others if not k.startswith("module.backbone.")][:4] + [others[0]]  # head keys + 1 decoder key
    shapes = {k: s for k, s, _ in manifest["keys"]}
    for k in extra:
        state[k] = torch.zeros(shapes[k])
    state["module.transformer_decoder.layers.0.self_attn.in_proj_weight"] = torch.zeros(
        3
    )  # unknown head key: tolerated
    path = _save(_sat_container(state), tmp_path / "SAT_Pro.pth")
    teacher = SATTeacher(path, spatial_size=(16, 16, 16), variant="pro", taps=(2, 3))
    Path(path).unlink()
    own = teacher.encoder.state_dict()
    assert len(own) == 144
    for k, v in own.items():
        assert torch.equal(v, state["module.backbone.encoder." + k]), k
    unique = sum(
        torch.Size(s).numel()
        for k, s, _ in manifest["keys"]
        if k.startswith("module.backbone.encoder.") and ".all_modules." not in k
    )
    assert sum(p.numel() for p in teacher.parameters()) == unique
    _assert_frozen(teacher)
    feats = teacher.stage_features(torch.rand(1, 1, 20, 24, 16) * 2000 - 1000)
    assert [tuple(f.shape) for f in feats] == _sat_shapes(1, "pro", (16, 16, 16), (2, 3))


def test_sat_sees_the_chosen_channel_of_a_multi_parametric_input():
    """Prostate MRI (T2, ADC) into the single-modality SAT teacher: with input_channel it sees T2
    exactly as a one-channel T2 volume; without it the error names the setting to change."""
    t2, adc = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16) * 5
    both = torch.cat([t2, adc], dim=1)
    teacher = SATTeacher(spatial_size=None, modality="mr", taps=(0, 1), input_channel=0)
    for got, want in zip(teacher.stage_features(both), teacher.stage_features(t2)):
        assert torch.equal(got, want)
    adc_teacher = SATTeacher(spatial_size=None, modality="mr", taps=(0, 1), input_channel=1)
    assert not torch.equal(adc_teacher.stage_features(both)[0], teacher.stage_features(both)[0])
    with pytest.raises(ValueError, match="teacher_input_channel"):
        SATTeacher(spatial_size=None, modality="mr", taps=(0, 1)).stage_features(both)
    with pytest.raises(ValueError, match="input_channel 2 does not exist"):
        SATTeacher(spatial_size=None, modality="mr", taps=(0, 1), input_channel=2).stage_features(both)


def test_prostate_bundle_builds_its_teacher_cache_plan():
    """The prostate bundle's default SAT teacher accepts its 2-channel input (the dry run used to fail)."""
    from tools.benchmark_cache import entry_sizes

    row = entry_sizes("prostate_mri_segmentation")
    assert row["teacher"] == "SATTeacher" and len(row["stored_shapes"]) == 4
