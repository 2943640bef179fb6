"""Kvasir-SEG polyp segmentation set (Jha et al. 2020): layout, split and JPEG-mask binarisation.

Official layout: ``<dataset_dir>/images/<name>.jpg`` and ``<dataset_dir>/masks/<name>.jpg``
(``dataset_dir`` may also hold a ``Kvasir-SEG/`` folder with them, as in the official zip).
The masks are **JPEG** files: compression leaves grey values around the polyp border and small
non-zero values in the background, so a bundle must threshold them: :class:`BinarizeLabeld`
(channel maximum, then ``> threshold``) does that after ``LoadImaged``/``EnsureChannelFirstd``.

Split: there is no official split; the 1,000 pairs are split at random (seeded):
``val_fraction`` validation, ``test_fraction`` test, the rest training.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["BinarizeLabeld", "find_kvasir_root", "kvasir_seg_datalist"]

_EXTS = (".jpg", ".jpeg", ".png")
_LAYOUT = "images/<name>.jpg and masks/<name>.jpg (optionally inside Kvasir-SEG/)"


class BinarizeLabeld(MapTransform):
    """Turn a (possibly multi-channel, lossy-compressed) mask into a one-channel 0/1 label.

    Each key's array (channel first) is reduced with the maximum over channels and compared with
    ``threshold`` (strictly greater is foreground). Meta data are kept.

    Args:
        keys: label keys.
        threshold: grey-level threshold (default 127.5 for 8-bit masks; use 0.5 for 0/1 masks).
        dtype: output dtype.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        threshold: float = 127.5,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            if t.ndim < 2:
                raise ValueError(f"BinarizeLabeld: '{key}' has shape {tuple(t.shape)}; expected channel-first C x spatial.")
            out = (t.amax(dim=0, keepdim=True) > self.threshold).to(self.dtype)
            d[key] = MetaTensor(out, meta=dict(x.meta)) if isinstance(x, MetaTensor) else out
        return d


def find_kvasir_root(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``images/`` and ``masks/`` (``dataset_dir`` or ``dataset_dir/Kvasir-SEG``).

    Raises:
        FileNotFoundError: when neither matches.
    """
    base = Path(dataset_dir).resolve()
    for cand in (base, base / "Kvasir-SEG", base / "kvasir-seg"):
        if (cand / "images").is_dir() and (cand / "masks").is_dir():
            return cand
    raise FileNotFoundError(f"no Kvasir-SEG layout under '{base}': expected {_LAYOUT}.")


def kvasir_seg_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Seeded random train/validation/test datalist of Kvasir-SEG (see module docstring).

    Args:
        dataset_dir: the Kvasir-SEG folder (or its parent).
        output_file: optional JSON file to write (atomically).
        val_fraction: share for validation.
        test_fraction: share for testing.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label" (JPEG mask path)}``.

    Raises:
        FileNotFoundError: when the layout is missing, empty, or an image has no mask.
    """
    root = find_kvasir_root(dataset_dir)
    images = sorted(p for p in (root / "images").iterdir() if p.is_file() and p.suffix.lower() in _EXTS)
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.is_file() and p.suffix.lower() in _EXTS}
    if not images:
        raise FileNotFoundError(f"no images in '{root / 'images'}': expected {_LAYOUT}.")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images in '{root / 'images'}' have no mask in '{root / 'masks'}' (first: {missing[:5]}).")
    records = [{"image": str(p), "label": str(masks[p.stem]), "group": 0} for p in images]
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    parts = stratified_split(records, "group", fractions, seed)
    parts = {k: [{"image": r["image"], "label": r["label"]} for r in v] for k, v in parts.items()}
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
