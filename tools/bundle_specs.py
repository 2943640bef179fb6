"""The 18 tasks of the collection, as data: one :class:`BundleSpec` per bundle.

``tools/generate_bundles.py`` renders every bundle folder (configs, metadata, README, licences,
``large_files.yml``) from these specs and the family templates in ``tools/bundle_templates``. Prose
that is specific to one bundle (its data section, measured performance, limitations) lives in
``tools/bundle_docs/<name>.md``. Edit here, then run ``python -m tools.generate_bundles generate``;
``tests/test_bundle_generator.py`` fails when a checked-in bundle differs from the generated one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: papers every bundle cites
DRD_REFERENCES = (
    "Zhou Y, et al. Reprogramming Distillation for Medical Foundation Models. MICCAI 2024. arXiv:2407.06504.",
    "Du et al. Deep Reprogramming Distillation for Medical Foundation Models. arXiv:2605.04447, 2026.",
    "Kornblith S, Norouzi M, Lee H, Hinton G. Similarity of Neural Network Representations Revisited. ICML 2019 (CKA).",
)


@dataclass(frozen=True)
class TeacherSpec:
    """A frozen foundation-model teacher as the bundles use it.

    Attributes:
        key: short id (``tools/download_teacher.py``, README anchors).
        title: human name.
        target: ``_target_`` of the teacher class.
        kwargs: constructor arguments besides ``checkpoint``/``sha256`` (config expressions allowed).
        files: ``large_files.yml`` entries: dicts with path, url, hash_val, hash_type.
        checkpoint_arg: the ``large_files`` path given as ``checkpoint`` (the first file by default).
        extra_checkpoint_args: further constructor arguments naming a large file (e.g. the SAM base of MSA).
        download_note: how to obtain the file(s) (comment in ``large_files.yml``, README).
        citation: reference.
        licence: licence text for ``docs/data_license.txt``.
        taps: one sentence on which features are tapped.
    """

    key: str
    title: str
    target: str
    kwargs: dict
    files: tuple
    download_note: str
    citation: str
    licence: str
    taps: str
    extra_checkpoint_args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a bundle's data comes from and how its datalist is built.

    Attributes:
        key: the ``tools/prepare_data.py`` command.
        title: short name.
        citation: reference.
        source: official URL.
        licence: licence text for ``docs/data_license.txt``.
        module: module holding the datalist function (imported by the configs).
        datalist: config expression building the datalist (uses ``@dataset_dir`` and ids of ``hyper``).
        dataset_dir: default ``dataset_dir``.
        data_type: metadata ``data_type``.
        hyper: dataset-specific top-level ids (split fractions, seeds, limits), with descriptions.
    """

    key: str
    title: str
    citation: str
    source: str
    licence: str
    module: str
    datalist: str
    dataset_dir: str
    data_type: str
    hyper: dict


@dataclass(frozen=True)
class BundleSpec:
    """One bundle of the collection.

    Attributes:
        name: folder name (model-zoo style; contains "classification" or "segmentation").
        row: row number in ``shared/docs/collection.md``.
        paper: whether the DRD paper reports this task.
        task: ``"classification"`` or ``"segmentation"``.
        spatial_dims: 2 or 3.
        title: metadata ``name``.
        summary: metadata ``task`` (one line).
        modality: DICOM modality code of the input (US, MR, CT, XC, ES, OP, DX).
        class_names: output classes (segmentation: background first).
        short_names: short per-class names for per-structure metrics (segmentation, foreground only).
        in_channels: student input channels.
        dataset: the data.
        teacher: the teacher.
        student: ``network_def`` (without in/out channels).
        student_title: human name of the student.
        size: training input size (classification image size, or segmentation patch size).
        hyper: training hyper-parameters overriding the family defaults, with descriptions.
        intensity: intensity transform (without keys) applied to the image.
        spacing: target voxel spacing (3D; ``None``: keep).
        image_text: metadata ``image_classes`` (what the network sees).
        label_text: metadata ``label_classes``.
        value_range: input value range after preprocessing (metadata).
        format: metadata input ``format`` (magnitude / hounsfield).
        extras: family-specific switches (see the templates).
        references: dataset/teacher/student references (the DRD papers are added).
    """

    name: str
    row: int
    paper: bool
    task: str
    spatial_dims: int
    title: str
    summary: str
    modality: str
    class_names: tuple
    in_channels: int
    dataset: DatasetSpec
    teacher: TeacherSpec
    student: dict
    student_title: str
    size: tuple
    hyper: dict
    intensity: dict
    image_text: str
    label_text: str
    references: tuple
    short_names: tuple = ()
    spacing: tuple | None = None
    value_range: tuple = (0, 1)
    format: str = "magnitude"
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# teachers
# --------------------------------------------------------------------------------------------
_NO_HASH = "The authors publish no checksum: hash_val is empty, so record the sha256 of your copy and pass it as --teacher_sha256 (the teacher checks it before loading)."

PMC_CLIP = TeacherSpec(
    key="pmc_clip",
    title="PMC-CLIP image encoder (ResNet-50 visual tower)",
    target="drd_components.teachers.PMCCLIPTeacher",
    kwargs={},
    files=({"path": "models/teacher/image_encoder(resnet50).pth",
            "url": "https://huggingface.co/datasets/axiong/pmc_oa/resolve/main/image_encoder(resnet50).pth"},),
    download_note="Direct download from the Hugging Face dataset repository axiong/pmc_oa. " + _NO_HASH,
    citation="Lin W, Zhao Z, Zhang X, Wu C, Zhang Y, Wang Y, Xie W. PMC-CLIP: Contrastive Language-Image Pre-training using Biomedical Documents. MICCAI 2023.",
    licence="Released on the Hugging Face dataset repository axiong/pmc_oa. The code is MIT licensed; no licence for the weights was found in the files we could read. Check the release before any commercial use.",
    taps="`layer1..layer4` of the modified ResNet-50 (256/512/1024/2048 channels, strides 4/8/16/32); the teacher resizes to 224, repeats grey to RGB and applies CLIP's mean/std itself.",
)
RADIMAGENET = TeacherSpec(
    key="radimagenet_densenet121",
    title="RadImageNet DenseNet-121",
    target="drd_components.teachers.RadImageNetDenseNet121Teacher",
    kwargs={},
    files=({"path": "models/teacher/DenseNet121.pt", "url": ""},),
    download_note="Gated: request access through the BMEII-AI/RadImageNet README (Google Drive folder with RadImageNet_pytorch.zip), place RadImageNet_pytorch/DenseNet121.pt at the path below. " + _NO_HASH,
    citation="Mei X, et al. RadImageNet: An Open Radiologic Deep Learning Research Dataset for Effective Transfer Learning. Radiology: Artificial Intelligence 4(5):e210315, 2022.",
    licence="RadImageNet weights are distributed by the BMEII-AI lab on request for non-commercial research; read their terms before use.",
    taps="the four dense blocks of DenseNet-121 (256/512/1024/1024 channels, strides 4/8/16/32); the teacher resizes to 224 and applies the RadImageNet normalisation itself.",
)
LVM_MED = TeacherSpec(
    key="lvm_med",
    title="LVM-Med ResNet-50",
    target="drd_components.teachers.LVMMedResNet50Teacher",
    kwargs={},
    files=({"path": "models/teacher/lvmmed_resnet.torch", "url": ""},),
    download_note="Google Drive link in the duyhominhnguyen/LVM-Med README (lvmmed_resnet.torch); browsers only, so put the file at the path below. " + _NO_HASH,
    citation="Nguyen DMH, et al. LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical Imaging via Second-order Graph Matching. NeurIPS 2023.",
    licence="LVM-Med code and weights are released on GitHub (duyhominhnguyen/LVM-Med) for research; check the repository licence before commercial use.",
    taps="`layer1..layer4` of the torchvision-layout ResNet-50 (256/512/1024/2048 channels); the teacher resizes to 224 and applies ImageNet mean/std itself.",
)
MERLIN = TeacherSpec(
    key="merlin",
    title="Merlin image encoder (I3D ResNet-152)",
    target="drd_components.teachers.MerlinTeacher",
    kwargs={"spatial_size": "@teacher_spatial_size", "hu_window": None},
    files=({"path": "models/teacher/i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt",
            "url": "https://huggingface.co/stanfordmimi/Merlin/resolve/main/i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"},),
    download_note="Direct download from the Hugging Face repository stanfordmimi/Merlin (only the image encoder, keys encode_image.i3_resnet.*, is used). " + _NO_HASH,
    citation="Blankemeier L, et al. Merlin: A Vision Language Foundation Model for 3D Computed Tomography. arXiv:2406.06512, 2024.",
    licence="Merlin weights are released on Hugging Face (stanfordmimi/Merlin) under the licence stated on the model card; read it before use.",
    taps="the four residual stages of the inflated ResNet-152 (256/512/1024/2048 channels); the bundle feeds intensities already scaled to [0, 1] (`hu_window: null`) and the teacher resizes to `teacher_spatial_size`.",
)
_SAM_BASE = {"path": "models/teacher/sam_vit_b_01ec64.pth", "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"}
MEDSAM = TeacherSpec(
    key="medsam",
    title="MedSAM image encoder (SAM ViT-B)",
    target="drd_components.teachers.sam_vit.MedSAMTeacher",
    kwargs={"spatial_size": "@teacher_spatial_size"},
    files=({"path": "models/teacher/medsam_vit_b.pth", "url": ""},),
    download_note="medsam_vit_b.pth is shared through a Google Drive folder (bowang-lab/MedSAM README, 'Get Started'): open it in a browser and put the file at the path below. " + _NO_HASH,
    citation="Ma J, He Y, Li F, Han L, You C, Wang B. Segment anything in medical images (MedSAM). Nature Communications 15, 654 (2024).",
    licence="MedSAM code and weights are released under the Apache-2.0 licence (bowang-lab/MedSAM).",
    taps="the outputs of ViT blocks 3, 6, 9 and 12 (768-channel token grids at stride 16), reshaped to maps; the teacher resizes to 1024 and applies SAM's normalisation itself.",
)
MSA = TeacherSpec(
    key="medical_sam_adapter",
    title="Medical SAM Adapter (SAM ViT-B + adapters)",
    target="drd_components.teachers.MedicalSAMAdapterTeacher",
    kwargs={"spatial_size": "@teacher_spatial_size"},
    files=({"path": "models/teacher/Polyp_SAM_1024.pth", "url": ""}, _SAM_BASE),
    extra_checkpoint_args={"sam_checkpoint": "models/teacher/sam_vit_b_01ec64.pth"},
    download_note="Adapter weights from the Medical-Adapter-Zoo (huggingface.co/KidsWithTokens/Medical-Adapter-Zoo, linked from SuperMedIntel/Medical-SAM-Adapter; choose the polyp/endoscopy adapter and save it under the path below); the SAM ViT-B base from Meta (sam_vit_b_01ec64.pth, direct download). " + _NO_HASH,
    citation="Wu J, et al. Medical SAM Adapter: Adapting Segment Anything Model for Medical Image Segmentation. Medical Image Analysis 102:103547, 2025.",
    licence="Medical SAM Adapter code: GPL-3.0 (SuperMedIntel/Medical-SAM-Adapter); SAM base weights: Apache-2.0 (Meta). Read both before use.",
    taps="the outputs of ViT blocks 3, 6, 9 and 12 with their adapters (768-channel token grids at stride 16).",
)
SWIN_UMAMBA = TeacherSpec(
    key="swin_umamba",
    title="Swin-UMamba encoder (VMamba)",
    target="drd_components.teachers.SwinUMambaTeacher",
    kwargs={"spatial_size": "@teacher_spatial_size", "in_channels": 3},
    files=({"path": "models/teacher/checkpoint_final.pth", "url": ""},),
    download_note="nnU-Net results tree shared on Google Drive (JiarunLiu/Swin-UMamba README): take the Endoscopy model (RGB input, Dataset704, nnUNetTrainerSwinUMamba__nnUNetPlans__2d/fold_all/checkpoint_final.pth) and put it at the path below. " + _NO_HASH,
    citation="Liu J, et al. Swin-UMamba: Mamba-based UNet with ImageNet-based Pretraining. MICCAI 2024.",
    licence="Swin-UMamba code is Apache-2.0 (JiarunLiu/Swin-UMamba); the trained checkpoints are shared by the authors for research.",
    taps="the four VMamba encoder stages (96/192/384/768 channels, strides 4/8/16/32); the selective scan is the pure-PyTorch implementation of drd_components (no CUDA kernels needed).",
)
SAT = TeacherSpec(
    key="sat_nano",
    title="SAT-Nano visual encoder (3D U-Net)",
    target="drd_components.teachers.sat.SATTeacher",
    kwargs={"variant": "nano", "modality": "@teacher_modality", "spatial_size": "@teacher_spatial_size",
            "input_channel": "@teacher_input_channel"},
    files=({"path": "models/teacher/nano.pth", "url": "https://huggingface.co/zzh99/SAT/resolve/main/Nano/nano.pth"},),
    download_note="Official SAT-Nano model file from the Hugging Face repository zzh99/SAT (1.5 GB, {step, model_state_dict, optimizer_state_dict}); only the image encoder (module.backbone.encoder.*) is used. " + _NO_HASH,
    citation="Zhao Z, et al. One Model to Rule them All: Towards Universal Segmentation for Medical Images with Text Prompts (SAT). arXiv:2312.17183; npj Digital Medicine 8:566 (2025).",
    licence="SAT code and weights are released by the authors (zhaoziheng/SAT, zzh99/SAT on Hugging Face) for research; read the model card before use.",
    taps="encoder levels 2-5 of SAT's 3D U-Net backbone; the teacher resizes to `teacher_spatial_size`.",
)

# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
_SPLIT = {
    "val_fraction": (0.15, "fraction of the cases used for validation"),
    "test_fraction": (0.15, "fraction of the cases held out for testing"),
    "split_seed": (0, "seed of the deterministic split"),
}


def _split(val: float = 0.15, test: float | None = 0.15) -> dict:
    out = {"val_fraction": (val, _SPLIT["val_fraction"][1])}
    if test is not None:
        out["test_fraction"] = (test, _SPLIT["test_fraction"][1])
    out["split_seed"] = _SPLIT["split_seed"]
    return out


BUSI_CITATION = "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief 28 (2020) 104863."
BUSI_LICENCE = "Released by the authors through the Cairo University scholar page of A. Fahmy. No standard open licence is stated by the source; the authors ask users to cite the article above. Treat it as research use with citation. This repository does not redistribute the images."
MEDMNIST_CITATION = "Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification. Scientific Data 10, 41 (2023)."
MEDMNIST_LICENCE = "MedMNIST v2 is released under CC BY 4.0 (the source datasets keep their own licences; see medmnist.com)."
MSD_CITATION = "Antonelli M, et al. The Medical Segmentation Decathlon. Nature Communications 13, 4128 (2022)."
MSD_LICENCE = "The Medical Segmentation Decathlon data are released under CC BY-SA 4.0 (medicaldecathlon.com)."


def _medmnist(flag: str, title: str) -> DatasetSpec:
    return DatasetSpec(
        key=flag, title=title, citation=MEDMNIST_CITATION, source=f"https://zenodo.org/records/10519652/files/{flag}.npz",
        licence=MEDMNIST_LICENCE, module="drd_components.data.medmnist",
        datalist=f"$drd_components.data.medmnist.medmnist_datalist(@dataset_dir, @output_dir + '/datalist.json', flag='{flag}', verify_md5=@verify_md5)",
        dataset_dir=f"/workspace/data/medmnist", data_type="png" if "3d" not in flag else "nifti",
        hyper={"verify_md5": (True, "check the official MD5 of the .npz before converting it")},
    )


def _msd(task: str, folder: str) -> DatasetSpec:
    return DatasetSpec(
        key=f"msd_{task}", title=f"MSD {folder}", citation=MSD_CITATION, source=f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{folder}.tar",
        licence=MSD_LICENCE, module="drd_components.data.msd",
        datalist="$drd_components.data.msd.msd_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed, @max_cases)",
        dataset_dir=f"/workspace/data/{folder}", data_type="nifti",
        hyper=dict(_split(0.1, 0.1), max_cases=(None, "use only this many labelled cases (null: all)")),
    )


DATASETS = {
    "busi": DatasetSpec(
        key="busi", title="BUSI", citation=BUSI_CITATION, source="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset", licence=BUSI_LICENCE,
        module="drd_components.data.busi",
        datalist="$drd_components.data.busi_classification_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed)",
        dataset_dir="/workspace/data/busi", data_type="png", hyper=_split()),
    "busi_seg": DatasetSpec(
        key="busi", title="BUSI masks", citation=BUSI_CITATION, source="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset", licence=BUSI_LICENCE,
        module="drd_components.data.busi_segmentation",
        datalist="$drd_components.data.busi_segmentation.busi_segmentation_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed, @busi_classes, True, @max_per_class)",
        dataset_dir="/workspace/data/busi", data_type="png",
        hyper=dict(_split(), busi_classes=(["benign", "malignant"], "BUSI classes whose images are used (normal images have empty masks)"),
                   max_per_class=(None, "use at most this many images per class (null: all)"))),
    "brain_tumor_mri": DatasetSpec(
        key="brain_tumor_mri", title="Brain Tumor Classification (MRI)",
        citation="Bhuvaji S, Kadam A, Bhumkar P, Dedge S, Kanchan S. Brain Tumor Classification (MRI). Kaggle / GitHub SartajBhuvaji/Brain-Tumor-Classification-DataSet, 2020. doi:10.34740/KAGGLE/DSV/1183165",
        source="https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet",
        licence="Published on GitHub and Kaggle by the authors without an explicit licence; research use with citation. This repository does not redistribute the images.",
        module="drd_components.data.brain_tumor",
        datalist="$drd_components.data.brain_tumor.brain_tumor_mri_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @split_seed, @move_duplicates)",
        dataset_dir="/workspace/data/brain_tumor_mri", data_type="jpeg",
        hyper=dict(_split(0.15, None), move_duplicates=(True, "keep every group of (near-)identical images on one side of the split (report: datalist_duplicates.json)"))),
    "ham10000": DatasetSpec(
        key="ham10000", title="HAM10000 (ISIC 2018 task 3)",
        citation="Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common pigmented skin lesions. Scientific Data 5, 180161 (2018).",
        source="https://doi.org/10.7910/DVN/DBW86T", licence="HAM10000 is released under CC BY-NC 4.0 (Harvard Dataverse).",
        module="drd_components.data.ham10000",
        datalist="$drd_components.data.ham10000.ham10000_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed)",
        dataset_dir="/workspace/data/HAM10000", data_type="jpeg", hyper=_split()),
    "pneumonia_xray": DatasetSpec(
        key="pneumonia_xray", title="Pediatric chest X-ray pneumonia (Kermany et al.)",
        citation="Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning. Cell 172(5):1122-1131, 2018.",
        source="https://data.mendeley.com/datasets/rscbjbr9sj/2", licence="Released on Mendeley Data under CC BY 4.0.",
        module="drd_components.data.pneumonia",
        datalist="$drd_components.data.pneumonia.pneumonia_xray_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @split_seed)",
        dataset_dir="/workspace/data/chest_xray", data_type="jpeg", hyper=_split(0.1, None)),
    "retinamnist": _medmnist("retinamnist", "RetinaMNIST"),
    "nodulemnist3d": _medmnist("nodulemnist3d", "NoduleMNIST3D"),
    "vesselmnist3d": _medmnist("vesselmnist3d", "VesselMNIST3D"),
    "fives": DatasetSpec(
        key="fives", title="FIVES",
        citation="Jin K, Huang X, Zhou J, et al. FIVES: A Fundus Image Dataset for Artificial Intelligence based Vessel Segmentation. Scientific Data 9, 475 (2022).",
        source="https://doi.org/10.6084/m9.figshare.19688169", licence="FIVES is released on figshare under CC BY 4.0.",
        module="drd_components.data.fives",
        datalist="$drd_components.data.fives.fives_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @split_seed)",
        dataset_dir="/workspace/data/FIVES", data_type="png", hyper=_split(0.1, None)),
    "kvasir_seg": DatasetSpec(
        key="kvasir_seg", title="Kvasir-SEG",
        citation="Jha D, Smedsrud PH, Riegler MA, et al. Kvasir-SEG: A Segmented Polyp Dataset. MMM 2020, LNCS 11962.",
        source="https://datasets.simula.no/kvasir-seg/", licence="Kvasir-SEG may be used for research and educational purposes with citation (terms on the dataset page); commercial use needs permission.",
        module="drd_components.data.kvasir",
        datalist="$drd_components.data.kvasir.kvasir_seg_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed)",
        dataset_dir="/workspace/data/Kvasir-SEG", data_type="jpeg", hyper=_split(0.1, 0.1)),
    "isic2018_seg": DatasetSpec(
        key="isic2018_seg", title="ISIC 2018 task 1",
        citation="Codella N, et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the International Skin Imaging Collaboration (ISIC). arXiv:1902.03368; Tschandl P, et al. Scientific Data 5, 180161 (2018).",
        source="https://challenge.isic-archive.com/data/#2018", licence="ISIC 2018 challenge data are released under CC BY-NC 4.0.",
        module="drd_components.data.isic_segmentation",
        datalist="$drd_components.data.isic_segmentation.isic2018_segmentation_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @split_seed)",
        dataset_dir="/workspace/data/ISIC2018", data_type="jpeg", hyper=_split(0.1, None)),
    "acdc": DatasetSpec(
        key="acdc", title="ACDC",
        citation="Bernard O, Lalande A, Zotti C, Cervenansky F, et al. Deep Learning Techniques for Automatic MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved? IEEE Transactions on Medical Imaging 37(11):2514-2525, 2018. doi:10.1109/TMI.2018.2837502",
        source="https://www.creatis.insa-lyon.fr/Challenge/acdc/", licence="ACDC is released under CC BY-NC-SA 4.0 (non-commercial; citing Bernard et al. 2018 is mandatory).",
        module="drd_components.data.acdc",
        datalist="$drd_components.data.acdc.acdc_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed, @max_patients_per_group)",
        dataset_dir="/workspace/data/ACDC", data_type="nifti",
        hyper=dict(_split(0.2, 0.2), max_patients_per_group=(None, "use at most this many patients per pathology group (null: all)"))),
    "mosmeddata": DatasetSpec(
        key="mosmeddata", title="MosMedData (COVID19_1110)",
        citation="Morozov SP, Andreychenko AE, Pavlov NA, et al. MosMedData: Chest CT Scans With COVID-19 Related Findings Dataset. arXiv:2005.06465, 2020.",
        source="https://mosmed.ai/datasets/covid19_1110/", licence="MosMedData is released under CC BY-NC-ND 3.0 by the Moscow Center for Diagnostics and Telemedicine.",
        module="drd_components.data.mosmed",
        datalist="$drd_components.data.mosmed.mosmeddata_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed)",
        dataset_dir="/workspace/data/COVID19_1110", data_type="nifti", hyper=_split()),
    "msd_spleen": _msd("spleen", "Task09_Spleen"),
    "msd_prostate": _msd("prostate", "Task05_Prostate"),
    "msd_pancreas": _msd("pancreas", "Task07_Pancreas"),
    "msd_hippocampus": _msd("hippocampus", "Task04_Hippocampus"),
    "btcv": DatasetSpec(
        key="btcv", title="BTCV (Synapse multi-organ)",
        citation="Landman B, Xu Z, Iglesias JE, Styner M, Langerak TR, Klein A. MICCAI Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge, 2015. doi:10.7303/syn3193805",
        source="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789", licence="BTCV is distributed through Synapse after registration under the challenge's data use terms (research only, no redistribution).",
        module="drd_components.data.btcv",
        datalist="$drd_components.data.btcv.btcv_gallbladder_datalist(@dataset_dir, @output_dir + '/datalist.json', @val_fraction, @test_fraction, @split_seed)",
        dataset_dir="/workspace/data/BTCV", data_type="nifti", hyper=_split()),
}

# --------------------------------------------------------------------------------------------
# students and intensity transforms
# --------------------------------------------------------------------------------------------
RESNET18_2D = {"_target_": "drd_components.networks.StagedResNet18", "spatial_dims": 2}
RESNET18_3D = {"_target_": "drd_components.networks.StagedResNet18", "spatial_dims": 3}
SHUFFLENET_UNET = {"_target_": "drd_components.networks.students.shufflenet_unet.StagedShuffleNetV2UNet", "checkpoint_hybrid": "@checkpoint_hybrid"}
UNET3D = {"_target_": "drd_components.networks.students.unet.StagedUNet3D", "channels": "@unet_channels", "checkpoint_hybrid": "@checkpoint_hybrid"}
SCALE = {"_target_": "ScaleIntensityd"}
PERCENTILES = {"_target_": "ScaleIntensityRangePercentilesd", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}
NONZERO_ZSCORE = {"_target_": "NormalizeIntensityd", "nonzero": True, "channel_wise": True}


def ct_window(low: float, high: float) -> dict:
    """CT window ``[low, high]`` HU mapped to ``[0, 1]``."""
    return {"_target_": "ScaleIntensityRanged", "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0, "clip": True}


def _cls2d(name, row, paper, title, summary, modality, classes, dataset, teacher, in_channels, image_text, references, size=(224, 224),
           extras=None, **hyper):
    return BundleSpec(
        name=name, row=row, paper=paper, task="classification", spatial_dims=2, title=title, summary=summary, modality=modality,
        class_names=tuple(classes), in_channels=in_channels, dataset=DATASETS[dataset], teacher=teacher, student=RESNET18_2D,
        student_title="ResNet18 (2D, MONAI ResNet in 4 stages)", size=tuple(size), hyper=hyper, intensity=SCALE, image_text=image_text,
        label_text=", ".join(f"{i} {c}" for i, c in enumerate(classes)), references=references, extras=extras or {})


def _cls3d(name, row, paper, title, summary, modality, classes, dataset, teacher, intensity, image_text, references, size, teacher_size, fmt="magnitude", spacing=None, **hyper):
    return BundleSpec(
        name=name, row=row, paper=paper, task="classification", spatial_dims=3, title=title, summary=summary, modality=modality,
        class_names=tuple(classes), in_channels=1, dataset=DATASETS[dataset], teacher=teacher, student=RESNET18_3D,
        student_title="ResNet3D-18 (MONAI ResNet in 4 stages)", size=tuple(size), intensity=intensity, image_text=image_text,
        label_text=", ".join(f"{i} {c}" for i, c in enumerate(classes)), references=references, format=fmt, spacing=spacing,
        hyper=dict(hyper, teacher_spatial_size=(list(teacher_size), "input size the teacher resizes to")))


def _seg2d(name, row, paper, title, summary, modality, foreground, dataset, teacher, student, student_title, in_channels, size, teacher_size, image_text, references, extras=None, **hyper):
    return BundleSpec(
        name=name, row=row, paper=paper, task="segmentation", spatial_dims=2, title=title, summary=summary, modality=modality,
        class_names=("background", foreground), in_channels=in_channels, dataset=DATASETS[dataset], teacher=teacher, student=student,
        student_title=student_title, size=tuple(size), intensity=SCALE, image_text=image_text, label_text=f"0 background, 1 {foreground}",
        references=references, extras=extras or {},
        hyper=dict(hyper, teacher_spatial_size=(teacher_size, "input size the teacher resizes to")))


def _seg3d(name, row, paper, title, summary, modality, classes, short, dataset, intensity, spacing, size, teacher_size, image_text, label_text, references,
           in_channels=1, fmt="magnitude", extras=None, **hyper):
    hyper = dict(hyper)
    hyper.setdefault("teacher_modality", ("ct" if modality == "CT" else "mr", "SAT modality prompt for the teacher's preprocessing"))
    hyper["teacher_spatial_size"] = (list(teacher_size), "input size the teacher resizes to")
    hyper.setdefault("teacher_input_channel", (0, "input channel the single-modality SAT teacher sees (0: the first, e.g. T2)"))
    return BundleSpec(
        name=name, row=row, paper=paper, task="segmentation", spatial_dims=3, title=title, summary=summary, modality=modality,
        class_names=tuple(classes), short_names=tuple(short), in_channels=in_channels, dataset=DATASETS[dataset], teacher=SAT,
        student=UNET3D, student_title="3D U-Net (MONAI-style residual UNet in 5 stages)", size=tuple(size), intensity=intensity,
        spacing=tuple(spacing), image_text=image_text, label_text=label_text, references=references, format=fmt, extras=extras or {},
        hyper=hyper)


R_RESNET = "He K, Zhang X, Ren S, Sun J. Deep Residual Learning for Image Recognition. CVPR 2016."
R_SHUFFLE = "Ma N, Zhang X, Zheng HT, Sun J. ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design. ECCV 2018."
R_UNET = "Cicek O, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation. MICCAI 2016."
R_VIT = "Dosovitskiy A, et al. An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. ICLR 2021."

BUNDLES: tuple[BundleSpec, ...] = (
    _cls2d("busi_ultrasound_classification", 1, True, "BUSI ultrasound classification (DRD)",
           "Breast ultrasound image classification into benign, malignant and normal", "US", ("benign", "malignant", "normal"), "busi", PMC_CLIP, 1,
           "single channel grey-level ultrasound image, intensity scaled to [0, 1], resized to 224 x 224",
           (BUSI_CITATION, PMC_CLIP.citation, R_RESNET), extras={"inference_exclude": ["_mask"]}),
    _cls2d("brain_tumor_mri_classification", 2, True, "Brain tumour MRI classification (DRD)",
           "Brain MRI slice classification into glioma, meningioma, no tumour and pituitary tumour", "MR",
           ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"), "brain_tumor_mri", RADIMAGENET, 1,
           "single channel MRI slice, intensity scaled to [0, 1], resized to 224 x 224",
           (DATASETS["brain_tumor_mri"].citation, RADIMAGENET.citation, R_RESNET)),
    _cls2d("skin_lesion_dermoscopy_classification", 3, False, "Dermoscopy skin lesion classification (DRD)",
           "Dermoscopic image classification into the 7 HAM10000 diagnostic categories", "XC",
           ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), "ham10000", LVM_MED, 3,
           "RGB dermoscopic image, intensity scaled to [0, 1], resized to 224 x 224",
           (DATASETS["ham10000"].citation, LVM_MED.citation, R_RESNET)),
    _cls2d("pneumonia_xray_classification", 4, False, "Pediatric chest X-ray pneumonia classification (DRD)",
           "Chest radiograph classification into normal and pneumonia", "DX", ("normal", "pneumonia"), "pneumonia_xray", RADIMAGENET, 1,
           "single channel chest radiograph, intensity scaled to [0, 1], resized to 224 x 224",
           (DATASETS["pneumonia_xray"].citation, RADIMAGENET.citation, R_RESNET)),
    _cls2d("retina_fundus_classification", 5, False, "Retinal fundus diabetic-retinopathy grading (DRD)",
           "Diabetic retinopathy grading (0-4) of 28 x 28 colour fundus photographs (RetinaMNIST)", "OP",
           ("grade_0", "grade_1", "grade_2", "grade_3", "grade_4"), "retinamnist", LVM_MED, 3,
           "RGB fundus photograph (MedMNIST 28 x 28), intensity scaled to [0, 1], resized to 64 x 64",
           (MEDMNIST_CITATION, LVM_MED.citation, R_RESNET), size=(64, 64)),
    _seg2d("fives_fundus_vessel_segmentation", 6, True, "Fundus vessel segmentation (DRD)", "Retinal vessel segmentation in colour fundus photographs",
           "OP", "vessel", "fives", MEDSAM, SHUFFLENET_UNET, "ShuffleNetV2-UNet (ShuffleNetV2 1.0x encoder in 4 stages, U-Net decoder)", 3, (512, 512), 1024,
           "RGB fundus photograph, intensity scaled to [0, 1], longest side resized to 512 and zero-padded to 512 x 512",
           (DATASETS["fives"].citation, MEDSAM.citation, R_SHUFFLE), extras={"mask_threshold": 127}),
    _seg2d("busi_ultrasound_segmentation", 7, False, "BUSI ultrasound lesion segmentation (DRD)", "Breast lesion segmentation in 2D B-mode ultrasound images",
           "US", "lesion", "busi_seg", MEDSAM,
           {"_target_": "drd_components.networks.students.vit_segmenter.StagedViTTinySegmenter", "img_size": "@image_size", "checkpoint_hybrid": "@checkpoint_hybrid"},
           "ViT-Tiny segmenter (patch-token encoder in 4 stages, light convolutional decoder)", 1, (256, 256), 1024,
           "single channel grey-level ultrasound image, intensity scaled to [0, 1], longest side resized to 256 and zero-padded to 256 x 256",
           (BUSI_CITATION, MEDSAM.citation, R_VIT, "Zheng S, et al. Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers (SETR). CVPR 2021."),
           extras={"mask_key": "masks", "inference_exclude": ["_mask"]}, learning_rate=(0.0005, "AdamW learning rate"), weight_decay=(0.01, "AdamW weight decay")),
    _seg2d("polyp_endoscopy_segmentation", 8, False, "Endoscopic polyp segmentation (DRD)", "Polyp segmentation in colonoscopy frames",
           "ES", "polyp", "kvasir_seg", MSA, SHUFFLENET_UNET, "ShuffleNetV2-UNet (ShuffleNetV2 1.0x encoder in 4 stages, U-Net decoder)", 3, (352, 352), 1024,
           "RGB colonoscopy frame, intensity scaled to [0, 1], longest side resized to 352 and zero-padded to 352 x 352",
           (DATASETS["kvasir_seg"].citation, MSA.citation, R_SHUFFLE), extras={"mask_threshold": 127}),
    _seg2d("skin_lesion_segmentation", 9, False, "Dermoscopy skin lesion segmentation (DRD)", "Skin lesion segmentation in dermoscopic images",
           "XC", "lesion", "isic2018_seg", SWIN_UMAMBA, SHUFFLENET_UNET, "ShuffleNetV2-UNet (ShuffleNetV2 1.0x encoder in 4 stages, U-Net decoder)", 3, (256, 256), [256, 256],
           "RGB dermoscopic image, intensity scaled to [0, 1], longest side resized to 256 and zero-padded to 256 x 256",
           (DATASETS["isic2018_seg"].citation, SWIN_UMAMBA.citation, R_SHUFFLE), extras={"mask_threshold": 127}),
    _seg3d("cardiac_mri_segmentation", 10, False, "Cardiac cine-MRI segmentation (DRD)",
           "Segmentation of the right-ventricle cavity, left-ventricle myocardium and left-ventricle cavity in short-axis cine MRI at end-diastole and end-systole (3D, anisotropic)",
           "MR", ("background", "rv_cavity", "myocardium", "lv_cavity"), ("rv", "myo", "lv"), "acdc", PERCENTILES, (1.5, 1.5, 10.0), (160, 160, 16), (224, 224, 64),
           "single channel short-axis cine MRI volume (ED or ES frame), resampled to 1.5 x 1.5 x 10 mm (RAS), intensities clipped to the volume's 0.5/99.5 percentiles and scaled to [0, 1]",
           "0 background, 1 right-ventricle cavity, 2 left-ventricle myocardium, 3 left-ventricle cavity",
           (DATASETS["acdc"].citation, SAT.citation, R_UNET, "Isensee F, et al. nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation. Nature Methods 18, 203-211 (2021)."),
           extras={"affine_from_zooms": True, "ejection_fraction": True, "anisotropic": True, "in_plane_rotation": 0.52},
           num_epochs=(300, "training epochs"), batch_size=(2, "volumes per batch"), val_interval=(5, "validate every N epochs"),
           weight_decay=(1e-05, "AdamW weight decay"), cka_spatial_samples=(4096, "voxel positions sampled for CKA on large maps (null: all)"),
           checkpoint_hybrid=(True, "recompute student stages in the hybrid paths during backward (saves memory)"),
           projector_norm=(["instance", {"affine": True}], "normalisation inside the projectors")),
    _cls3d("covid_ct_classification", 11, True, "COVID-19 chest CT severity classification (DRD)",
           "Chest CT classification into the five MosMedData severity categories CT-0 to CT-4", "CT",
           ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4"), "mosmeddata", MERLIN, ct_window(-1000, 400),
           "single channel chest CT volume (RAS), lung window -1000..400 HU scaled to [0, 1], resized to 128 x 128 x 64",
           (DATASETS["mosmeddata"].citation, MERLIN.citation, R_RESNET, "Hara K, Kataoka H, Satoh Y. Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and ImageNet? CVPR 2018."),
           size=(128, 128, 64), teacher_size=(224, 224, 160), fmt="hounsfield", batch_size=(4, "volumes per batch")),
    _cls3d("lung_nodule_ct_classification", 12, False, "Lung nodule malignancy classification (DRD)",
           "Benign vs malignant classification of 28^3 lung-nodule CT patches (NoduleMNIST3D)", "CT", ("benign", "malignant"), "nodulemnist3d", MERLIN, SCALE,
           "single channel 28^3 CT patch (MedMNIST), intensity scaled to [0, 1], resized to 64^3", (MEDMNIST_CITATION, MERLIN.citation, R_RESNET),
           size=(64, 64, 64), teacher_size=(96, 96, 96), batch_size=(8, "volumes per batch")),
    _cls3d("vessel_mra_classification", 13, False, "Brain vessel aneurysm classification (DRD)",
           "Vessel vs aneurysm classification of 28^3 brain MRA vessel segments (VesselMNIST3D)", "MR", ("vessel", "aneurysm"), "vesselmnist3d", MERLIN, SCALE,
           "single channel 28^3 MRA vessel-segment volume (MedMNIST), intensity scaled to [0, 1], resized to 64^3", (MEDMNIST_CITATION, MERLIN.citation, R_RESNET),
           size=(64, 64, 64), teacher_size=(96, 96, 96), batch_size=(8, "volumes per batch")),
    _seg3d("spleen_ct_segmentation", 14, True, "Spleen CT segmentation (DRD)", "Spleen segmentation in portal-venous abdominal CT", "CT",
           ("background", "spleen"), ("spleen",), "msd_spleen", ct_window(-57, 164), (1.5, 1.5, 2.0), (96, 96, 96), (288, 288, 96),
           "single channel abdominal CT volume (RAS), resampled to 1.5 x 1.5 x 2.0 mm, window -57..164 HU scaled to [0, 1]", "0 background, 1 spleen",
           (MSD_CITATION, SAT.citation, R_UNET), fmt="hounsfield"),
    _seg3d("prostate_mri_segmentation", 15, True, "Prostate zonal MRI segmentation (DRD)", "Peripheral and transition zone segmentation in multi-parametric prostate MRI (T2, ADC)", "MR",
           ("background", "peripheral_zone", "transition_zone"), ("pz", "tz"), "msd_prostate", NONZERO_ZSCORE, (0.625, 0.625, 3.6), (160, 160, 16), (224, 224, 32),
           "two channel prostate MRI volume (T2, ADC; RAS), resampled to 0.625 x 0.625 x 3.6 mm, z-score over non-zero voxels per channel",
           "0 background, 1 peripheral zone, 2 transition zone", (MSD_CITATION, SAT.citation, R_UNET), in_channels=2,
           extras={"anisotropic": True, "in_plane_rotation": 0.52}, batch_size=(2, "volumes per batch")),
    _seg3d("pancreas_ct_segmentation", 16, True, "Pancreas and pancreatic tumour CT segmentation (DRD)", "Pancreas and pancreatic tumour segmentation in portal-venous abdominal CT", "CT",
           ("background", "pancreas", "tumour"), ("pancreas", "tumour"), "msd_pancreas", ct_window(-87, 199), (1.0, 1.0, 2.5), (96, 96, 48), (288, 288, 96),
           "single channel abdominal CT volume (RAS), resampled to 1.0 x 1.0 x 2.5 mm, window -87..199 HU scaled to [0, 1]", "0 background, 1 pancreas, 2 tumour",
           (MSD_CITATION, SAT.citation, R_UNET), fmt="hounsfield", batch_size=(2, "volumes per batch")),
    _seg3d("gallbladder_ct_segmentation", 17, True, "Gallbladder CT segmentation (DRD)", "Gallbladder segmentation in abdominal CT (BTCV label 4)", "CT",
           ("background", "gallbladder"), ("gallbladder",), "btcv", ct_window(-175, 250), (1.5, 1.5, 2.0), (96, 96, 96), (288, 288, 96),
           "single channel abdominal CT volume (RAS), resampled to 1.5 x 1.5 x 2.0 mm, window -175..250 HU scaled to [0, 1]",
           "0 background, 1 gallbladder (BTCV label 4; every other organ label is background)",
           (DATASETS["btcv"].citation, SAT.citation, R_UNET), fmt="hounsfield", extras={"select_labels": [4]}),
    _seg3d("hippocampus_mri_segmentation", 18, False, "Hippocampus MRI segmentation (DRD)", "Anterior and posterior hippocampus segmentation in cropped T1 brain MRI", "MR",
           ("background", "anterior", "posterior"), ("anterior", "posterior"), "msd_hippocampus", NONZERO_ZSCORE, (1.0, 1.0, 1.0), (48, 64, 48), (96, 128, 32),
           "single channel T1 MRI crop around the hippocampus (RAS), resampled to 1 mm, z-score over non-zero voxels",
           "0 background, 1 anterior hippocampus, 2 posterior hippocampus", (MSD_CITATION, SAT.citation, R_UNET),
           extras={"isotropic_rotation": 0.26}, num_epochs=(200, "training epochs"), batch_size=(2, "volumes per batch")),
)

BY_NAME = {b.name: b for b in BUNDLES}
