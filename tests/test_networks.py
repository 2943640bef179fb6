"""Staged students and reprogramming projectors."""

import pytest
import torch

from drd_components.networks import ReprogrammingModule, ReprogrammingProjector, StagedResNet18, tokens_to_map
from drd_components.teachers import ResNetStandInTeacher


@pytest.mark.parametrize("spatial_dims,size", [(2, 64), (3, 32)])
def test_staged_run_equals_plain_forward(spatial_dims, size):
    torch.manual_seed(0)
    net = StagedResNet18(spatial_dims, in_channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, *([size] * spatial_dims))
    feats = net.forward_stages(x)
    assert len(feats) == net.num_stages == 4
    assert torch.equal(net.forward_head(feats), net(x))
    # the hybrid path fed with the student's own stage output is the plain forward too
    for i in range(4):
        assert torch.equal(net.forward_from(i, feats[i], feats), net(x))


@pytest.mark.parametrize(
    "spatial_dims,in_shape,out_size",
    [
        (2, (2, 256, 7, 7), (28, 28)),  # teacher coarser than student (upsampling)
        (2, (2, 64, 56, 56), (14, 14)),  # teacher finer (downsampling)
        (2, (2, 32, 8, 8), (8, 8)),  # same size
        (3, (2, 48, 4, 8, 8), (8, 16, 16)),  # anisotropic 3D
        (3, (2, 48, 16, 16, 16), (4, 4, 4)),
    ],
)
def test_projector_shapes_for_maps(spatial_dims, in_shape, out_size):
    proj = ReprogrammingProjector(spatial_dims, in_shape[1], 40, out_size=out_size)
    out = proj(torch.randn(*in_shape))
    assert out.shape == (in_shape[0], 40, *out_size)


@pytest.mark.parametrize("prefix,grid", [(0, 14), (1, 14), (5, 16)])
def test_projector_accepts_vit_tokens(prefix, grid):
    tokens = torch.randn(2, prefix + grid * grid, 192)
    proj = ReprogrammingProjector(2, 192, 64, out_size=(28, 28))
    assert proj(tokens).shape == (2, 64, 28, 28)
    m = tokens_to_map(tokens, 2)
    assert m.shape == (2, 192, grid, grid)
    # token order is row-major over the patch grid
    assert torch.equal(m[0, :, 0, 1], tokens[0, prefix + 1])


def test_token_map_3d_and_errors():
    t = torch.randn(1, 1 + 4 * 4 * 4, 8)
    assert tokens_to_map(t, 3).shape == (1, 8, 4, 4, 4)
    assert tokens_to_map(t, 3, grid_size=(2, 4, 8)).shape == (1, 8, 2, 4, 8)
    with pytest.raises(ValueError, match="cannot arrange"):
        tokens_to_map(torch.randn(1, 50, 8), 2, num_prefix_tokens=0)


def test_projector_resamples_to_runtime_size():
    proj = ReprogrammingProjector(2, 16, 8, out_size=(8, 8))
    assert proj(torch.randn(2, 16, 4, 4), out_size=(12, 10)).shape == (2, 8, 12, 10)


@pytest.mark.parametrize("stages,expected", [("all", [0, 1, 2, 3]), ("last", [3]), ([1, -1], [1, 3])])
def test_module_from_dry_run(stages, expected):
    teacher = ResNetStandInTeacher(spatial_size=64, block_inplanes=(8, 16, 32, 64))
    student = StagedResNet18(2, 1, 3)
    module = ReprogrammingModule.from_models(teacher, student, [2, 1, 96, 96], stages=stages)
    assert module.student_stages == expected
    x = torch.randn(2, 1, 96, 96)
    s_feats = student.forward_stages(x)
    r = module(teacher.stage_features(x), s_feats)
    for i, ri in zip(expected, r):
        assert ri.shape == s_feats[i].shape


def test_tap_matching_spreads_over_depth():
    assert ReprogrammingModule.match_taps(12, 4, [0, 1, 2, 3]) == [0, 4, 7, 11]
    assert ReprogrammingModule.match_taps(4, 4, [3]) == [3]
    with pytest.raises(ValueError, match="out of range"):
        ReprogrammingModule.select_stages(4, [4])
