"""A :class:`~tools.bundle_specs.BundleSpec` for a new task on the user's own datalist.

``python -m tools.generate_bundles new <name> --task ... --spatial_dims ... --num_classes ... --teacher ...
--student ...`` builds a spec here and renders it with the same templates as the 18 bundles (all configs and
overlays, metadata, README skeleton with every hyper-parameter, licences, ``large_files.yml``). The bundle
reads a Decathlon-format datalist (``--datalist_file``) instead of a public dataset's layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tools.bundle_specs import (
    LVM_MED,
    MEDSAM,
    MERLIN,
    MSA,
    NONZERO_ZSCORE,
    PERCENTILES,
    PMC_CLIP,
    R_RESNET,
    R_SHUFFLE,
    R_UNET,
    R_VIT,
    RADIMAGENET,
    RESNET18_2D,
    RESNET18_3D,
    SAT,
    SCALE,
    SHUFFLENET_UNET,
    SWIN_UMAMBA,
    UNET3D,
    BundleSpec,
    DatasetSpec,
    TeacherSpec,
    ct_window,
)
from tools.bundle_templates.configs import USER_DATASET_KEY

__all__ = ["TEACHERS", "STUDENTS", "new_bundle_spec"]

_NO_FILE = "No file is downloaded for this teacher: give your own with --teacher_checkpoint."

STANDIN = TeacherSpec(
    key="standin", title="ResNet stand-in teacher (MONAI ResNet, not a foundation model)",
    target="drd_components.teachers.ResNetStandInTeacher",
    kwargs={"spatial_dims": "@spatial_dims", "in_channels": "@in_channels", "block_inplanes": [32, 64, 128, 256], "mean": 0.5, "std": 0.25},
    files=({"path": "models/teacher/standin_resnet.pt", "url": ""},),
    download_note="A small MONAI ResNet for pipeline checks; `python tools/pretrain_standin.py` pre-trains one. " + _NO_FILE,
    citation="(stand-in: no foundation model)", licence="The stand-in teacher is generated locally; no third-party weights.",
    taps="`layer1..layer4` of the MONAI ResNet.")
CUSTOM = TeacherSpec(
    key="custom", title="your own teacher (CustomTeacher: any torch.nn.Module or TorchScript file)",
    target="drd_components.teachers.CustomTeacher",
    kwargs={"layer_names": "@teacher_layer_names", "model": "@teacher_model", "torchscript_file": "@teacher_torchscript",
            "checkpoint": "$None if @teacher_torchscript else @teacher_checkpoint", "spatial_dims": "@spatial_dims",
            "in_channels": "@teacher_in_channels", "spatial_size": "@teacher_input_size", "mean": "@teacher_mean",
            "std": "@teacher_std", "channels_last": "@teacher_channels_last"},
    files=({"path": "models/teacher/custom_teacher.pt", "url": ""},),
    download_note="Your model: a state dict for `teacher_model` at the path below, or a TorchScript file given as --teacher_torchscript. " + _NO_FILE,
    citation="(your teacher: cite its authors)", licence="The teacher's weights are yours; read their licence.",
    taps="the sub-modules named in `teacher_layer_names` (forward hooks; graph taps for TorchScript).")
#: teacher key -> (spec, supported spatial_dims)
TEACHERS: dict[str, tuple[TeacherSpec, tuple[int, ...]]] = {
    PMC_CLIP.key: (PMC_CLIP, (2,)), RADIMAGENET.key: (RADIMAGENET, (2,)), LVM_MED.key: (LVM_MED, (2,)),
    MEDSAM.key: (MEDSAM, (2,)), MSA.key: (MSA, (2,)), SWIN_UMAMBA.key: (SWIN_UMAMBA, (2,)),
    MERLIN.key: (MERLIN, (3,)), SAT.key: (SAT, (3,)), STANDIN.key: (STANDIN, (2, 3)), CUSTOM.key: (CUSTOM, (2, 3)),
}
_VIT_TINY = {"_target_": "drd_components.networks.students.vit_segmenter.StagedViTTinySegmenter", "img_size": "@image_size",
             "checkpoint_hybrid": "@checkpoint_hybrid"}
_UNET2D = {"_target_": "drd_components.networks.students.unet.StagedUNet", "spatial_dims": 2, "channels": "@unet_channels",
           "checkpoint_hybrid": "@checkpoint_hybrid"}
#: student key -> {(task, spatial_dims): (network_def, title, reference)}
STUDENTS: dict[str, dict[tuple[str, int], tuple[dict, str, str]]] = {
    "resnet18": {("classification", 2): (RESNET18_2D, "ResNet18 (2D, MONAI ResNet in 4 stages)", R_RESNET),
                 ("classification", 3): (RESNET18_3D, "ResNet3D-18 (MONAI ResNet in 4 stages)", R_RESNET)},
    "shufflenet_unet": {("segmentation", 2): (SHUFFLENET_UNET, "ShuffleNetV2-UNet (ShuffleNetV2 1.0x encoder in 4 stages, U-Net decoder)", R_SHUFFLE)},
    "vit_tiny": {("segmentation", 2): (_VIT_TINY, "ViT-Tiny segmenter (patch-token encoder in 4 stages, light convolutional decoder)", R_VIT)},
    "unet": {("segmentation", 2): (_UNET2D, "2D U-Net (MONAI-style residual UNet in 5 stages)", R_UNET),
             ("segmentation", 3): (UNET3D, "3D U-Net (MONAI-style residual UNet in 5 stages)", R_UNET)},
}
_MODALITIES = ("US", "MR", "CT", "XC", "ES", "OP", "DX", "CR", "PT", "OT", "SM")


def _intensity(value: str) -> dict:
    if value == "scale":
        return SCALE
    if value == "zscore":
        return NONZERO_ZSCORE
    if value == "percentiles":
        return PERCENTILES
    m = re.fullmatch(r"ct:(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)", value.replace(" ", ""))
    if m:
        return ct_window(float(m.group(1)), float(m.group(2)))
    raise ValueError(f"--intensity {value!r}: expected scale, zscore, percentiles or ct:<low>,<high> (HU window).")


def new_bundle_spec(
    name: str,
    task: str,
    spatial_dims: int,
    num_classes: int,
    teacher: str,
    student: str | None = None,
    class_names: Sequence[str] | None = None,
    in_channels: int = 1,
    size: Sequence[int] | None = None,
    modality: str = "OT",
    intensity: str = "scale",
    spacing: Sequence[float] | None = None,
    teacher_size: int | Sequence[int] | None = None,
    title: str | None = None,
    summary: str | None = None,
) -> BundleSpec:
    """The spec of a new bundle on a user datalist.

    Args:
        name: folder name; must contain the task (``..._segmentation`` / ``..._classification``: MONAI Label
            infers the task from it), letters, digits and underscores only.
        task: ``"classification"`` or ``"segmentation"``.
        spatial_dims: 2 or 3.
        num_classes: classes (segmentation: background included).
        teacher: a key of :data:`TEACHERS` (the eight foundation models, ``standin`` or ``custom``).
        student: a key of :data:`STUDENTS` (default: resnet18 / shufflenet_unet / unet by task and dims).
        class_names: names of the classes (default ``class_0 ..``, segmentation ``background, class_1 ..``).
        in_channels: image channels the student takes.
        size: training input size (2D image size, 3D classification size, 3D segmentation patch size).
        modality: DICOM modality code of the input.
        intensity: ``scale`` (min-max to [0, 1]), ``zscore`` (non-zero voxels, per channel), ``percentiles``
            (0.5/99.5 clipped to [0, 1]) or ``ct:<low>,<high>`` (HU window to [0, 1]).
        spacing: target voxel spacing (3D; default: keep the file's grid).
        teacher_size: input size the teacher resizes to, for teachers that have one.
        title: metadata ``name``.
        summary: metadata ``task``.

    Returns:
        the spec.

    Raises:
        ValueError: naming the argument and what is accepted.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name or ""):
        raise ValueError(f"name {name!r}: use letters, digits and underscores, starting with a letter.")
    if task not in ("classification", "segmentation"):
        raise ValueError(f"--task {task!r}: expected classification or segmentation.")
    if task not in name:
        raise ValueError(f"name {name!r} must contain '{task}' (MONAI Label infers the task type from the folder name).")
    if spatial_dims not in (2, 3):
        raise ValueError(f"--spatial_dims {spatial_dims!r}: expected 2 or 3.")
    if int(num_classes) < 2:
        raise ValueError(f"--num_classes {num_classes}: expected at least 2 (segmentation: background included).")
    if teacher not in TEACHERS:
        raise ValueError(f"--teacher {teacher!r}: expected one of {sorted(TEACHERS)}.")
    t_spec, t_dims = TEACHERS[teacher]
    if spatial_dims not in t_dims:
        raise ValueError(f"--teacher {teacher} is a {'/'.join(map(str, t_dims))}D model, the task is {spatial_dims}D; "
                         f"{spatial_dims}D teachers: {sorted(k for k, (_, d) in TEACHERS.items() if spatial_dims in d)}.")
    default_student = {"classification": "resnet18", "segmentation": "shufflenet_unet" if spatial_dims == 2 else "unet"}[task]
    student = student or default_student
    if student not in STUDENTS or (task, spatial_dims) not in STUDENTS[student]:
        fits = sorted(k for k, v in STUDENTS.items() if (task, spatial_dims) in v)
        raise ValueError(f"--student {student!r} does not fit a {spatial_dims}D {task} task; expected one of {fits}.")
    net, student_title, student_ref = STUDENTS[student][(task, spatial_dims)]
    n = int(num_classes)
    if class_names is None:
        class_names = (["background"] + [f"class_{i}" for i in range(1, n)]) if task == "segmentation" else [f"class_{i}" for i in range(n)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != n:
        raise ValueError(f"--class_names has {len(class_names)} names, --num_classes is {n}.")
    modality = modality.upper()
    if modality not in _MODALITIES:
        raise ValueError(f"--modality {modality!r}: expected a DICOM modality code, one of {list(_MODALITIES)}.")
    seg3d = task == "segmentation" and spatial_dims == 3
    default_size = {2: [224, 224] if task == "classification" else [256, 256], 3: [96, 96, 96] if seg3d else [64, 64, 64]}[spatial_dims]
    size = [int(s) for s in (size or default_size)]
    if len(size) != spatial_dims:
        raise ValueError(f"--size {size} must have {spatial_dims} entries.")
    if spacing is not None and spatial_dims != 3:
        raise ValueError("--spacing is for 3D tasks.")

    hyper: dict = {}
    uses = " ".join(str(v) for v in t_spec.kwargs.values())
    if "@teacher_spatial_size" in uses:
        default_t = {"medsam": 1024, "medical_sam_adapter": 1024, "swin_umamba": [256, 256], "merlin": [224, 224, 160],
                     "sat_nano": [288, 288, 96]}[teacher]
        value = teacher_size if teacher_size is not None else default_t
        hyper["teacher_spatial_size"] = (list(value) if isinstance(value, (list, tuple)) else int(value), "input size the teacher resizes to")
    if "@teacher_modality" in uses:
        hyper["teacher_modality"] = ("ct" if modality == "CT" else "mr", "SAT modality prompt for the teacher's preprocessing")
    if teacher == "custom":
        hyper.update({
            "teacher_model": ({"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": "@spatial_dims", "in_channels": "@teacher_in_channels",
                               "out_channels": 2, "_disabled_": "$bool(@teacher_torchscript)"},
                              "the teacher network (any `_target_`; ignored when `teacher_torchscript` is set)"),
            "teacher_torchscript": (None, "a TorchScript file to use as the teacher instead of `teacher_model`"),
            "teacher_layer_names": (["features.denseblock1", "features.denseblock2", "features.denseblock3", "features.denseblock4"],
                                    "sub-modules of the teacher whose outputs are distilled (shallow to deep)"),
            "teacher_in_channels": (3, "input channels of the teacher (grey images are repeated)"),
            "teacher_input_size": (None, "input size the teacher resizes to (null: the training size)"),
            "teacher_mean": (0.0, "teacher input normalisation mean (after scaling to [0, 1])"),
            "teacher_std": (1.0, "teacher input normalisation std"),
            "teacher_channels_last": (False, "the tapped maps are channels-last (B x spatial x C)"),
        })
    if student == "unet" and spatial_dims == 2:
        hyper["unet_channels"] = ([16, 32, 64, 128, 256], "channels of the 5 U-Net levels")
    if student == "vit_tiny":
        hyper.update(learning_rate=(0.0005, "AdamW learning rate"), weight_decay=(0.01, "AdamW weight decay"))

    dataset = DatasetSpec(
        key=USER_DATASET_KEY, title="your datalist", citation="(your data: cite its source)", source="--datalist_file",
        licence="Your own data: this bundle reads it through --datalist_file and redistributes nothing.",
        module="drd_components.data.user_datalist", datalist="$drd_components.data.user_datalist.load_user_datalist(@datalist_file)",
        dataset_dir=f"/workspace/data/{name}", data_type="nifti" if spatial_dims == 3 else "png", hyper={})
    dims = f"{spatial_dims}D"
    shape = " x ".join(map(str, size))
    image_text = (f"{in_channels} channel {dims} image, intensity '{intensity}', "
                  + (f"resized to {shape}" if not seg3d else f"patches of {shape}" + (f", resampled to {spacing} mm" if spacing else "")))
    return BundleSpec(
        name=name, row=0, paper=False, task=task, spatial_dims=spatial_dims,
        title=title or f"{name.replace('_', ' ')} (DRD)", summary=summary or f"{dims} {task} into {', '.join(class_names)}",
        modality=modality, class_names=tuple(class_names), in_channels=int(in_channels), dataset=dataset, teacher=t_spec,
        student=net, student_title=student_title, size=tuple(size), hyper=hyper, intensity=_intensity(intensity),
        image_text=image_text, label_text=", ".join(f"{i} {c}" for i, c in enumerate(class_names)),
        references=(student_ref,) + ((t_spec.citation,) if not t_spec.citation.startswith("(") else ()),
        short_names=tuple(class_names[1:]) if task == "segmentation" else (),
        spacing=tuple(float(s) for s in spacing) if spacing is not None else None,
        format="hounsfield" if intensity.startswith("ct:") else "magnitude",
        extras={"mask_threshold": 127} if (task == "segmentation" and spatial_dims == 2) else {},
    )
