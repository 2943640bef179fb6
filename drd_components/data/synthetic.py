"""Synthetic ultrasound-like images for tests and the offline quickstart.

Nothing here is medical data. The generator draws a speckled, layered background and, depending
on the class, a dark lesion whose outline is smooth and oval ("benign"), irregular and
spiculated ("malignant"), or absent ("normal"), with random position, size, contrast and noise.
A separate *pre-training* task (six outline families, no class overlap with the demo labels)
lets a stand-in teacher learn outline features that transfer to the demo task, the way a
foundation model's pre-training transfers to a downstream task.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DEMO_CLASSES",
    "PRETRAIN_CLASSES",
    "synthetic_ultrasound",
    "synthetic_pretraining_set",
    "write_synthetic_busi",
]

#: classes of the demo task, in BUSI's label order.
DEMO_CLASSES = ("benign", "malignant", "normal")
#: outline families of the pre-training task.
PRETRAIN_CLASSES = ("none", "oval", "lobulated", "spiculated", "angular", "double")


def _smooth(img: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        img = (
            img
            + np.roll(img, 1, 0)
            + np.roll(img, -1, 0)
            + np.roll(img, 1, 1)
            + np.roll(img, -1, 1)
        ) / 5.0
    return img


def _outline_radius(rng: np.random.Generator, theta: np.ndarray, family: str, r0: float) -> np.ndarray:
    r = np.full_like(theta, r0)
    if family == "oval":
        r = r * (1 + rng.uniform(0.02, 0.08) * np.cos(2 * theta + rng.uniform(0, np.pi)))
    elif family == "lobulated":
        k = rng.integers(3, 6)
        r = r * (1 + rng.uniform(0.12, 0.2) * np.cos(k * theta + rng.uniform(0, np.pi)))
    elif family == "spiculated":
        for _ in range(3):
            k = rng.integers(7, 15)
            r = r * (1 + rng.uniform(0.08, 0.16) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)))
    elif family == "angular":
        k = rng.integers(3, 6)
        phase = rng.uniform(0, 2 * np.pi)
        r = r * np.cos(np.pi / k) / np.cos(((theta + phase) % (2 * np.pi / k)) - np.pi / k)
    return r


def _lesion_mask(rng: np.random.Generator, size: int, family: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    count = 2 if family == "double" else 1
    for _ in range(count):
        r0 = rng.uniform(0.1, 0.2) * size if family != "double" else rng.uniform(0.07, 0.12) * size
        cy, cx = rng.uniform(0.35, 0.65, size=2) * size
        if family == "double":
            cx += (-1 if mask.any() else 1) * r0 * 1.3
        aspect = rng.uniform(0.65, 0.85)  # wider than tall for the smooth families
        if family in ("spiculated", "angular"):
            aspect = rng.uniform(0.95, 1.25)  # taller-than-wide is a malignancy sign
        dy, dx = (yy - cy) / aspect, xx - cx
        theta = np.arctan2(dy, dx)
        r = _outline_radius(rng, theta, "oval" if family == "double" else family, r0)
        mask |= np.sqrt(dy**2 + dx**2) <= r
    return mask


def synthetic_ultrasound(rng: np.random.Generator, size: int, family: str) -> tuple[np.ndarray, np.ndarray]:
    """One image (``uint8``, ``size x size``) and its lesion mask for an outline family.

    Args:
        rng: random generator.
        size: side length in pixels.
        family: ``"none"`` or one of the lesion families of :data:`PRETRAIN_CLASSES`.

    Returns:
        ``(image, mask)``, both ``uint8`` (mask values 0/255).
    """
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    bands = 0.45 + 0.1 * np.sin(2 * np.pi * (rows * rng.uniform(1.5, 4) + rng.uniform(0, 1)))
    base = np.broadcast_to(bands, (size, size)).copy()
    base *= 1.0 - 0.35 * rows  # depth attenuation
    mask = np.zeros((size, size), dtype=bool) if family == "none" else _lesion_mask(rng, size, family)
    if mask.any():
        contrast = rng.uniform(0.55, 0.8)
        soft = _smooth(mask.astype(np.float32), 2)
        base = base * (1 - contrast * soft)
        if family in ("spiculated", "angular"):  # posterior acoustic shadow
            cols = mask.any(axis=0)
            below = np.cumsum(mask, axis=0) > 0
            base[below & ~mask & cols[None, :]] *= rng.uniform(0.75, 0.9)
    speckle = rng.rayleigh(scale=0.5, size=(size, size)).astype(np.float32)
    img = _smooth(base * (0.6 + 0.6 * speckle), 1)
    img += rng.normal(0, rng.uniform(0.02, 0.06), size=(size, size))
    img = np.clip(img / max(float(img.max()), 1e-6), 0, 1)
    return (img * 255).astype(np.uint8), (mask * 255).astype(np.uint8)


_DEMO_FAMILY = {"benign": ("oval", "lobulated"), "malignant": ("spiculated", "angular"), "normal": ("none",)}


def synthetic_pretraining_set(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the six-family outline task used to pre-train a stand-in teacher.

    Args:
        n: number of images.
        size: side length.
        seed: random seed.

    Returns:
        ``(images, labels)``: ``float32`` array ``n x 1 x size x size`` in ``[0, 1]`` and
        ``int64`` labels indexing :data:`PRETRAIN_CLASSES`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PRETRAIN_CLASSES), size=n)
    images = np.stack([synthetic_ultrasound(rng, size, PRETRAIN_CLASSES[int(k)])[0] for k in labels])
    return (images[:, None].astype(np.float32) / 255.0), labels.astype(np.int64)


def write_synthetic_busi(
    output_dir: str | os.PathLike, n_per_class: int = 50, size: int = 64, seed: int = 0
) -> Path:
    """Write a synthetic dataset in BUSI's on-disk layout (``<class>/<class> (i).png`` and
    ``<class> (i)_mask.png``); a few images get a second mask file, as in the real release.

    Args:
        output_dir: folder to create.
        n_per_class: images per class.
        size: side length.
        seed: random seed.

    Returns:
        the folder.
    """
    root = Path(output_dir)
    rng = np.random.default_rng(seed)
    for cls in DEMO_CLASSES:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_class + 1):
            family = _DEMO_FAMILY[cls][int(rng.integers(0, len(_DEMO_FAMILY[cls])))]
            img, mask = synthetic_ultrasound(rng, size, family)
            Image.fromarray(img).save(folder / f"{cls} ({i}).png")
            Image.fromarray(mask).save(folder / f"{cls} ({i})_mask.png")
            if i % 10 == 3 and cls != "normal":
                Image.fromarray(np.zeros_like(mask)).save(folder / f"{cls} ({i})_mask_1.png")
    return root
