"""LiteMedSAM teacher: official key layout, strict loading, preprocessing, and the real weights.

- The random-weight build is compared key by key with ``teacher_manifests/litemedsam.json``.
- A random-weight file in the official layout (all 435 tensors: ``image_encoder.*``,
  ``prompt_encoder.*``, ``mask_decoder.*``) loads strictly; corrupted copies fail and name the key.
- With the real ``lite_medsam.pth`` (fixture ``litemedsam_checkpoint``), the tap shapes at 256 and
  128 input, freezing, and per-tap mean/std of a deterministic synthetic image against values
  recorded from upstream's own ``tiny_vit_sam.TinyViT`` (bowang-lab/MedSAM, branch LiteMedSAM,
  commit b0fab47) loaded with the same file and fed upstream's preprocessing (``cv2.INTER_AREA``,
  min-max). At 128 upstream cannot run as released (its neck reshapes to a hard-coded 64 x 64);
  the reference came from upstream built with ``img_size=128`` and only that reshape made
  ``img_size // 4``. Architecture drift (a wrong stride, bias index, norm or qkv layout) moves
  these statistics far beyond the tolerance.
"""

from __future__ import annotations

import collections
import itertools
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from drd_components.teachers import LiteMedSAMTeacher
from drd_components.teachers.checkpoint import CheckpointError, sha256sum
from drd_components.teachers.litemedsam import LITEMEDSAM_SHA256, LITEMEDSAM_TAPS, window_bias_index
from drd_components.teachers.preprocessing import resize_inter_area
from tests.teachers.manifest_checkpoint import load_manifest, manifest_state_dict

PREFIX = "image_encoder."

#: per-tap (channels, stride) of the teacher.
TAP_GEOMETRY = {
    "layers.0": (128, 2),
    "layers.1": (160, 4),
    "layers.2": (320, 4),
    "layers.3": (320, 4),
    "neck": (256, 4),
}

#: mean and std (float64, unbiased std) of upstream's taps for :func:`synthetic_image` (recorded
#: with upstream's TinyViT and preprocessing on the real file, torch 2.13.0 CPU).
UPSTREAM_STATS = {
    256: {
        "layers.0": (-0.009513119961826789, 0.8344256705118167),
        "layers.1": (0.02965267167854902, 0.6924700593863685),
        "layers.2": (-0.0020466167866489866, 0.6856667072470565),
        "layers.3": (-0.010462263051306809, 0.2879674666316159),
        "neck": (-0.0022445453993616415, 0.10466806646975566),
    },
    128: {
        "layers.0": (-0.02206694892040794, 0.9081632023424632),
        "layers.1": (0.013855893182644125, 0.7107913753519877),
        "layers.2": (0.006754045328899151, 0.7268520562884027),
        "layers.3": (-0.016063860511616745, 0.3107514792757634),
        "neck": (-5.751326005554169e-05, 0.10357892487364709),
    },
}


def synthetic_image(n: int = 256) -> torch.Tensor:
    """A deterministic grey ``n x n`` image in ``[0, 1]``: a sinusoidal texture, a bright disk, a ramp."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    u, v = x / n, y / n
    img = 0.45 + 0.2 * torch.sin(2 * math.pi * 5 * u) * torch.cos(2 * math.pi * 3 * v)
    img = img + 0.3 * (((u - 0.6) ** 2 + (v - 0.4) ** 2) < 0.04).double() - 0.25 * u * v
    return img.clamp(0, 1).float()


def expected_shapes(b: int, size: int, taps=LITEMEDSAM_TAPS) -> list[tuple[int, ...]]:
    return [(b, TAP_GEOMETRY[t][0], size // TAP_GEOMETRY[t][1], size // TAP_GEOMETRY[t][1]) for t in taps]


def litemedsam_manifest() -> dict:
    """``litemedsam.json`` with its ``keys`` (a ``{key: [shape, dtype]}`` dict there) as ``[key, shape, dtype]`` rows.

    The older manifests, and :func:`manifest_state_dict`, use the list form.
    """
    manifest = dict(load_manifest("litemedsam"))
    keys = manifest["keys"]
    if isinstance(keys, dict):
        manifest["keys"] = [[k, shape, dtype] for k, (shape, dtype) in keys.items()]
    return manifest


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


_EXECUTED: list[str] = []


class _Payload:
    """A pickled object that would run code if it were ever unpickled."""

    def __reduce__(self):
        return (_EXECUTED.append, ("payload executed",))


def _assert_frozen(teacher: LiteMedSAMTeacher) -> None:
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and all(not m.training for m in teacher.modules())


# ------------------------------------------------------------------------------------------------
# (a) key layout of the random-weight build
# ------------------------------------------------------------------------------------------------


def test_random_build_has_the_official_image_encoder_layout():
    manifest = litemedsam_manifest()
    expected = [(k[len(PREFIX) :], shape, dtype) for k, shape, dtype in manifest["keys"] if k.startswith(PREFIX)]
    assert len(expected) == 298
    own = LiteMedSAMTeacher().image_encoder.state_dict()
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in own.items()] == [
        (k, list(shape), dtype) for k, shape, dtype in expected
    ]
    n_params = sum(p.numel() for p in LiteMedSAMTeacher().image_encoder.parameters())
    assert n_params == 5_726_740  # the manifest's 5,736,596 also counts the BatchNorm running statistics


@pytest.mark.parametrize("window", [7, 14])
def test_bias_index_follows_upstreams_offset_numbering(window):
    """Upstream numbers the absolute offsets in order of first appearance over all (query, key) pairs."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    assert len(offsets) == window**2
    assert torch.equal(window_bias_index(window), torch.tensor(idxs).view(window**2, window**2))


# ------------------------------------------------------------------------------------------------
# (b) strict loading of the official layout, corrupted files
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory):
    """Random tensors under all 435 keys of ``lite_medsam.pth`` (flat ``MedSAM_Lite`` state dict)."""
    state = manifest_state_dict(litemedsam_manifest())
    folder = tmp_path_factory.mktemp("litemedsam")
    return state, folder, _save(state, folder / "lite_medsam.pth")


class TestOfficialLayout:
    def test_loads_strictly_and_weights_equal_file(self, official_layout):
        state, _, path = official_layout
        assert {k.split(".", 1)[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
        teacher = LiteMedSAMTeacher(path, sha256=sha256sum(path), image_size=64)
        own = teacher.image_encoder.state_dict()
        assert len(own) == 298
        for k, v in own.items():
            assert torch.equal(v, state[PREFIX + k]), k
        _assert_frozen(teacher)
        feats = teacher.stage_features(torch.rand(2, 1, 64, 64))
        assert [tuple(f.shape) for f in feats] == expected_shapes(2, 64)

    def test_module_prefix_and_training_container(self, official_layout):
        state, folder, _ = official_layout
        wrapped = {"model": {"module." + k: v for k, v in state.items()}, "epoch": 3, "best_loss": 0.25}
        teacher = LiteMedSAMTeacher(_save(wrapped, folder / "train.pth"), image_size=32)
        assert torch.equal(teacher.image_encoder.neck[0].weight, state[PREFIX + "neck.0.weight"])

    @pytest.mark.parametrize(
        "edit,key",
        [
            ("missing", "image_encoder.neck.1.bias"),
            ("missing", "image_encoder.layers.2.blocks.4.attn.attention_biases"),
            ("shape", "image_encoder.layers.2.blocks.0.attn.attention_biases"),
            ("shape", "image_encoder.patch_embed.seq.0.c.weight"),
            ("unexpected", "image_encoder.norm_head.weight"),
        ],
    )
    def test_corrupted_file_names_the_key(self, official_layout, edit, key):
        state, folder, _ = official_layout
        bad = collections.OrderedDict(state)
        if edit == "missing":
            del bad[key]
        elif edit == "shape":
            shape = bad[key].shape
            bad[key] = torch.zeros(shape[0], 1, *shape[2:]) if len(shape) == 4 else bad[key][:, :49]
        else:
            bad[key] = torch.zeros(320)
        path = _save(bad, folder / f"{edit}.pth")
        short = key[len(PREFIX) :]
        with pytest.raises(CheckpointError, match=re.escape(short)) as info:
            LiteMedSAMTeacher(path, image_size=32)
        assert {"missing": "missing keys", "shape": "shape mismatches", "unexpected": "unexpected keys"}[edit] in str(
            info.value
        )

    def test_checksum_and_foreign_pickles_are_refused(self, official_layout, tmp_path):
        _, _, path = official_layout
        with pytest.raises(CheckpointError, match="checksum"):
            LiteMedSAMTeacher(path, sha256="0" * 64, image_size=32)
        evil = _save({"image_encoder.neck.0.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "e.pth")
        _EXECUTED.clear()
        with pytest.raises(CheckpointError, match="weights_only"):
            LiteMedSAMTeacher(evil, image_size=32)
        assert _EXECUTED == []
        with pytest.raises(CheckpointError, match="different model"):
            LiteMedSAMTeacher(_save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth"), image_size=32)


# ------------------------------------------------------------------------------------------------
# arguments, preprocessing, any input size
# ------------------------------------------------------------------------------------------------


def test_bad_arguments():
    for size in (130, 0, (128, 126)):
        with pytest.raises(ValueError, match="multiples of 4"):
            LiteMedSAMTeacher(image_size=size)
    for taps in ((), ("layers.4",), ("neck", "layers.0"), ("layers.1", "layers.1")):
        with pytest.raises(ValueError, match="taps"):
            LiteMedSAMTeacher(taps=taps)
    with pytest.raises(ValueError, match="square"):
        LiteMedSAMTeacher(image_size=(64, 128), keep_aspect=True)
    with pytest.raises(ValueError, match="sha256"):
        LiteMedSAMTeacher(sha256=LITEMEDSAM_SHA256)


def test_tap_subsets_sizes_and_non_square():
    torch.manual_seed(0)
    teacher = LiteMedSAMTeacher(image_size=(48, 64), taps=("layers.1", "neck"))
    assert teacher.tap_names == ("layers.1", "neck")
    feats = teacher.stage_features(torch.rand(1, 3, 30, 90))
    assert [tuple(f.shape) for f in feats] == [(1, 160, 12, 16), (1, 256, 12, 16)]
    early = LiteMedSAMTeacher(image_size=36, taps=("layers.0",))  # 36: windows of 7/14 need padding everywhere
    (f0,) = early.stage_features(torch.rand(2, 1, 36, 36))
    assert f0.shape == (2, 128, 18, 18) and torch.isfinite(f0).all()
    assert teacher.feature_shapes((2, 1, 48, 64)) == [(2, 160, 12, 16), (2, 256, 12, 16)]


def test_preprocessing_stretch_and_keep_aspect():
    stretch = LiteMedSAMTeacher(image_size=64)
    raw = torch.rand(2, 1, 50, 70) * 1000 - 500  # grey, arbitrary range
    pre = stretch.preprocessing(raw)
    assert pre.shape == (2, 3, 64, 64)
    assert torch.equal(pre[:, 0], pre[:, 1]) and torch.equal(pre[:, 0], pre[:, 2])
    assert torch.allclose(pre.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(pre.amax(dim=(1, 2, 3)), torch.ones(2))
    # min-max comes after the resize (upstream's order) and spans all channels together
    rgb = torch.rand(1, 3, 64, 64)
    rgb[:, 0] *= 0.5
    out = stretch.preprocessing(rgb)
    assert torch.allclose(out, (rgb - rgb.min()) / (rgb.max() - rgb.min()))
    aspect = LiteMedSAMTeacher(image_size=64, keep_aspect=True)
    pre = aspect.preprocessing(torch.rand(1, 1, 50, 100) + 2.0)
    # longer side 100 -> 64, shorter 50 -> int(32 + 0.5) = 32, min-max, zero rows below
    assert pre.shape == (1, 3, 64, 64)
    assert pre[..., 32:, :].abs().max() == 0 and pre[..., :32, :].max() == 1 and pre[..., :32, :].min() == 0


def test_resize_inter_area():
    x = torch.rand(2, 3, 12, 18, dtype=torch.float64)
    assert torch.allclose(resize_inter_area(x, (6, 9)), F.avg_pool2d(x, 2))  # integer shrink = block mean
    assert torch.equal(resize_inter_area(x, (24, 36)), x.repeat_interleave(2, -2).repeat_interleave(2, -1))
    assert torch.allclose(resize_inter_area(torch.full((1, 1, 7, 5), 0.3), (11, 3)), torch.full((1, 1, 11, 3), 0.3))
    row = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # 3 -> 2: footprints [0, 1.5) and [1.5, 3): overlap weights 1, 0.5 | 0.5, 1 (divided by 1.5)
    expected = torch.tensor([(1 + 0.5 * 2) / 1.5, (0.5 * 2 + 4) / 1.5], dtype=torch.float64)
    assert torch.allclose(resize_inter_area(row, (2,)), expected)
    # 2 -> 3: footprints of 2/3 px; the middle one straddles both pixels equally
    assert torch.allclose(resize_inter_area(row[:2], (3,)), torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64))


def test_documented_shapes():
    doc = LiteMedSAMTeacher.__doc__
    for size in (256, 128):
        for tap, shape in zip(LITEMEDSAM_TAPS, expected_shapes(1, size)):
            row = next(line for line in doc.splitlines() if line.strip().startswith(tap + " "))
            assert "``" + " x ".join(["B", *map(str, shape[1:])]) + "``" in row, (tap, size)


# ------------------------------------------------------------------------------------------------
# (c) the real weights
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_features(litemedsam_checkpoint):
    """Teachers at 256 and 128 loaded from the real file, and their taps for :func:`synthetic_image`."""
    image = synthetic_image(256)[None, None]  # the bundle's B x 1 x H x W in [0, 1]
    out = {}
    for size in (256, 128):
        teacher = LiteMedSAMTeacher(litemedsam_checkpoint, sha256=LITEMEDSAM_SHA256, image_size=size)
        out[size] = (teacher, teacher.stage_features(image))
    return out


class TestRealWeights:
    @pytest.mark.parametrize("size", [256, 128])
    def test_shapes_finite_frozen(self, real_features, size):
        teacher, feats = real_features[size]
        assert [tuple(f.shape) for f in feats] == expected_shapes(1, size)
        for name, f in zip(LITEMEDSAM_TAPS, feats):
            assert torch.isfinite(f).all(), name
            assert f.std() > 1e-3 and f.amax() - f.amin() > 1e-2, name
            assert not f.requires_grad, name
        _assert_frozen(teacher)

    @pytest.mark.parametrize("size", [256, 128])
    def test_statistics_match_upstream(self, real_features, size):
        _, feats = real_features[size]
        for name, f in zip(LITEMEDSAM_TAPS, feats):
            mean, std = f.double().mean().item(), f.double().std().item()
            ref_mean, ref_std = UPSTREAM_STATS[size][name]
            assert abs(std - ref_std) <= 1e-4 * ref_std, (name, std, ref_std)
            assert abs(mean - ref_mean) <= 1e-4 * ref_std, (name, mean, ref_mean)
