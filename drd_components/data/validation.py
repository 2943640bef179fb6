"""Checks of a dataset and its datalist before training starts.

:func:`validate_datalist` reads every file of a datalist cheaply (file headers for volumes,
decoding only 2D images and label files, whose values must be checked) and raises one
:class:`DataValidationError` listing every problem with the datalist split, item index, file
and what was expected versus found. Bundles wrap their datalist expression with it, so a broken
dataset fails in seconds instead of mid-epoch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DataValidationError",
    "ImageHeader",
    "check_dataset_dir",
    "read_image_header",
    "read_label_values",
    "validate_datalist",
]

logger = logging.getLogger(__name__)

_PIL_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_NIFTI_EXTS = (".nii", ".nii.gz")
_DICOM_EXTS = (".dcm", ".dicom")


class DataValidationError(ValueError):
    """A dataset or datalist that cannot be trained on; ``problems`` lists every finding.

    Args:
        problems: one line per problem.
        max_listed: how many of them the message shows (the rest are counted).
    """

    def __init__(self, problems: Sequence[str], max_listed: int = 20) -> None:
        self.problems = list(problems)
        shown = self.problems[:max_listed]
        more = len(self.problems) - len(shown)
        message = f"{len(self.problems)} problem(s) in the training data:\n  " + "\n  ".join(shown)
        if more:
            message += f"\n  ... and {more} more problem(s)"
        super().__init__(message)


@dataclass(frozen=True)
class ImageHeader:
    """What a file header says about an image.

    Attributes:
        spatial_shape: size along each spatial axis, in the order of the file's reader.
        channels: number of channels (colour bands, 4th NIfTI dimension, DICOM samples per pixel).
    """

    spatial_shape: tuple[int, ...]
    channels: int


def check_dataset_dir(path: str | os.PathLike | None, key: str = "dataset_dir") -> Path:
    """Check that a dataset folder is given, exists, is a folder and is not empty.

    Args:
        path: the folder.
        key: the config key that holds it (named in the error).

    Returns:
        the folder as an absolute path.

    Raises:
        DataValidationError: naming ``key`` and the path.
    """
    if path is None or str(path).strip() == "":
        raise DataValidationError([f"'{key}' is not set: expected the path of the dataset folder."])
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataValidationError([f"'{key}' = '{folder}' does not exist: expected the dataset folder."])
    if not folder.is_dir():
        raise DataValidationError([f"'{key}' = '{folder}' is a file: expected the dataset folder."])
    if not any(not p.name.startswith(".") for p in folder.iterdir()):
        raise DataValidationError([f"'{key}' = '{folder}' is empty: expected the dataset's files in it."])
    return folder.resolve()


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom_series"
    if name.endswith(_NIFTI_EXTS):
        return "nifti"
    if name.endswith(_PIL_EXTS):
        return "pil"
    if name.endswith(_DICOM_EXTS):
        return "dicom"
    return "other"


def _split_shape(shape: Sequence[int], spatial_dims: int) -> ImageHeader:
    shape = tuple(int(s) for s in shape)
    if len(shape) < spatial_dims:
        raise ValueError(f"is {len(shape)}D {shape}, expected a {spatial_dims}D image")
    return ImageHeader(shape[:spatial_dims], int(math.prod(shape[spatial_dims:])) if len(shape) > spatial_dims else 1)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_image_header(path: str | os.PathLike, spatial_dims: int, decode_2d: bool = True) -> ImageHeader:
    """Read an image's shape and channel count without decoding volumes.

    PNG/JPEG/BMP/TIFF are opened with PIL (and decoded when ``decode_2d``, which catches truncated
    files); NIfTI headers with nibabel; DICOM headers with pydicom (``stop_before_pixels``; a
    folder is read as one series); other formats are loaded with MONAI's ``LoadImage``.

    Args:
        path: the image file (or DICOM series folder).
        spatial_dims: 2 or 3.
        decode_2d: decode 2D images fully.

    Returns:
        the header.

    Raises:
        ValueError: the file cannot be read or has fewer than ``spatial_dims`` axes.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "pil":
        from PIL import Image

        with Image.open(path) as img:
            if decode_2d:
                img.load()
            if spatial_dims == 3:
                raise ValueError(f"is a 2D {img.format} image, expected a 3D volume")
            return ImageHeader(tuple(int(s) for s in img.size), len(img.getbands()))
    if kind == "nifti":
        import nibabel as nib

        return _split_shape(nib.load(str(path)).shape, spatial_dims)
    if kind in ("dicom", "dicom_series"):
        import pydicom

        files = _dicom_files(path) if kind == "dicom_series" else [path]
        if not files:
            raise ValueError("is an empty folder, expected a DICOM series")
        ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1) * len(files)
        shape = (rows, cols) + ((frames,) if spatial_dims == 3 else ())
        if spatial_dims == 2 and frames > 1:
            raise ValueError(f"holds {frames} frames, expected one 2D image")
        return ImageHeader(shape, int(getattr(ds, "SamplesPerPixel", 1) or 1))
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    return ImageHeader(tuple(int(s) for s in img.shape[1:]), int(img.shape[0]))


def read_label_values(path: str | os.PathLike) -> np.ndarray:
    """The distinct values of a label / mask file (decodes it).

    Args:
        path: the label file (or DICOM series folder).

    Returns:
        the sorted distinct values.

    Raises:
        ValueError: the file cannot be decoded.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "pil":
        from PIL import Image

        with Image.open(path) as img:
            return np.unique(np.asarray(img))
    if kind == "nifti":
        import nibabel as nib

        return np.unique(np.asanyarray(nib.load(str(path)).dataobj))
    if kind in ("dicom", "dicom_series"):
        import pydicom

        files = _dicom_files(path) if kind == "dicom_series" else [path]
        return np.unique(np.concatenate([np.unique(pydicom.dcmread(str(f)).pixel_array) for f in files]))
    from monai.transforms import LoadImage

    return np.unique(np.asarray(LoadImage(image_only=True)(str(path))))


def _error_text(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def validate_datalist(
    datalist: Mapping[str, Sequence[Mapping]] | Sequence[Mapping],
    task: str,
    num_classes: int,
    in_channels: int,
    spatial_dims: int,
    image_key: str = "image",
    label_key: str | None = "label",
    mask_keys: Sequence[str] = (),
    accepted_channels: Sequence[int] | None = None,
    sample: str | int = "all",
    seed: int = 0,
    decode_2d: bool = True,
    required_splits: Sequence[str] = ("training",),
    max_listed: int = 20,
) -> Mapping[str, Sequence[Mapping]] | Sequence[Mapping]:
    """Check every item of a datalist before training and return it unchanged.

    For every item of every split: the image file exists and its header reads; it has
    ``spatial_dims`` spatial axes and an accepted channel count. Classification labels must be
    integers in ``[0, num_classes)``. Segmentation label files must exist, have the image's
    spatial size and hold only integer values in ``[0, num_classes)``. Files under ``mask_keys``
    (binary masks combined by a transform, e.g. BUSI's ``masks``) must exist, read and have the
    image's size. Existence is checked for every item; with ``sample=n`` the file contents are read
    for ``n`` items per split only (chosen with ``seed``), for very large datasets.

    Args:
        datalist: ``{"training": [...], "validation": [...], ...}`` or a plain list of items.
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: number of classes (label values ``0 .. num_classes - 1``).
        in_channels: channels the network takes.
        spatial_dims: 2 or 3.
        image_key: key of the image path.
        label_key: key of the label (an int for classification, a file for segmentation);
            ``None`` when labels come from ``mask_keys``.
        mask_keys: keys of binary mask files (a path or a list of paths per item).
        accepted_channels: channel counts accepted in the files (default ``[in_channels]``; pass
            ``[1, 3, 4]`` where a channel-adapting transform such as ``AdaptChannelsd`` follows).
        sample: ``"all"`` or the number of items per split whose files are read.
        seed: seed of the sample.
        decode_2d: decode 2D images (catches truncated files; cheap for 2D).
        required_splits: splits that must be present and non-empty.
        max_listed: problems shown in the error message (the rest are counted).

    Returns:
        ``datalist``, unchanged.

    Raises:
        ValueError: for invalid arguments.
        DataValidationError: listing every problem found.
    """
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got '{task}'.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if not (sample == "all" or (_is_int(sample) and int(sample) > 0)):
        raise ValueError(f"sample must be 'all' or a positive int, got {sample!r}.")
    accepted = sorted({int(c) for c in accepted_channels}) if accepted_channels else [int(in_channels)]
    start = time.perf_counter()
    splits: Mapping[str, Sequence[Mapping]] = (
        datalist if isinstance(datalist, Mapping) else {"datalist": list(datalist)}
    )
    problems: list[str] = []
    for name in required_splits if isinstance(datalist, Mapping) else ():
        if not splits.get(name):
            problems.append(f"split '{name}' is missing or empty: expected at least one item.")

    checked = 0
    for split, items in splits.items():
        if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
            problems.append(f"split '{split}' is a {type(items).__name__}, expected a list of items.")
            continue
        read_ids = set(range(len(items)))
        if sample != "all" and len(items) > int(sample):
            read_ids = set(random.Random(seed).sample(range(len(items)), int(sample)))
        for index, item in enumerate(items):
            where = f"[{split}][{index}]"
            if not isinstance(item, Mapping):
                problems.append(f"{where}: is a {type(item).__name__}, expected a dict with '{image_key}'.")
                continue
            problems.extend(
                _check_item(item, where, index in read_ids, task, int(num_classes), accepted, spatial_dims,
                            image_key, label_key, tuple(mask_keys), decode_2d)
            )
            checked += index in read_ids
    elapsed = time.perf_counter() - start
    if problems:
        raise DataValidationError(problems, max_listed=max_listed)
    logger.info("datalist checked: %d item(s) read in %.2f s, no problems.", checked, elapsed)
    return datalist


def _check_item(
    item: Mapping,
    where: str,
    read: bool,
    task: str,
    num_classes: int,
    accepted: list[int],
    spatial_dims: int,
    image_key: str,
    label_key: str | None,
    mask_keys: tuple[str, ...],
    decode_2d: bool,
) -> list[str]:
    problems: list[str] = []
    if image_key not in item:
        return [f"{where}: no '{image_key}' key (keys: {sorted(item)})."]
    image = Path(str(item[image_key]))
    if not image.exists():
        problems.append(f"{where} {image}: image file not found.")
    header = None
    if read and image.exists():
        try:
            header = read_image_header(image, spatial_dims, decode_2d=decode_2d)
        except Exception as e:  # any reader failure is a problem of this file
            problems.append(f"{where} {image}: cannot read the image ({_error_text(e)}).")
        if header is not None and header.channels not in accepted:
            problems.append(
                f"{where} {image}: has {header.channels} channel(s), expected {' or '.join(map(str, accepted))}."
            )

    if label_key is not None:
        if label_key not in item:
            problems.append(f"{where} {image}: no '{label_key}' key (keys: {sorted(item)}).")
        elif task == "classification":
            label = item[label_key]
            if not _is_int(label):
                problems.append(
                    f"{where} {image}: '{label_key}' is {label!r} ({type(label).__name__}), expected an integer class."
                )
            elif not 0 <= int(label) < num_classes:
                problems.append(
                    f"{where} {image}: '{label_key}' = {int(label)} is outside the class range [0, {num_classes})."
                )
        else:
            problems.extend(
                _check_label_file(Path(str(item[label_key])), where, read, header, num_classes, spatial_dims, decode_2d)
            )

    for key in mask_keys:
        if key not in item:
            problems.append(f"{where} {image}: no '{key}' key (keys: {sorted(item)}).")
            continue
        files = item[key] if isinstance(item[key], (list, tuple)) else [item[key]]
        for f in map(lambda p: Path(str(p)), files):
            if not f.exists():
                problems.append(f"{where} {f}: '{key}' file not found.")
                continue
            if not read:
                continue
            try:
                mask_header = read_image_header(f, spatial_dims, decode_2d=decode_2d)
            except Exception as e:
                problems.append(f"{where} {f}: cannot read the '{key}' file ({_error_text(e)}).")
                continue
            if header is not None and mask_header.spatial_shape != header.spatial_shape:
                problems.append(
                    f"{where} {f}: '{key}' file is {mask_header.spatial_shape}, its image {image.name} is "
                    f"{header.spatial_shape}: expected the same size."
                )
    return problems


def _check_label_file(
    label: Path,
    where: str,
    read: bool,
    header: ImageHeader | None,
    num_classes: int,
    spatial_dims: int,
    decode_2d: bool,
) -> list[str]:
    if not label.exists():
        return [f"{where} {label}: label file not found."]
    if not read:
        return []
    try:
        label_header = read_image_header(label, spatial_dims, decode_2d=decode_2d)
        values = read_label_values(label)
    except Exception as e:
        return [f"{where} {label}: cannot read the label file ({_error_text(e)})."]
    problems = []
    if header is not None and label_header.spatial_shape != header.spatial_shape:
        problems.append(
            f"{where} {label}: label is {label_header.spatial_shape}, its image is {header.spatial_shape}: "
            "expected the same size."
        )
    if label_header.channels != 1:
        problems.append(f"{where} {label}: label has {label_header.channels} channels, expected 1.")
    values = np.asarray(values)
    non_integer = values[np.asarray(values != np.round(values))] if values.dtype.kind == "f" else values[:0]
    bad = values[(values < 0) | (values >= num_classes)] if values.dtype.kind in "iuf" else values
    if non_integer.size:
        problems.append(f"{where} {label}: label holds non-integer values {non_integer[:5].tolist()}.")
    if bad.size:
        problems.append(
            f"{where} {label}: label values {bad[:8].tolist()} are outside the class range [0, {num_classes})."
        )
    return problems
