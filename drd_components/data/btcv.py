"""BTCV / Synapse multi-organ abdominal CT (Landman et al. 2015), used for gallbladder segmentation.

Official layout (``RawData.zip`` from the Synapse project "Multi-Atlas Labeling Beyond the Cranial
Vault", https://www.synapse.org/#!Synapse:syn3193805, after registration)::

    RawData/Training/img/img0001.nii.gz ... (30 labelled CT volumes)
    RawData/Training/label/label0001.nii.gz ...
    RawData/Testing/img/img0061.nii.gz ... (no public labels; not used)

Label values: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver,
7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic veins, 11 pancreas, 12 right
adrenal gland, 13 left adrenal gland. :class:`SelectLabeld` turns the multi-organ label into a
binary one (gallbladder: ``values=(4,)``). The same result with MONAI transforms alone needs two
steps: ``LabelFilterd(keys, applied_labels=[4])`` then ``MapLabelValued(keys, [4], [1])``.

There is no official validation/test split of the labelled cases: the datalist is a seeded random
split of the ``Training`` cases.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = [
    "BTCV_LABELS",
    "GALLBLADDER_LABEL",
    "find_btcv_training_dir",
    "find_btcv_cases",
    "btcv_gallbladder_datalist",
    "SelectLabeld",
]

#: label values of the BTCV multi-organ annotation.
BTCV_LABELS = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_veins",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
}
GALLBLADDER_LABEL = 4
_IMG_RE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_LAYOUT = "RawData/Training/img/imgXXXX.nii.gz with RawData/Training/label/labelXXXX.nii.gz (BTCV RawData.zip)"


def find_btcv_training_dir(dataset_dir: str | os.PathLike) -> Path:
    """Find the folder holding ``img/`` and ``label/`` (``RawData/Training``) in or under ``dataset_dir``.

    Raises:
        FileNotFoundError: when the folder does not exist or has no such sub-folders.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist: expected a folder with {_LAYOUT}.")
    if (root / "img").is_dir() and (root / "label").is_dir():
        return root.resolve()
    found = sorted(p.parent for p in root.rglob("img") if p.is_dir() and (p.parent / "label").is_dir())
    preferred = [p for p in found if p.name == "Training"]
    if not (preferred or found):
        raise FileNotFoundError(
            f"no folder with 'img' and 'label' sub-folders under dataset_dir '{root}': expected {_LAYOUT}."
        )
    return (preferred or found)[0].resolve()


def find_btcv_cases(dataset_dir: str | os.PathLike) -> list[dict]:
    """Pair every ``img/imgXXXX.nii[.gz]`` with ``label/labelXXXX.nii[.gz]`` (absolute paths, sorted).

    Raises:
        FileNotFoundError: when no image is found or an image has no label file.
    """
    folder = find_btcv_training_dir(dataset_dir)
    cases = []
    for path in sorted((folder / "img").iterdir()):
        match = _IMG_RE.match(path.name)
        if not (path.is_file() and match):
            continue
        candidates = [folder / "label" / f"label{match.group(1)}{ext}" for ext in (".nii.gz", ".nii")]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            raise FileNotFoundError(f"image '{path}' has no label file: expected '{candidates[0]}' ({_LAYOUT}).")
        cases.append({"image": str(path.resolve()), "label": str(label.resolve())})
    if not cases:
        raise FileNotFoundError(f"no imgXXXX.nii.gz files in '{folder / 'img'}': expected {_LAYOUT}.")
    return cases


def btcv_gallbladder_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Seeded train/validation/test split of the labelled BTCV cases.

    The labels stay multi-organ files; select the gallbladder in the transforms with
    ``SelectLabeld(keys="label", values=(4,))``.

    Args:
        dataset_dir: ``RawData/Training``, ``RawData`` or any parent of them.
        output_file: optional JSON file to write the datalist to (atomically).
        val_fraction: share of cases for validation.
        test_fraction: share of cases for testing.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label"}`` with absolute paths.

    Raises:
        FileNotFoundError: see :func:`find_btcv_cases`.
        ValueError: for fractions outside ``[0, 1]`` or summing above 1.
    """
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    if any(f < 0 or f > 1 for f in fractions.values()):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1] with a sum <= 1, got {fractions}.")
    records = [dict(c, _all=0) for c in find_btcv_cases(dataset_dir)]
    parts = stratified_split(records, "_all", fractions, seed)
    parts = {k: [{"image": r["image"], "label": r["label"]} for r in v] for k, v in parts.items()}
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts


class SelectLabeld(MapTransform):
    """Binary label from a multi-class label: voxels whose value is in ``values`` become 1, all others 0.

    The output keeps the input's type (``MetaTensor`` with its metadata, tensor or numpy array) and dtype.

    Args:
        keys: keys of the label images.
        values: label values mapped to 1 (BTCV gallbladder: ``(4,)``).
        allow_missing_keys: do not fail on a missing key.
    """

    def __init__(
        self, keys: KeysCollection, values: Sequence[int] = (GALLBLADDER_LABEL,), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(values) == 0:
            raise ValueError("SelectLabeld needs at least one label value to select.")
        self.values = tuple(int(v) for v in values)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if isinstance(label, torch.Tensor):
                selected = torch.isin(label, torch.tensor(self.values, device=label.device, dtype=label.dtype))
                out = label.clone()
                out[...] = selected.to(label.dtype)
            else:
                arr = np.asarray(label)
                out = np.isin(arr, self.values).astype(arr.dtype)
            d[key] = out
        return d
