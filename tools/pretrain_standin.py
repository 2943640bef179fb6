"""Pre-train a foundation-model *stand-in*: a large MONAI 2D ResNet-50 on several real datasets.

This is NOT a foundation model. It is a ResNet-50 (bottleneck blocks 3-4-6-3, the layout of
:class:`drd_components.teachers.ResNetStandInTeacher` with ``block="bottleneck"``) trained with
one linear head per dataset on the union of the real 2D classification sets found under
``DRD_DATA_ROOT`` (``busi``, ``brain_tumor_mri``, ``medmnist/retinamnist.npz``), excluding the
downstream target so that the teacher has never seen it. It gives DRD and the baselines a teacher
whose features carry some medical-image knowledge where no FM weights can be downloaded.

Usage:
    python tools/pretrain_standin.py --exclude busi --output bench/standin_no_busi.pt \
        [--image_size 64] [--epochs 3] [--batch_size 32] [--threads 1] [--max_per_dataset 0]

Writes ``<output>`` (the backbone's flat MONAI-``ResNet`` state dict: ``torch.load(weights_only=True)``
and :class:`~drd_components.teachers.ResNetStandInTeacher`'s ``checkpoint`` argument accept it) and
``<output>.json`` (the card: datasets, epochs, held-out accuracy per head, sha256, and the
``teacher_def`` arguments to use).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from drd_components.data import busi_classification_datalist
from drd_components.teachers import ResNetStandInTeacher
from drd_components.teachers.checkpoint import sha256sum

__all__ = [
    "DATASETS",
    "STANDIN_ARCH",
    "data_root",
    "brain_tumor_records",
    "load_dataset_arrays",
    "build_standin",
    "pretrain",
]

#: datasets the stand-in can be pre-trained on (name -> number of classes).
DATASETS = {"busi": 3, "brain_tumor_mri": 4, "retinamnist": 5}
#: ``ResNetStandInTeacher`` arguments of the stand-in (ResNet-50 layout, grey input).
STANDIN_ARCH = {
    "spatial_dims": 2,
    "in_channels": 1,
    "block": "bottleneck",
    "layers": [3, 4, 6, 3],
    "block_inplanes": [64, 128, 256, 512],
}
BRAIN_TUMOR_CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def data_root() -> Path:
    """``DRD_DATA_ROOT``, default ``../shared/data`` relative to the repository root."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return Path(os.environ.get("DRD_DATA_ROOT", default)).resolve()


def brain_tumor_records(root: str | os.PathLike, split: str = "Training") -> list[dict]:
    """``[{"image": path, "label": int}]`` of the Brain Tumor MRI set's ``Training`` or ``Testing`` split.

    Raises:
        FileNotFoundError: when a class folder is missing or empty.
    """
    base = Path(root) / split
    records = []
    for label, cls in enumerate(BRAIN_TUMOR_CLASSES):
        folder = base / cls
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"'{folder}' is missing or holds no .jpg/.png image (Brain Tumor MRI layout).")
        records += [{"image": str(p), "label": label} for p in files]
    return records


def _load_grey(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_dataset_arrays(name: str, root: Path, image_size: int, max_items: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All training images of one dataset as ``N x S x S`` uint8 grey arrays and ``N`` labels.

    BUSI: every image; Brain Tumor MRI: the authors' ``Training`` split; RetinaMNIST: the official
    train + val splits (the test split is never used).

    Raises:
        ValueError: for an unknown dataset name.
        FileNotFoundError: when the dataset is absent under ``root``.
    """
    if name == "retinamnist":
        path = root / "medmnist" / "retinamnist.npz"
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' not found (RetinaMNIST npz).")
        with np.load(path) as d:
            imgs = np.concatenate([d["train_images"], d["val_images"]])
            labels = np.concatenate([d["train_labels"], d["val_labels"]]).reshape(-1)
        grey = imgs.astype(np.float32).mean(-1)
        t = torch.from_numpy(grey)[:, None]
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = t[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    elif name in ("busi", "brain_tumor_mri"):
        if name == "busi":
            split = busi_classification_datalist(root / "busi", None, 0.0, 0.0, 0)
            records = split["training"] + split["validation"] + split["test"]
        else:
            records = brain_tumor_records(root / "brain_tumor_mri", "Training")
        images = np.stack([_load_grey(r["image"], image_size) for r in records])
        labels = np.array([int(r["label"]) for r in records])
    else:
        raise ValueError(f"unknown dataset '{name}'; expected one of {sorted(DATASETS)}.")
    if max_items and len(labels) > max_items:
        keep = np.random.default_rng(0).permutation(len(labels))[:max_items]
        images, labels = images[keep], labels[keep]
    return images, labels.astype(np.int64)


def build_standin(**overrides) -> ResNetStandInTeacher:
    """The stand-in teacher (random weights) with :data:`STANDIN_ARCH`, updated by ``overrides``."""
    return ResNetStandInTeacher(**(STANDIN_ARCH | overrides))


class _MultiHead(nn.Module):
    """Backbone (pooled features) + one linear head per dataset."""

    def __init__(self, teacher: ResNetStandInTeacher, num_classes: dict[str, int]) -> None:
        super().__init__()
        self.preprocessing = teacher.preprocessing
        self.net = teacher.net
        self.net.requires_grad_(True)
        with torch.no_grad():  # pooled feature width, from one dry run
            width = self.net.eval()(torch.zeros(2, self.net.conv1.in_channels, 64, 64)).shape[1]
        self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in num_classes.items()})

    def forward(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        return self.heads[dataset](self.net(self.preprocessing(x)))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 1/8 of the side (reflect padding)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = x.shape[-1] // 8
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
        x = padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return x


def pretrain(
    exclude: str | Sequence[str] = "busi",
    output: str = "standin_resnet50.pt",
    image_size: int = 64,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    max_per_dataset: int = 0,
    threads: int = 1,
    seed: int = 0,
    root: str | None = None,
) -> dict:
    """Pre-train the stand-in and write the checkpoint and its card.

    Args:
        exclude: dataset(s) left out (the downstream target), from :data:`DATASETS`.
        output: checkpoint path; the card goes to ``<output>.json``.
        image_size: side of the (square, grey) training images.
        epochs: passes over the union of the datasets.
        batch_size: batch size (each batch comes from one dataset and trains its head).
        lr: AdamW learning rate (cosine schedule).
        val_fraction: share of each dataset held out to measure the head's accuracy.
        max_per_dataset: cap on the images used per dataset (0: all), for quick runs.
        threads: torch CPU threads.
        seed: seed of the split, the order and the initialisation.
        root: data root (default ``DRD_DATA_ROOT`` or ``../shared/data``).

    Returns:
        the card.

    Raises:
        ValueError: for unknown dataset names or when nothing is left to train on.
    """
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    excluded = {exclude} if isinstance(exclude, str) else set(exclude)
    unknown = excluded - set(DATASETS)
    if unknown:
        raise ValueError(f"--exclude {sorted(unknown)}: unknown dataset(s); expected names from {sorted(DATASETS)}.")
    names = [n for n in DATASETS if n not in excluded]
    if not names:
        raise ValueError("every dataset is excluded; nothing to pre-train on.")
    base = Path(root).resolve() if root else data_root()
    rng = np.random.default_rng(seed)
    train_sets, val_sets = {}, {}
    for name in names:
        images, labels = load_dataset_arrays(name, base, image_size, max_per_dataset)
        order = rng.permutation(len(labels))
        n_val = max(1, int(round(val_fraction * len(labels))))
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_sets[name] = (torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
        val_sets[name] = (torch.from_numpy(images[val_idx]), torch.from_numpy(labels[val_idx]))
        print(f"{name}: {len(train_idx)} train / {n_val} held-out images", flush=True)

    teacher = build_standin(spatial_size=None)
    model = _MultiHead(teacher, {n: DATASETS[n] for n in names})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = sum((len(y) + batch_size - 1) // batch_size for _, y in train_sets.values())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * steps_per_epoch, 1))
    gen = torch.Generator().manual_seed(seed)
    history = []
    start = time.time()
    for epoch in range(epochs):
        model.train()
        batches = []
        for name, (_, y) in train_sets.items():
            perm = torch.randperm(len(y), generator=gen)
            batches += [(name, perm[i : i + batch_size]) for i in range(0, len(y), batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        total, count = 0.0, 0
        for step, b in enumerate(order):
            name, idx = batches[b]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            x = train_sets[name][0][idx][:, None].float() / 255.0
            y = train_sets[name][1][idx]
            loss = F.cross_entropy(model(_augment(x, gen), name), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item(), count + 1
            if step % 20 == 0:
                print(f"epoch {epoch + 1}/{epochs} step {step + 1}/{len(order)} loss {total / count:.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)
        history.append(total / max(count, 1))
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for name, (x, y) in val_sets.items():
            preds = torch.cat([model(x[i : i + 256][:, None].float() / 255.0, name).argmax(1) for i in range(0, len(y), 256)])
            accuracy[name] = float((preds == y).float().mean())
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(model.net.state_dict(), tmp)
    os.replace(tmp, out)
    card = {
        "what": "FM stand-in (NOT a foundation model): MONAI ResNet-50 pre-trained supervised, one head per dataset",
        "datasets": {n: {"classes": DATASETS[n], "train": len(train_sets[n][1]), "held_out": len(val_sets[n][1])}
                     for n in names},
        "excluded": sorted(excluded),
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "train_loss_per_epoch": history,
        "held_out_accuracy": accuracy,
        "wall_s": round(time.time() - start, 1),
        "teacher_def": {"_target_": "drd_components.teachers.ResNetStandInTeacher", **STANDIN_ARCH,
                        "mean": 0.5, "std": 0.25},
        "checkpoint": str(out.resolve()),
        "sha256": sha256sum(out),
    }
    Path(str(out) + ".json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2), flush=True)
    return card


if __name__ == "__main__":
    fire.Fire(lambda **kw: pretrain(**kw) and None)
