"""Inference datalists from what clinicians have: image files, NIfTI volumes and DICOM series.

2D (``spatial_dims=2``): PNG/JPEG (and BMP/TIFF) files, or one such file.
3D (``spatial_dims=3``): NIfTI files (``.nii``, ``.nii.gz``) and DICOM series. DICOM files (DICOM
Part-10 files, recognised by their ``DICM`` preamble, whatever their name) are grouped by
``SeriesInstanceUID``, one datalist item per series:

- a folder whose DICOM files are exactly one image series gives ``{"image": <folder>}``;
- a series sharing its folder with other DICOM files (several series, a ``DICOMDIR``, reports) gives
  ``{"image": [<slice files, by InstanceNumber>]}``.

Both load with :class:`DicomSeriesReader`, a ``monai.data.PydicomReader`` that also reads a list of
slice files as *one* series (MONAI's own reader would stack a list as channels). The affine comes
from ``ImageOrientationPatient``, ``PixelSpacing`` and the first/last ``ImagePositionPatient``
(oblique series included) and is converted to RAS like NIfTI; axes are ``(column, row, slice)``,
so spacing is ``(PixelSpacing[1], PixelSpacing[0], slice distance)``. Use it for NIfTI and DICOM
alike: ``LoadImaged(keys="image", reader=DicomSeriesReader(), ensure_channel_first=True)`` (a NIfTI
item falls back to MONAI's NIfTI reader).

Series without pixel data (structured reports, presentation states), without the geometry tags, or
with several orientations (three-plane localisers) are skipped with a warning; other files are
ignored with a log line. Hidden files (``.*``) are ignored.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.data import PydicomReader
from monai.utils import ensure_tuple

from drd_components.data.datalist_io import write_datalist
from drd_components.data.folders import IMAGE_EXTENSIONS_2D

__all__ = ["NIFTI_SUFFIXES", "DicomSeriesReader", "find_dicom_series", "inference_datalist"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
_HEADER_TAGS = [
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SeriesDescription",
    *_GEOMETRY_TAGS,
]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_dicom(path: Path) -> bool:
    try:
        return pydicom.misc.is_dicom(path)
    except OSError:
        return False


class DicomSeriesReader(PydicomReader):
    """``PydicomReader`` that reads a folder *or a list of slice files* as one DICOM series.

    A single file or a folder is read exactly as by ``PydicomReader``; a list of several files is
    treated as the slices of one series (sorted by ``InstanceNumber``, affine from the first and
    last ``ImagePositionPatient``). Folders are scanned for DICOM Part-10 files only
    (``fname_regex=None``), so stray non-DICOM files in a series folder are skipped silently.

    Args:
        fname_regex: see ``PydicomReader``; default ``None`` (select files by their DICOM preamble).
        kwargs: passed to ``PydicomReader`` (``affine_lps_to_ras=True`` by default: RAS like NIfTI).
    """

    def __init__(self, fname_regex: str | None = None, **kwargs) -> None:
        super().__init__(fname_regex=fname_regex, **kwargs)

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """True for a folder or DICOM Part-10 file(s)."""
        return all(Path(f).is_dir() or _is_dicom(Path(f)) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        """Read a file, a series folder, or a list of slice files of one series.

        Raises:
            ValueError: for a path that is neither a folder nor a DICOM Part-10 file (so that
                ``LoadImage`` moves on to its other readers, e.g. for NIfTI).
        """
        names = [str(f) for f in ensure_tuple(data)]
        bad = [n for n in names if not (Path(n).is_dir() or _is_dicom(Path(n)))]
        if bad:
            raise ValueError(f"DicomSeriesReader: not a DICOM file or folder: {bad[0]}")
        if len(names) > 1 and all(Path(n).is_file() for n in names):
            options = {**self.kwargs, **kwargs}
            slices = [pydicom.dcmread(fp=n, **options) for n in names]
            self.filenames = [names]
            self.has_series = True
            return slices
        return super().read(data, **kwargs)


def _read_header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as e:  # unreadable file: ignore it like any other non-image file
        logger.info("ignoring '%s': unreadable DICOM header (%s).", path, e)
        return None


def _usable(uid: str, headers: list[tuple[Path, pydicom.Dataset]]) -> bool:
    first = headers[0][0]
    if not all("Rows" in h and "Columns" in h for _, h in headers):
        logger.warning("skipping DICOM series %s (e.g. '%s'): no image pixel data (report or other object).", uid, first)
        return False
    missing = sorted({t for _, h in headers for t in _GEOMETRY_TAGS if t not in h})
    if missing:
        logger.warning("skipping DICOM series %s (e.g. '%s'): missing %s, so no affine can be built.", uid, first, missing)
        return False
    orientations = {tuple(np.round(np.asarray(h.ImageOrientationPatient, dtype=float), 4)) for _, h in headers}
    if len(orientations) > 1:
        logger.warning(
            "skipping DICOM series %s (e.g. '%s'): slices with %d different orientations (a localiser?).",
            uid, first, len(orientations),
        )
        return False
    if len(headers) == 1 and int(headers[0][1].get("NumberOfFrames", 1) or 1) == 1:
        logger.warning("DICOM series %s ('%s') has a single 2D slice; it is not a 3D volume.", uid, first)
    return True


def find_dicom_series(files: Sequence[os.PathLike]) -> list[dict]:
    """Group DICOM files into image series by ``SeriesInstanceUID``.

    Args:
        files: candidate files (non-DICOM files are ignored with a log line).

    Returns:
        one dict per usable series, sorted by its first file: ``{"uid", "files"}`` (slices sorted by
        ``InstanceNumber``, then name), ``"folder"`` (the common folder), ``"whole_folder"`` (True
        when the folder's DICOM files are exactly this series), ``"description"``.
    """
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    dicom_per_folder: dict[Path, int] = defaultdict(int)
    for f in files:
        path = Path(f)
        if not _is_dicom(path):
            continue
        dicom_per_folder[path.parent] += 1
        header = _read_header(path)
        if header is None:
            continue
        uid = str(header.get("SeriesInstanceUID", "")) or f"no-series-uid:{path.parent}"
        headers[uid].append((path, header))
    series = []
    for uid, items in headers.items():
        items.sort(key=lambda x: (int(x[1].get("InstanceNumber", 0) or 0), x[0].name))
        if not _usable(uid, items):
            continue
        folders = {p.parent for p, _ in items}
        folder = folders.pop() if len(folders) == 1 else Path(os.path.commonpath([str(p) for p, _ in items]))
        whole = not folders and dicom_per_folder[folder] == len(items)
        series.append(
            {
                "uid": uid,
                "files": [str(p) for p, _ in items],
                "folder": str(folder),
                "whole_folder": whole,
                "description": str(items[0][1].get("SeriesDescription", "")),
            }
        )
    return sorted(series, key=lambda s: s["files"][0])


def _case_id(path: Path, base: Path) -> str:
    rel = path.relative_to(base) if path != base and base in path.parents else Path(path.name)
    name = rel.as_posix()
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_EXTENSIONS_2D):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _list_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def inference_datalist(
    input_path: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    exclude_substrings: Sequence[str] = (),
) -> list[dict]:
    """Datalist ``[{"image", "case_id"}, ...]`` for inference on a file or a folder (searched recursively).

    ``case_id`` is the path relative to ``input_path`` without the image extension (2D images,
    NIfTI), or, for a DICOM series, the series folder's relative path plus ``SeriesInstanceUID``
    when the folder holds several series. Items are sorted by path.

    Args:
        input_path: one image file, one NIfTI file, one DICOM file (its whole series in its folder
            is used), or a folder.
        output_file: optional JSON file (``{"testing": items}``, written atomically).
        spatial_dims: 2 for PNG/JPEG/BMP/TIFF images, 3 for NIfTI files and DICOM series.
        exclude_substrings: file names containing any of these are skipped (e.g. ``"_mask"``).

    Returns:
        the items.

    Raises:
        FileNotFoundError: when ``input_path`` does not exist or holds no usable image.
        ValueError: for an unsupported file given directly, or ``spatial_dims`` not 2 or 3.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    root = Path(input_path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"input_path '{input_path}' does not exist.")
    expected = (
        f"2D images ({', '.join(IMAGE_EXTENSIONS_2D)})"
        if spatial_dims == 2
        else f"NIfTI files ({', '.join(NIFTI_SUFFIXES)}) or DICOM series"
    )
    base = root if root.is_dir() else root.parent
    if root.is_file():
        if spatial_dims == 3 and _is_dicom(root):
            files = [p for p in sorted(root.parent.iterdir()) if p.is_file() and not p.name.startswith(".")]
            items = _dicom_items([s for s in find_dicom_series(files) if str(root) in s["files"]], base)
            if not items:
                raise FileNotFoundError(f"'{root}' is a DICOM file but not part of a usable image series (see the log).")
            return _finish(items, output_file)
        if not _accepted(root, spatial_dims):
            raise ValueError(f"unsupported input file '{root}': expected {expected} for spatial_dims={spatial_dims}.")
        return _finish([{"image": str(root), "case_id": _case_id(root, base)}], output_file)
    items, leftovers = [], []
    for path in _list_files(root):
        if any(s in path.name for s in exclude_substrings):
            logger.info("ignoring '%s' (name contains one of %s).", path, list(exclude_substrings))
        elif _accepted(path, spatial_dims):
            items.append({"image": str(path), "case_id": _case_id(path, base)})
        elif spatial_dims == 3:
            leftovers.append(path)
        else:
            logger.info("ignoring '%s': not a 2D image file (%s).", path, ", ".join(IMAGE_EXTENSIONS_2D))
    if leftovers:
        dicom = [p for p in leftovers if _is_dicom(p)]
        for p in sorted(set(leftovers) - set(dicom)):
            logger.info("ignoring '%s': neither NIfTI nor DICOM.", p)
        items += _dicom_items(find_dicom_series(dicom), base)
    if not items:
        raise FileNotFoundError(f"no usable input in '{root}': expected {expected} (searched recursively).")
    items.sort(key=lambda x: x["image"] if isinstance(x["image"], str) else x["image"][0])
    return _finish(items, output_file)


def _accepted(path: Path, spatial_dims: int) -> bool:
    if spatial_dims == 2:
        return path.suffix.lower() in IMAGE_EXTENSIONS_2D
    return _is_nifti(path)


def _dicom_items(series: list[dict], base: Path) -> list[dict]:
    per_folder: dict[str, int] = defaultdict(int)
    for s in series:
        per_folder[s["folder"]] += 1
    items = []
    for s in series:
        folder = Path(s["folder"])
        case_id = folder.relative_to(base).as_posix() if base in folder.parents else folder.name
        if per_folder[s["folder"]] > 1 or not s["whole_folder"]:
            case_id = f"{case_id}/{s['uid']}" if case_id not in ("", ".") else s["uid"]
        logger.info("DICOM series %s ('%s'): %d files in '%s'.", s["uid"], s["description"], len(s["files"]), folder)
        items.append({"image": s["folder"] if s["whole_folder"] else s["files"], "case_id": case_id})
    return items


def _finish(items: list[dict], output_file: str | os.PathLike | None) -> list[dict]:
    if output_file is not None:
        write_datalist({"testing": items}, output_file)
    return items
