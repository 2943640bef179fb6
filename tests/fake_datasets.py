"""Tiny, deterministic fake copies of the official dataset layouts (for tests and bundle smoke tests).

Each ``write_fake_<dataset>(root)`` writes a few 32-48 px images per class/split under ``root``
and returns the folder to pass as ``dataset_dir``. The layouts' quirks are reproduced: a
byte-identical image in Training and Testing (brain tumour), two images of one lesion
(HAM10000), JPEG masks (Kvasir-SEG), the npz keys of MedMNIST 2D (28x28x3) and 3D (28^3).
Images in one dataset share one size so that batches collate. Fake MedMNIST files fail the
official MD5 check: call ``medmnist_datalist(..., verify_md5=False)``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "FAKE_DATASETS",
    "write_fake_brain_tumor_mri",
    "write_fake_ham10000",
    "write_fake_pneumonia_xray",
    "write_fake_retinamnist",
    "write_fake_nodulemnist3d",
    "write_fake_vesselmnist3d",
    "write_fake_fives",
    "write_fake_kvasir_seg",
    "write_fake_isic2018_seg",
]


def _image(seed: int, size: int = 32, rgb: bool = False, label: int = 0) -> np.ndarray:
    """A distinct, smooth random image (per seed) with a class-dependent bright square."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    s = size // 4
    img[s * (label % 3) : s * (label % 3) + s, s : 2 * s] = 255
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img, np.roll(img, 3, 0), np.roll(img, 3, 1)], -1) if rgb else img


def _mask(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.integers(size // 4, 3 * size // 4, 2)
    yy, xx = np.mgrid[:size, :size]
    return (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < (size // 5) ** 2).astype(np.uint8) * 255


def _save(array: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def write_fake_brain_tumor_mri(root: Path) -> Path:
    """``Training/<class>/`` (4 images per class) and ``Testing/<class>/`` (2 per class); one
    ``no_tumor`` image is byte-identical in both splits, and one Training image has a resized
    (near-identical) copy in Testing."""
    from drd_components.data.brain_tumor import BRAIN_TUMOR_CLASSES

    d = Path(root) / "brain_tumor_mri"
    for label, cls in enumerate(BRAIN_TUMOR_CLASSES):
        for i in range(4):
            _save(_image(100 + 10 * label + i, 48, label=label), d / "Training" / cls / f"tr ({i}).jpg", quality=95)
        for i in range(2):
            _save(_image(500 + 10 * label + i, 48, label=label), d / "Testing" / cls / f"image({i}).jpg", quality=95)
    # exact leak: the same bytes on both sides
    (d / "Testing" / "no_tumor" / "image(9).jpg").write_bytes((d / "Training" / "no_tumor" / "tr (0).jpg").read_bytes())
    # near leak: a re-encoded copy (different bytes, same picture)
    src = np.asarray(Image.open(d / "Training" / "glioma_tumor" / "tr (1).jpg"))
    _save(src, d / "Testing" / "glioma_tumor" / "image(9).png")
    return d


def write_fake_ham10000(root: Path) -> Path:
    """``HAM10000_metadata.csv`` + images in ``HAM10000_images_part_1/2``: 7 lesions per diagnosis,
    the first lesion of each diagnosis has two images."""
    from drd_components.data.ham10000 import HAM10000_CLASSES

    d = Path(root) / "ham10000"
    rows, n = [], 0
    for label, dx in enumerate(HAM10000_CLASSES):
        for lesion in range(7):
            for _ in range(2 if lesion == 0 else 1):
                image_id = f"ISIC_{n:07d}"
                part = "HAM10000_images_part_1" if n % 2 == 0 else "HAM10000_images_part_2"
                _save(_image(1000 + n, 32, rgb=True, label=label), d / part / f"{image_id}.jpg", quality=95)
                rows.append({"lesion_id": f"HAM_{label:02d}{lesion:05d}", "image_id": image_id, "dx": dx,
                             "dx_type": "histo", "age": "50.0", "sex": "male", "localization": "back"})
                n += 1
    with open(d / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return d


def write_fake_pneumonia_xray(root: Path) -> Path:
    """``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (6/1/2 per class); returns the
    folder holding ``chest_xray``."""
    d = Path(root) / "pneumonia"
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        for split, n in (("train", 6), ("val", 1), ("test", 2)):
            for i in range(n):
                _save(_image(2000 + 100 * label + 10 * len(split) + i, 32, label=label),
                      d / "chest_xray" / split / cls / f"person{i}_{split}.jpeg", quality=95)
    return d


def _write_fake_medmnist(root: Path, flag: str, shape: tuple[int, ...], n_classes: int, counts: tuple[int, int, int]) -> Path:
    d = Path(root) / "medmnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(flag))
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).astype(np.uint8).reshape(n, 1)
    np.savez_compressed(d / f"{flag}.npz", **arrays)
    return d


def write_fake_retinamnist(root: Path) -> Path:
    """``retinamnist.npz`` with 10/5/5 RGB 28x28 samples, labels 0-4."""
    return _write_fake_medmnist(root, "retinamnist", (28, 28, 3), 5, (10, 5, 5))


def write_fake_nodulemnist3d(root: Path) -> Path:
    """``nodulemnist3d.npz`` with 4/2/2 volumes of 28^3, labels 0/1."""
    return _write_fake_medmnist(root, "nodulemnist3d", (28, 28, 28), 2, (4, 2, 2))


def write_fake_vesselmnist3d(root: Path) -> Path:
    """``vesselmnist3d.npz`` with 4/2/2 volumes of 28^3, labels 0/1."""
    return _write_fake_medmnist(root, "vesselmnist3d", (28, 28, 28), 2, (4, 2, 2))


def write_fake_fives(root: Path) -> Path:
    """``FIVES .../{train,test}/{Original,Ground truth}/<n>_<cat>.png`` (32 train, 4 test)."""
    d = Path(root) / "fives"
    top = d / "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"
    n = 1
    for split, count in (("train", 32), ("test", 4)):
        for i in range(count):
            name = f"{n}_{'ADGN'[i % 4]}.png"
            _save(_image(3000 + n, 32, rgb=True), top / split / "Original" / name)
            _save(_mask(3000 + n), top / split / "Ground truth" / name)
            n += 1
    return d


def write_fake_kvasir_seg(root: Path) -> Path:
    """``Kvasir-SEG/images/*.jpg`` + ``masks/*.jpg`` (10 pairs; RGB JPEG masks with compression
    noise, as in the release); returns the folder holding ``Kvasir-SEG``."""
    d = Path(root) / "kvasir"
    for i in range(10):
        name = f"cju{i:04d}kvasir.jpg"
        _save(_image(4000 + i, 32, rgb=True), d / "Kvasir-SEG" / "images" / name, quality=90)
        _save(np.repeat(_mask(4000 + i)[..., None], 3, -1), d / "Kvasir-SEG" / "masks" / name, quality=75)
    return d


def write_fake_isic2018_seg(root: Path) -> Path:
    """ISIC 2018 Task 1 Training (8) and Validation (3) input/ground-truth folders, no Test."""
    d = Path(root) / "isic2018"
    n = 0
    for split, count in (("Training", 8), ("Validation", 3)):
        inp, gt = d / f"ISIC2018_Task1-2_{split}_Input", d / f"ISIC2018_Task1_{split}_GroundTruth"
        for _ in range(count):
            _save(_image(5000 + n, 32, rgb=True), inp / f"ISIC_{n:07d}.jpg", quality=95)
            _save(_mask(5000 + n), gt / f"ISIC_{n:07d}_segmentation.png")
            n += 1
        (inp / "LICENSE.txt").write_text("fake\n")
    return d


#: dataset name (as in ``tools/prepare_data.py``) -> writer.
FAKE_DATASETS: dict[str, Callable[[Path], Path]] = {
    "brain_tumor_mri": write_fake_brain_tumor_mri,
    "ham10000": write_fake_ham10000,
    "pneumonia_xray": write_fake_pneumonia_xray,
    "retinamnist": write_fake_retinamnist,
    "nodulemnist3d": write_fake_nodulemnist3d,
    "vesselmnist3d": write_fake_vesselmnist3d,
    "fives": write_fake_fives,
    "kvasir_seg": write_fake_kvasir_seg,
    "isic2018_seg": write_fake_isic2018_seg,
}
