"""Staged segmentation students: staged == plain forward, hybrid paths, one DRD iteration each."""

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.losses import DiceCELoss

from drd_components.engines.drd_trainer import DRDTrainer
from drd_components.losses.cka import CKALoss
from drd_components.losses.drd_loss import DRDLoss
from drd_components.networks.reprogramming import ReprogrammingModule
from drd_components.networks.students.shufflenet_unet import StagedShuffleNetV2UNet, channel_shuffle
from drd_components.networks.students.unet import StagedUNet, StagedUNet3D
from drd_components.networks.students.vit_segmenter import StagedViTSegmenter, StagedViTTinySegmenter
from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.standin import ResNetStandInTeacher

ANISO = dict(
    channels=(8, 16, 16, 16),
    strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
    kernel_sizes=[[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]],
)


def _students():
    """(name, factory, input shape, number of classes): tiny instances of every student."""
    return [
        ("unet3d", lambda: StagedUNet3D(1, 3, channels=(8, 16, 16, 16)), (2, 1, 16, 16, 16), 3),
        ("unet3d_aniso", lambda: StagedUNet3D(1, 4, **ANISO), (2, 1, 16, 24, 8), 4),
        ("unet2d", lambda: StagedUNet(2, 1, 2, channels=(8, 16, 16)), (2, 1, 16, 16), 2),
        ("shufflenet_unet", lambda: StagedShuffleNetV2UNet(1, 2, width=(8, 16, 32, 32), stage_repeats=(1, 2, 1), decoder_channels=(16, 16, 8, 8)), (2, 1, 32, 64), 2),
        ("vit_segmenter", lambda: StagedViTSegmenter(1, 2, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, decoder_channels=16), (2, 1, 32, 32), 2),
    ]


STUDENTS = _students()
IDS = [s[0] for s in STUDENTS]


@pytest.mark.parametrize("name,factory,shape,classes", STUDENTS, ids=IDS)
def test_staged_run_equals_plain_forward(name, factory, shape, classes):
    torch.manual_seed(0)
    net = factory().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        feats = net.forward_stages(x)
        y = net(x)
        assert torch.equal(net.forward_head(feats), y)
        assert y.shape == (shape[0], classes, *shape[2:])
        # a hybrid path fed with the student's own stage output is the plain forward too
        for i in range(net.num_stages):
            assert torch.equal(net.forward_from(i, feats[i], feats), y)


@pytest.mark.parametrize("name,factory,shape,classes", STUDENTS, ids=IDS)
def test_hybrid_paths_use_replacement_and_student_skips(name, factory, shape, classes):
    torch.manual_seed(0)
    net = factory().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        feats = net.forward_stages(x)
        y = net(x)
        for i in range(net.num_stages):
            other = torch.randn_like(feats[i])
            z = net.forward_from(i, other, feats)
            assert z.shape == y.shape
            assert not torch.allclose(z, y)
    with pytest.raises(IndexError):
        net.forward_from(net.num_stages, feats[-1], feats)


def test_hybrid_skips_below_index_come_from_the_student():
    """Changing a skip *above* the replaced stage must not matter (it is recomputed); one below must."""
    torch.manual_seed(0)
    net = StagedUNet3D(1, 3, channels=(8, 16, 16, 16)).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        feats = net.forward_stages(x)
        r = torch.randn_like(feats[1])
        ref = net.forward_from(1, r, feats)
        above = list(feats)
        above[3] = torch.randn_like(feats[3])
        assert torch.equal(net.forward_from(1, r, above), ref)
        below = list(feats)
        below[0] = torch.randn_like(feats[0])
        assert not torch.allclose(net.forward_from(1, r, below), ref)


@pytest.mark.parametrize("name,factory,shape,classes", [STUDENTS[0], STUDENTS[4]], ids=[IDS[0], IDS[4]])
def test_checkpointed_hybrid_paths_give_the_same_values_and_gradients(name, factory, shape, classes):
    torch.manual_seed(0)
    net = factory().train()
    x = torch.randn(*shape)
    results = []
    for ckpt in (False, True):
        net.checkpoint_hybrid = ckpt
        net.zero_grad()
        feats = net.forward_stages(x)
        r = torch.randn_like(feats[1], requires_grad=True) if not results else results[0][2].detach().requires_grad_()
        z = net.forward_from(1, r, feats)
        (z.square().mean() + net.forward_head(feats).mean()).backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((z.detach(), grads, r, r.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][3], results[1][3])
    assert results[0][1].keys() == results[1][1].keys()
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], rtol=1e-4, atol=1e-6)


def test_shufflenet_block_and_widths():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    net = StagedShuffleNetV2UNet(1, 2, width="0.5x")
    feats = net.eval().forward_stages(torch.randn(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [24, 48, 96, 192]
    assert [f.shape[-1] for f in feats] == [32, 8, 4, 2]
    with pytest.raises(ValueError, match="width"):
        StagedShuffleNetV2UNet(1, 2, width="3x")


def test_vit_tiny_defaults_and_position_embedding_resize():
    net = StagedViTTinySegmenter(1, 2, img_size=64).eval()
    assert net.num_stages == 4 and net.stages[0].blocks[0].attn.num_heads == 3
    feats = net.forward_stages(torch.randn(1, 1, 64, 64))
    assert all(f.shape == (1, 192, 4, 4) for f in feats)
    # another input size resizes the position embedding instead of failing
    assert net(torch.randn(1, 1, 96, 64)).shape == (1, 2, 96, 64)
    with pytest.raises(ValueError, match="multiples"):
        StagedViTTinySegmenter(1, 2, img_size=100)


def test_unet_rejects_bad_level_lists():
    with pytest.raises(ValueError, match="one entry per level"):
        StagedUNet3D(1, 2, channels=(8, 16, 32), strides=[1, 2])


class TokenTeacher(FrozenTeacher):
    """A tiny SAM-like teacher: one patch embedding, single-scale ``B x N x C`` tokens at 3 depths."""

    spatial_dims = 2
    tap_names = ("t1", "t2", "t3")

    def __init__(self, dim: int = 24, patch: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(1, dim, patch, patch)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(3)])
        self.freeze()

    def forward_features(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        out = []
        for blk in self.blocks:
            t = t + torch.tanh(blk(t))
            out.append(t)
        return out


def _seg_batches(shape, classes, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        image = torch.rand(*shape[1:], generator=g)
        label = torch.randint(0, classes, (1, *shape[2:]), generator=g).float()
        mask = torch.ones(1, *shape[2:])
        mask[..., : shape[-1] // 4] = 0  # a padded border
        items.append({"image": image, "label": label, "mask": mask})
    return items


TEACHERS = {
    "unet3d": lambda: ResNetStandInTeacher(spatial_dims=3, block_inplanes=(8, 8, 16, 16)),
    "unet3d_aniso": lambda: ResNetStandInTeacher(spatial_dims=3, block_inplanes=(8, 8, 16, 16)),
    "unet2d": lambda: ResNetStandInTeacher(spatial_dims=2, block_inplanes=(8, 8, 16, 16)),
    "shufflenet_unet": lambda: TokenTeacher(),
    "vit_segmenter": lambda: TokenTeacher(),
}


@pytest.mark.parametrize("name,factory,shape,classes", STUDENTS, ids=IDS)
def test_one_drd_iteration_per_student(name, factory, shape, classes):
    """Teacher untouched and without gradients; every projector and student parameter gets one."""
    torch.manual_seed(0)
    teacher = TEACHERS[name]()
    student = factory()
    if name == "unet3d":
        student.checkpoint_hybrid = True
    # batch norm: the stand-in's deepest tap is a single voxel at these tiny sizes, which instance norm
    # (the 3D bundles' choice for realistic patch sizes) would flatten to a constant
    projectors = ReprogrammingModule.from_models(teacher, student, list(shape), norm="batch")
    assert projectors.student_stages == list(range(student.num_stages))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    cka = CKALoss(spatial_samples=64) if student.spatial_dims == 3 else CKALoss(pool_size=4)
    trainer = DRDTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=1,
        train_data_loader=DataLoader(_seg_batches(shape, classes), batch_size=shape[0]),
        network=student,
        optimizer=opt,
        loss_function=DRDLoss(DiceCELoss(to_onehot_y=True, softmax=True), cka),
        teacher=teacher,
        projectors=projectors,
        kl_mask_key="mask",
    )
    seen = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.update(e.state.drd_terms))
    trainer.run()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for mod_name, module in (("student", student), ("projectors", projectors)):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{mod_name}.{pname} got no gradient"
    assert all(seen[f"cka_stage{i}"] == seen[f"cka_stage{i}"] for i in range(student.num_stages))  # not NaN
    assert seen["loss_kl"] >= 0 and seen["loss_hybrid"] > 0


def test_projectors_resample_single_scale_tokens_to_every_stage():
    teacher = TokenTeacher()
    student = StagedShuffleNetV2UNet(1, 2, width=(8, 16, 32, 32), stage_repeats=(1, 2, 1), decoder_channels=(16, 16, 8, 8))
    proj = ReprogrammingModule.from_models(teacher, student, [2, 1, 32, 64])
    x = torch.rand(2, 1, 32, 64)
    feats = student.forward_stages(x)
    reprogrammed = proj(teacher.stage_features(x), feats)
    assert [tuple(r.shape) for r in reprogrammed] == [tuple(f.shape) for f in feats]


def test_kl_mask_ignores_padding():
    """The per-voxel KL term only sees the voxels the mask marks as image."""
    from drd_components.losses.drd_loss import softened_kl

    z = torch.randn(2, 3, 8, 8)
    t = z.clone()
    t[..., :2] = torch.randn(2, 3, 8, 2) * 5  # disagreement only in the padded columns
    mask = torch.ones(2, 1, 8, 8)
    mask[..., :2] = 0
    assert softened_kl(t, z, mask=mask) == pytest.approx(0.0, abs=1e-6)
    assert softened_kl(t, z) > 0


def test_shufflenet_unet_scripts_and_matches_eager():
    """The 3D UNet and the ViT segmenter are exported by their bundles' tests; this covers the third student."""
    torch.manual_seed(0)
    net = STUDENTS[3][1]().eval()
    x = torch.randn(1, 1, 32, 64)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_checkpointed_hybrid_recomputation_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    net = StagedViTSegmenter(1, 2, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, decoder_channels=16,
                             checkpoint_hybrid=True).train()
    x = torch.randn(2, 1, 32, 32)
    feats = net.forward_stages(x)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    assert before
    r = torch.randn_like(feats[1], requires_grad=True) * 5
    net.forward_from(1, r, [f.detach() for f in feats]).square().mean().backward()  # forward + recomputation
    for k, v in net.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k]), f"{k} changed"
