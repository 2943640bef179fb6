"""MedMNIST v2/v3 (Yang et al. 2023) ``.npz`` files: MD5 check, download, conversion and datalist.

An official file ``<flag>.npz`` holds ``{train,val,test}_images`` (uint8; ``N x 28 x 28 [x 3]`` in
2D, ``N x 28 x 28 x 28`` in 3D) and ``{train,val,test}_labels`` (``N x 1``). Each sample is
converted once to a PNG (2D, colour kept) or a NIfTI volume (3D, identity affine: MedMNIST
resamples NoduleMNIST3D to 1 mm, VesselMNIST3D is a voxelised mesh) so the bundles read them
with ``LoadImaged`` like any other dataset. The official train/val/test split is used unchanged.

MD5s and URLs are those of ``medmnist/info.py`` (MedMNIST v3.0, Zenodo record 10519652);
VesselMNIST3D's earlier v2 file (record 6496656, one more validation sample) is accepted too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from drd_components.data.datalist_io import write_datalist
from drd_components.data.multiview import SAMPLE_ID_KEY

__all__ = ["MEDMNIST_INFO", "file_md5", "verify_medmnist_md5", "download_medmnist", "medmnist_datalist"]

#: per flag: url, spatial_dims, class names, and the accepted releases (MD5 -> sample counts).
MEDMNIST_INFO: dict[str, dict] = {
    "retinamnist": {
        "url": "https://zenodo.org/records/10519652/files/retinamnist.npz?download=1",
        "spatial_dims": 2,
        "classes": ("0", "1", "2", "3", "4"),
        "releases": {"bd4c0672f1bba3e3a89f0e4e876791e4": {"train": 1080, "val": 120, "test": 400}},
        "licence": "CC BY 4.0",
    },
    "nodulemnist3d": {
        "url": "https://zenodo.org/records/10519652/files/nodulemnist3d.npz?download=1",
        "spatial_dims": 3,
        "classes": ("benign", "malignant"),
        "releases": {"8755a7e9e05a4d9ce80a24c3e7a256f3": {"train": 1158, "val": 165, "test": 310}},
        "licence": "CC BY 4.0",
    },
    "vesselmnist3d": {
        "url": "https://zenodo.org/records/10519652/files/vesselmnist3d.npz?download=1",
        "spatial_dims": 3,
        "classes": ("vessel", "aneurysm"),
        "releases": {
            "b41fd4f7e7e2feedddb201585ecafa1b": {"train": 1335, "val": 191, "test": 382},
            "2ba5b80617d705141f3f85627108fce8": {"train": 1335, "val": 192, "test": 382},
        },
        "licence": "CC BY 4.0",
    },
}
_SPLITS = {"train": "training", "val": "validation", "test": "test"}
_MARKER = ".conversion.json"


def _info(flag: str) -> dict:
    if flag not in MEDMNIST_INFO:
        raise ValueError(f"unknown MedMNIST flag '{flag}': supported {sorted(MEDMNIST_INFO)}.")
    return MEDMNIST_INFO[flag]


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file (MedMNIST publishes MD5s, not SHA-256)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_medmnist_md5(path: str | os.PathLike, flag: str) -> str:
    """Check a MedMNIST file against the official MD5s of ``flag``.

    Returns:
        the matching MD5.

    Raises:
        ValueError: on a mismatch (the message gives both digests and the official URL).
    """
    info = _info(flag)
    md5 = file_md5(path)
    if md5 not in info["releases"]:
        raise ValueError(
            f"'{path}' has MD5 {md5}, not the official {flag}.npz MD5 {sorted(info['releases'])}: "
            f"the file is corrupt or not the official release. Download it from {info['url']}."
        )
    return md5


def download_medmnist(flag: str, dataset_dir: str | os.PathLike) -> Path:
    """Download the official ``<flag>.npz`` into ``dataset_dir`` and verify its MD5.

    An existing file with the official MD5 is kept. The download goes through
    :func:`drd_components.io.download_file` (temporary file, atomic rename) to an ``.unverified``
    name and is renamed to ``<flag>.npz`` only after the MD5 matched; on a mismatch it is deleted.

    Returns:
        the verified file.

    Raises:
        ValueError: unknown flag or MD5 mismatch.
        drd_components.io.DownloadError: when the transfer fails.
    """
    from drd_components.io import download_file

    info = _info(flag)
    dest = Path(dataset_dir) / f"{flag}.npz"
    if dest.is_file() and file_md5(dest) in info["releases"]:
        return dest
    tmp = dest.with_name(f"{dest.name}.unverified")
    download_file(info["url"], tmp, sha256=None)
    try:
        verify_medmnist_md5(tmp, flag)
    except ValueError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def _load_arrays(npz_path: Path, flag: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    spatial_dims = _info(flag)["spatial_dims"]
    out = {}
    with np.load(npz_path, allow_pickle=False) as data:
        for split in _SPLITS:
            for kind in ("images", "labels"):
                if f"{split}_{kind}" not in data.files:
                    raise ValueError(f"'{npz_path}' lacks the key '{split}_{kind}' (has {sorted(data.files)}).")
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
            ok_shape = images.ndim == 4 if spatial_dims == 3 else images.ndim in (3, 4)
            if not ok_shape or images.dtype != np.uint8 or (spatial_dims == 2 and images.ndim == 4 and images.shape[-1] != 3):
                raise ValueError(
                    f"'{npz_path}' key '{split}_images' has shape {images.shape} {images.dtype}: expected uint8 "
                    + ("N x D x H x W." if spatial_dims == 3 else "N x H x W or N x H x W x 3.")
                )
            labels = labels.reshape(len(labels), -1)
            if labels.shape != (len(images), 1):
                raise ValueError(f"'{npz_path}' key '{split}_labels' has shape {labels.shape}: expected ({len(images)}, 1).")
            out[split] = (images, labels[:, 0].astype(np.int64))
    return out


def _write_sample(array: np.ndarray, path: Path, spatial_dims: int) -> None:
    tmp = path.with_name(f".tmp.{path.name}")  # keeps the extension, which selects the format
    if spatial_dims == 2:
        from PIL import Image

        Image.fromarray(array).save(tmp, format="PNG")
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp)
    os.replace(tmp, path)


def medmnist_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    flag: str = "retinamnist",
    image_dir: str | os.PathLike | None = None,
    verify_md5: bool = True,
) -> dict[str, list[dict]]:
    """Official-split datalist of a MedMNIST file, converting its samples to image files once.

    Files are ``<image_dir>/<split>/<split>_<index:05d>.png`` (2D) or ``.nii.gz`` (3D). A marker
    ``.conversion.json`` records the source file's MD5 and counts; when it matches and every file
    exists the conversion is skipped, otherwise it is redone (a changed source never mixes with
    old images).

    Args:
        dataset_dir: folder holding ``<flag>.npz``.
        output_file: optional JSON datalist to write (atomically).
        flag: ``retinamnist``, ``nodulemnist3d`` or ``vesselmnist3d``.
        image_dir: where to write the images; default ``<flag>_images`` next to ``output_file``
            (next to the npz file when no ``output_file`` is given).
        verify_md5: check the official MD5 first (turn off only for test fixtures).

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label", "sample_id"}`` (integer
        labels: RetinaMNIST grade 0-4, NoduleMNIST3D / VesselMNIST3D 0/1; ``sample_id`` is
        ``<flag>/<source md5>/<split>/<index>``, the identity a teacher cache keys on).

    Raises:
        FileNotFoundError: when ``<flag>.npz`` is missing.
        ValueError: unknown flag, MD5 mismatch, missing keys, bad shapes or counts that differ
            from the official release.
    """
    info = _info(flag)
    npz_path = Path(dataset_dir).resolve() / f"{flag}.npz"
    if not npz_path.is_file():
        raise FileNotFoundError(
            f"'{npz_path}' not found: expected the official MedMNIST file {flag}.npz in dataset_dir "
            f"(download: {info['url']}, or `python tools/prepare_data.py {flag} --output_dir ...`)."
        )
    md5 = verify_medmnist_md5(npz_path, flag) if verify_md5 else file_md5(npz_path)
    arrays = _load_arrays(npz_path, flag)
    counts = {split: len(arrays[split][0]) for split in _SPLITS}
    if verify_md5 and counts != info["releases"][md5]:
        raise ValueError(f"'{npz_path}' has {counts} samples, the official release has {info['releases'][md5]}.")
    if image_dir is None:
        image_dir = (Path(output_file).parent if output_file is not None else npz_path.parent) / f"{flag}_images"
    out_dir = Path(image_dir).resolve()
    ext = ".png" if info["spatial_dims"] == 2 else ".nii.gz"
    parts: dict[str, list[dict]] = {}
    files: dict[str, list[Path]] = {}
    for split, name in _SPLITS.items():
        paths = [out_dir / split / f"{split}_{i:05d}{ext}" for i in range(counts[split])]
        files[split] = paths
        # sample_id: the source file's MD5 + split + index, so a teacher cache keyed on it is shared by
        # runs that convert the same .npz into different folders (each run's output_dir)
        parts[name] = [
            {"image": str(p), "label": int(y), SAMPLE_ID_KEY: f"{flag}/{md5}/{split}/{i:05d}"}
            for i, (p, y) in enumerate(zip(paths, arrays[split][1]))
        ]
    marker = out_dir / _MARKER
    expected = {"source_md5": md5, "flag": flag, "counts": counts}
    done = marker.is_file() and json.loads(marker.read_text()) == expected
    if not (done and all(p.is_file() for ps in files.values() for p in ps)):
        marker.unlink(missing_ok=True)
        for split, paths in files.items():
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            for p, array in zip(paths, arrays[split][0]):
                _write_sample(np.ascontiguousarray(array), p, info["spatial_dims"])
        write_datalist(expected, marker)
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
