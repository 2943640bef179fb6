"""Tests of the CNN teachers (PMC-CLIP, RadImageNet DenseNet-121, LVM-Med ResNet-50, Merlin).

Each teacher loads a random-weight file written here in its official container and key layout
(from ``shared/docs/teacher_manifests``); the real weights are not downloadable in CI.

Two kinds of files are written:

* "official" files: every tensor random (``manifest_state_dict``), so that equality of the loaded
  weights proves each key landed in the right parameter. For Merlin only the image tensors
  (``encode_image.*``) are random; the text tower's 150 M values are dropped by the loader, so
  they are written as zero-stride views (same keys, shapes and dtypes, a few bytes each) to keep
  the suite fast.
* "light" files (:func:`light_state_dict`): every tensor a zero-stride view; used where only the
  key layout matters (error messages, optional keys, checksums).

Merlin (ResNet-152 3D, 117 M parameters) runs at a small size (64 x 64 x 32); its default-size
shapes are computed on the meta device.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from drd_components.teachers.checkpoint import CheckpointError, sha256sum
from drd_components.teachers.lvm_med import LVMMedResNet50Teacher, lvm_med_key_map
from drd_components.teachers.merlin import MerlinTeacher, merlin_key_map
from drd_components.teachers.pmc_clip import CLIP_MEAN, CLIP_STD, PMCCLIPTeacher, pmc_clip_key_map
from drd_components.teachers.radimagenet import RadImageNetDenseNet121Teacher, radimagenet_key_map
from tests.teachers.manifest_checkpoint import load_manifest, manifest_state_dict

MERLIN_SMALL = (64, 64, 32)


def light_state_dict(manifest: dict, prefix_filter: str | None = None) -> dict[str, torch.Tensor]:
    """The manifest's keys, shapes and dtypes as zero-stride zero tensors (tiny files, fast I/O)."""
    state = {}
    for key, shape, dtype in manifest["keys"]:
        if prefix_filter is None or key.startswith(prefix_filter):
            state[key] = torch.zeros((), dtype=getattr(torch, dtype)).expand(shape)
    return state


def plausible_batch_norm(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Give BatchNorm layers usable random statistics (in place, returns ``state``).

    ``manifest_state_dict`` draws every float tensor from N(0, 0.02): negative running variances
    turn forwards into NaN and tiny BN scales drive activations into (very slow) denormals. Only
    the values change; keys, shapes and dtypes stay those of the manifest.
    """
    gen = torch.Generator().manual_seed(seed)
    for key in [k for k in state if k.endswith("running_var")]:
        prefix = key[: -len("running_var")]
        shape = state[key].shape
        state[key] = torch.rand(shape, generator=gen) + 0.5
        state[prefix + "weight"] = torch.randn(shape, generator=gen) * 0.1 + 1.0
        state[prefix + "bias"] = torch.randn(shape, generator=gen) * 0.1
        state[prefix + "running_mean"] = torch.randn(shape, generator=gen) * 0.1
    return state


@dataclasses.dataclass(frozen=True)
class Case:
    cls: type
    manifest: str
    module: str  # attribute of the teacher that holds the file's weights
    key_map: Callable[[str], str | None]
    kwargs: dict
    renamed: tuple[str, str]  # (file key, new name) for the rename test
    renamed_module_key: str  # the model key reported missing after the rename
    missing: str  # file key removed for the missing-key test
    missing_module_key: str
    grey_input: tuple[int, ...]  # a grey bundle image/volume
    input_range: tuple[float, float]
    tap_shapes: tuple[tuple[int, ...], ...]  # documented taps for grey_input (B = 1)
    default_shapes: tuple[tuple[int, ...], ...]  # documented taps at the default size (B = 1)


SHAPES_2D_RESNET = ((1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7))
SHAPES_2D_DENSENET = ((1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 1024, 7, 7))

CASES = {
    "pmc_clip": Case(
        cls=PMCCLIPTeacher,
        manifest="pmc_clip",
        module="encoder",
        key_map=pmc_clip_key_map,
        kwargs={},
        renamed=("layer3.2.conv2.weight", "layer3.2.conv_2.weight"),
        renamed_module_key="layer3.2.conv2.weight",
        missing="attnpool.positional_embedding",
        missing_module_key="attnpool.positional_embedding",
        grey_input=(1, 1, 224, 224),
        input_range=(0.0, 1.0),
        tap_shapes=SHAPES_2D_RESNET,
        default_shapes=SHAPES_2D_RESNET,
    ),
    "radimagenet": Case(
        cls=RadImageNetDenseNet121Teacher,
        manifest="radimagenet_densenet121",
        module="features",
        key_map=radimagenet_key_map,
        kwargs={},
        renamed=(
            "backbone.0.denseblock2.denselayer3.conv1.weight",
            "backbone.0.denseblock2.denselayer3.conv_1.weight",
        ),
        renamed_module_key="denseblock2.denselayer3.layers.conv1.weight",
        missing="backbone.0.transition3.conv.weight",
        missing_module_key="transition3.conv.weight",
        grey_input=(1, 1, 224, 224),
        input_range=(0.0, 1.0),
        tap_shapes=SHAPES_2D_DENSENET,
        default_shapes=SHAPES_2D_DENSENET,
    ),
    "lvm_med": Case(
        cls=LVMMedResNet50Teacher,
        manifest="lvm_med",
        module="encoder",
        key_map=lvm_med_key_map,
        kwargs={},
        renamed=("layer2.0.downsample.0.weight", "layer2.0.shortcut.0.weight"),
        renamed_module_key="layer2.0.downsample.0.weight",
        missing="layer4.2.bn3.running_var",
        missing_module_key="layer4.2.bn3.running_var",
        grey_input=(1, 1, 224, 224),
        input_range=(0.0, 1.0),
        tap_shapes=SHAPES_2D_RESNET,
        default_shapes=SHAPES_2D_RESNET,
    ),
    "merlin": Case(
        cls=MerlinTeacher,
        manifest="merlin",
        module="i3_resnet",
        key_map=merlin_key_map,
        kwargs={"spatial_size": MERLIN_SMALL},
        renamed=("encode_image.i3_resnet.layer3.20.conv2.weight", "encode_image.i3_resnet.layer3.20.conv_2.weight"),
        renamed_module_key="layer3.20.conv2.weight",
        missing="encode_image.i3_resnet.contrastive_head.bias",
        missing_module_key="contrastive_head.bias",
        grey_input=(1, 1, 56, 56, 28),  # H x W x D, resized to MERLIN_SMALL
        input_range=(-1200.0, 1500.0),  # HU
        tap_shapes=((1, 256, 16, 16, 16), (1, 512, 8, 8, 8), (1, 1024, 4, 4, 4), (1, 2048, 2, 2, 2)),
        default_shapes=((1, 256, 56, 56, 80), (1, 512, 28, 28, 40), (1, 1024, 14, 14, 20), (1, 2048, 7, 7, 10)),
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Run this module's forwards on one thread: on a shared 2-core CI box, two intra-op threads
    mostly spin against other processes (3x the CPU time for the same work here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def official(request, tmp_path_factory):
    """(case, teacher, file state dict, path) for a random-weight file in the official layout."""
    case = CASES[request.param]
    manifest = load_manifest(case.manifest)
    if request.param == "merlin":
        image = manifest_state_dict(manifest, prefix_filter="encode_image.")
        state = {key: image.get(key, value) for key, value in light_state_dict(manifest).items()}
    else:
        state = manifest_state_dict(manifest)
    state = plausible_batch_norm(state)
    path = tmp_path_factory.mktemp(request.param) / Path(manifest["official_file"]).name
    torch.save(state, path)
    # a matching checksum is passed for the 2D files; hashing Merlin's 0.5 GB would add seconds.
    sha = None if request.param == "merlin" else sha256sum(path)
    teacher = case.cls(checkpoint=str(path), sha256=sha, **case.kwargs)
    yield case, teacher, state, path
    path.unlink()


@pytest.fixture()
def merlin_teacher(tmp_path):
    """A Merlin teacher at the small test size, loaded from a light file in the official layout."""
    path = _save(light_state_dict(load_manifest("merlin"), prefix_filter="encode_image."), tmp_path / "merlin.pt")
    return MerlinTeacher(checkpoint=path, spatial_size=MERLIN_SMALL)


def _save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


# (a) official layout loads strictly, weights equal the file -------------------------------------
def test_official_file_loads_and_weights_match(official):
    case, teacher, state, _ = official
    module_state = getattr(teacher, case.module).state_dict()
    mapped = {case.key_map(k): k for k in state}
    mapped.pop(None, None)
    assert set(mapped) == set(module_state)
    for module_key, file_key in mapped.items():
        assert torch.equal(module_state[module_key], state[file_key]), module_key


# (b) renamed and missing keys name the key --------------------------------------------------------
def test_renamed_key_is_reported(official, tmp_path):
    case = official[0]
    state = light_state_dict(load_manifest(case.manifest))
    old, new = case.renamed
    state = {(new if k == old else k): v for k, v in state.items()}
    with pytest.raises(CheckpointError) as err:
        case.cls(checkpoint=_save(state, tmp_path / "renamed.pt"), **case.kwargs)
    msg = str(err.value)
    assert case.renamed_module_key in msg and "missing keys (1)" in msg
    assert case.key_map(new) in msg and "unexpected keys (1)" in msg


def test_missing_key_is_reported(official, tmp_path):
    case = official[0]
    state = light_state_dict(load_manifest(case.manifest))
    del state[case.missing]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\)") as err:
        case.cls(checkpoint=_save(state, tmp_path / "missing.pt"), **case.kwargs)
    assert case.missing_module_key in str(err.value)


# (c) documented tap shapes -------------------------------------------------------------------------
def _meta_copy(teacher):
    """A copy of the teacher on the meta device (shapes without memory or compute), made without
    copying the weights first: the deep copy maps every parameter and buffer to a meta tensor."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False) for p in teacher.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in teacher.buffers()})
    return copy.deepcopy(teacher, memo)


def test_tap_shapes_match_docstring(official):
    """Taps at the documented default size, on the meta device (real forwards: test_grey_input_forward)."""
    case, teacher, _, _ = official
    assert len(teacher.tap_names) == 4
    default_size = inspect.signature(case.cls).parameters["spatial_size"].default
    default_size = (default_size,) * case.cls.spatial_dims if isinstance(default_size, int) else default_size
    assert tuple(default_size) == ((224, 224) if case.cls.spatial_dims == 2 else (224, 224, 160))
    net_in = 3 if case.cls.spatial_dims == 2 else 1
    feats = _meta_copy(teacher).forward_features(torch.empty(1, net_in, *default_size, device="meta"))
    assert [tuple(f.shape) for f in feats] == list(case.default_shapes)
    assert teacher.preprocessing.spatial_size == tuple(case.kwargs.get("spatial_size", default_size))


def test_docstring_tables():
    """Each class documents its taps and default-size shapes in its docstring."""
    for case in CASES.values():
        doc = case.cls.__doc__
        for name, shape in zip(case.cls.tap_names, case.default_shapes):
            row = f"B x {shape[1]} x " + " x ".join(map(str, shape[2:]))
            assert name in doc and row in doc, (case.cls.__name__, row)
        assert "Args:" in doc and "Raises:" in doc


# (d) frozen ------------------------------------------------------------------------------------------
def test_frozen_and_eval(official):
    teacher = official[1]
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher
    assert not teacher.training and not any(m.training for m in teacher.modules())


# (e) preprocessing + forward on a grey bundle input ---------------------------------------------------
def test_grey_input_forward(official):
    case, teacher, _, _ = official
    low, high = case.input_range
    x = torch.rand(case.grey_input) * (high - low) + low
    prep = teacher.preprocessing(x)
    assert prep.shape[1] == (3 if teacher.spatial_dims == 2 else 1)
    feats = teacher.stage_features(x)
    assert [tuple(f.shape) for f in feats] == list(case.tap_shapes)
    assert all(torch.isfinite(f).all() and not f.requires_grad for f in feats)
    # the outputs are ordinary tensors: a projector can take them into autograd.
    w = torch.ones((), requires_grad=True)
    (feats[-1] * w).mean().backward()
    assert w.grad is not None


# (f) checksum --------------------------------------------------------------------------------------
def test_sha256_mismatch_raises(official, tmp_path):
    case = official[0]
    path = _save(light_state_dict(load_manifest(case.manifest)), tmp_path / "file.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        case.cls(checkpoint=path, sha256="0" * 64, **case.kwargs)


@pytest.mark.parametrize("cls", [c.cls for c in CASES.values()])
def test_sha256_without_checkpoint_and_missing_file(cls, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        cls(sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        cls(checkpoint=str(tmp_path / "absent.pt"))


# tolerated differences --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_missing_batch_counters_are_tolerated(name, tmp_path):
    case = CASES[name]
    state = light_state_dict(load_manifest(case.manifest))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    teacher = case.cls(checkpoint=_save(state, tmp_path / "no_counters.pt"), **case.kwargs)
    counters = [b for n, b in teacher.named_buffers() if n.endswith("num_batches_tracked")]
    assert counters and all(int(b) == 0 for b in counters)


def test_lvm_med_optional_fc_is_ignored(tmp_path):
    manifest = load_manifest("lvm_med")
    state = manifest_state_dict(manifest)
    for key, shape, dtype in manifest["optional_keys"]:
        state[key] = torch.randn(shape, dtype=getattr(torch, dtype))
    teacher = LVMMedResNet50Teacher(checkpoint=_save(state, tmp_path / "lvmmed_resnet.torch"))
    assert teacher.encoder.fc is None
    assert torch.equal(teacher.encoder.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


# PMC-CLIP: full training checkpoint --------------------------------------------------------------------
def _pmc_full_checkpoint(visual: dict[str, torch.Tensor]) -> dict:
    """``checkpoint.pt`` container: the visual tower from the manifest plus stand-ins for the rest.

    The non-visual tensors (text encoder, fusion module, projections, ...) are not in any manifest;
    their names follow upstream ``PMC_CLIP`` and their shapes are arbitrary, since the loader drops them.
    """
    state = dict(visual)
    for key in (
        "module.text_encoder.embeddings.word_embeddings.weight",
        "module.text_encoder.embeddings.position_ids",
        "module.fusion_module.layers.0.weight",
        "module.text_projection",
        "module.mlm_projection",
        "module.positional_embedding",
        "module.ln_final.weight",
        "module.logit_scale",
        "module.img_special_token",
    ):
        state[key] = torch.zeros(2, 3)
    return {
        "epoch": 100,
        "name": "pmc_clip_run",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0, 1]}]},
        "scaler": {"scale": 65536.0, "growth_tracker": 0},
        "best_val_loss": np.float64(0.25),  # a pickled numpy scalar, allowed by the loader's allow-list
    }


def test_pmc_clip_full_training_checkpoint(tmp_path):
    visual = manifest_state_dict(load_manifest("pmc_clip_full_checkpoint_visual_subset"), seed=1)
    path = _save(_pmc_full_checkpoint(visual), tmp_path / "checkpoint.pt")
    teacher = PMCCLIPTeacher(checkpoint=path, sha256=sha256sum(path))
    loaded = teacher.encoder.state_dict()
    assert len(loaded) == len(visual)
    for key, value in visual.items():
        assert torch.equal(loaded[key[len("module.visual.") :]], value), key


def test_pmc_clip_full_checkpoint_errors(tmp_path):
    visual = light_state_dict(load_manifest("pmc_clip_full_checkpoint_visual_subset"))
    old, new = "module.visual.layer4.0.bn1.weight", "module.visual.layer4.0.bn_1.weight"
    renamed = {(new if k == old else k): v for k, v in visual.items()}
    with pytest.raises(CheckpointError, match=r"layer4\.0\.bn1\.weight"):
        PMCCLIPTeacher(checkpoint=_save(_pmc_full_checkpoint(renamed), tmp_path / "a.pt"))
    stray = _pmc_full_checkpoint(visual)
    stray["state_dict"]["text_projection"] = torch.zeros(2)  # a key of neither layout
    with pytest.raises(CheckpointError, match="unexpected keys.*text_projection"):
        PMCCLIPTeacher(checkpoint=_save(stray, tmp_path / "b.pt"))
    bad = _pmc_full_checkpoint(visual)
    bad["history"] = np.zeros(3)  # a pickled numpy *array* is outside the allow-list
    with pytest.raises(CheckpointError, match="weights_only"):
        PMCCLIPTeacher(checkpoint=_save(bad, tmp_path / "c.pt"))


def test_pmc_clip_preprocessing_and_embedding():
    teacher = PMCCLIPTeacher()
    x = torch.full((1, 1, 100, 120), 0.5)
    prep = teacher.preprocessing(x)
    assert prep.shape == (1, 3, 224, 224)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073) and CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(prep[0, :, 7, 9], expected)
    assert teacher.image_embedding(x).shape == (1, 768)


# RadImageNet: key renames, normalisation, BGR ---------------------------------------------------------
def test_radimagenet_key_map():
    assert radimagenet_key_map("backbone.0.conv0.weight") == "conv0.weight"
    assert radimagenet_key_map("backbone.0.denseblock4.denselayer16.norm2.running_var") == (
        "denseblock4.denselayer16.layers.norm2.running_var"
    )
    assert radimagenet_key_map("backbone.0.transition1.conv.weight") == "transition1.conv.weight"
    assert radimagenet_key_map("backbone.0.norm5.bias") == "norm5.bias"
    assert radimagenet_key_map("features.conv0.weight") == "features.conv0.weight"  # reported as unexpected


def test_radimagenet_normalisations_and_bgr():
    x = torch.zeros(1, 3, 224, 224)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 0.5, 0.0  # R, G, B
    caffe = RadImageNetDenseNet121Teacher().preprocessing(x)[0, :, 0, 0]
    # model channels are B, G, R minus the caffe means (103.939, 116.779, 123.68) / 255
    torch.testing.assert_close(caffe, torch.tensor([0.0 - 103.939 / 255, 0.5 - 116.779 / 255, 1.0 - 123.68 / 255]))
    pm1 = RadImageNetDenseNet121Teacher(normalization="minus_one_one").preprocessing(x)[0, :, 0, 0]
    torch.testing.assert_close(pm1, torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="normalization"):
        RadImageNetDenseNet121Teacher(normalization="imagenet")


# Merlin: key map, HU window, axis order ----------------------------------------------------------------
def test_merlin_key_map():
    assert merlin_key_map("encode_image.i3_resnet.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert merlin_key_map("encode_image.i3_resnet.classifier.bias") == "classifier.bias"
    assert merlin_key_map("encode_image.i3_resnet.classifier.bias", keep_heads=False) is None
    assert merlin_key_map("logit_scale") is None
    assert merlin_key_map("encode_text.linear_layer.weight") is None
    assert merlin_key_map("encode_text.text_encoder.pooler.dense.bias") is None
    assert merlin_key_map("conv1.weight") == "conv1.weight"  # five-year file: bare I3ResNet layout
    assert merlin_key_map("encode_image.other.weight") == "encode_image.other.weight"  # reported as unexpected


def test_merlin_stray_key_and_size_checks(tmp_path):
    manifest = load_manifest("merlin")
    state = light_state_dict(manifest, prefix_filter="encode_image.")  # text tower absent: fine, it is dropped
    state["encode_vision.proj.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\).*encode_vision\.proj\.weight"):
        MerlinTeacher(checkpoint=_save(state, tmp_path / "stray.pt"), spatial_size=MERLIN_SMALL)
    with pytest.raises(ValueError, match="spatial_size"):
        MerlinTeacher(spatial_size=(64, 64, 8))


def test_merlin_preprocessing_window_and_axes(merlin_teacher):
    x = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0]).reshape(1, 1, 5, 1, 1).expand(1, 1, 5, 64, 32)
    prep = merlin_teacher.preprocessing(x.contiguous())
    assert prep.shape == (1, 1, *MERLIN_SMALL)
    assert prep.min() == 0.0 and prep.max() == 1.0
    # non-cubic input: H, W, D stay in the bundle's order in every tap.
    feats = _meta_copy(merlin_teacher).forward_features(torch.empty(1, 1, 64, 32, 32, device="meta"))
    assert tuple(feats[0].shape[2:]) == (16, 8, 16) and tuple(feats[3].shape[2:]) == (2, 1, 2)


def test_merlin_five_year_layout_without_heads(tmp_path):
    state = light_state_dict(load_manifest("merlin_five_year"))
    path = _save(state, tmp_path / "five_year.pt")
    teacher = MerlinTeacher(checkpoint=path, spatial_size=MERLIN_SMALL, keep_heads=False)
    assert not hasattr(teacher.i3_resnet, "classifier")
    assert sum(p.numel() for p in teacher.parameters()) == 117_366_208


def test_parameter_counts_match_manifests():
    expected = {"pmc_clip": 37_792_352, "radimagenet": 6_953_856, "lvm_med": 23_508_032}
    for name, n in expected.items():
        assert sum(p.numel() for p in CASES[name].cls().parameters()) == n
        assert load_manifest(CASES[name].manifest)["n_params"] == n

