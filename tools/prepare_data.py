"""Download and prepare datasets for the DRD bundles.

Usage:
    python tools/prepare_data.py list
    python tools/prepare_data.py busi --output_dir /data/busi [--sha256 <digest>]
    python tools/prepare_data.py busi_local --dataset_dir /data/Dataset_BUSI_with_GT --output_dir /data/busi_lists
    python tools/prepare_data.py retinamnist --output_dir /data/retinamnist        # downloads + MD5
    python tools/prepare_data.py brain_tumor_mri --output_dir /data/btc [--dataset_dir /data/btc_copy]
    python tools/prepare_data.py ham10000 --output_dir /data/ham --dataset_dir /data/HAM10000
    (also pneumonia_xray, nodulemnist3d, vesselmnist3d, fives, kvasir_seg, isic2018_seg, and the
    3D preparers of tools/prepare_data_3d.py: mosmeddata, msd_spleen, msd_prostate, msd_pancreas,
    msd_hippocampus, btcv)

Every download goes through a temporary file and is checked against a checksum (SHA-256, or the
MD5 MedMNIST publishes) before it is kept; archives are extracted only after checking that no
member escapes the output folder. Sources that need a registration or a manual click print where
to get which files and exit with status 2 when no ``--dataset_dir`` is given. Every command writes
``<output_dir>/datalist.json`` and prints a JSON summary (counts per split and class, duplicates moved).
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fire

from drd_components.data.brain_tumor import BRAIN_TUMOR_CLASSES, brain_tumor_mri_datalist
from drd_components.data.busi import BUSI_CLASSES, busi_classification_datalist, find_busi_cases
from drd_components.data.fives import fives_datalist
from drd_components.data.ham10000 import HAM10000_CLASSES, ham10000_datalist
from drd_components.data.isic_segmentation import isic2018_segmentation_datalist
from drd_components.data.kvasir import kvasir_seg_datalist
from drd_components.data.medmnist import MEDMNIST_INFO, download_medmnist, medmnist_datalist
from drd_components.data.pneumonia import PNEUMONIA_CLASSES, pneumonia_xray_datalist
from drd_components.io import download_file, safe_extract_zip

#: the archive linked from the authors' dataset page (Al-Dhabyani et al. 2020).
BUSI_URL = "https://scholar.cu.edu.eg/Dataset_BUSI.zip"
#: the authors' GitHub repository at its only commit (Bhuvaji et al. 2020), as a zip archive.
BRAIN_TUMOR_URL = (
    "https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet/archive/"
    "3ea9f4eae54c67e5bddbf6f7a73582967a5f5f79.zip"
)
#: the official Kvasir-SEG archive (Simula).
KVASIR_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"

#: dataset -> (official source, downloads automatically, manual instructions or None).
SOURCES: dict[str, tuple[str, bool, str | None]] = {
    "busi": ("https://scholar.cu.edu.eg/?q=afahmy/pages/dataset", True, None),
    "brain_tumor_mri": ("https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet", True, None),
    "ham10000": (
        "https://doi.org/10.7910/DVN/DBW86T",
        False,
        "HAM10000 (CC BY-NC 4.0) is on Harvard Dataverse, https://doi.org/10.7910/DVN/DBW86T (accept the terms "
        "in a browser). Download HAM10000_metadata (save as HAM10000_metadata.csv), HAM10000_images_part_1.zip and "
        "HAM10000_images_part_2.zip, unzip both into one folder next to the csv:\n"
        "  <dir>/HAM10000_metadata.csv\n  <dir>/HAM10000_images_part_1/ISIC_*.jpg\n  <dir>/HAM10000_images_part_2/ISIC_*.jpg\n"
        "then run again with --dataset_dir <dir>.",
    ),
    "pneumonia_xray": (
        "https://data.mendeley.com/datasets/rscbjbr9sj/2",
        False,
        "Kermany et al. 2018 chest X-rays (CC BY 4.0): open https://data.mendeley.com/datasets/rscbjbr9sj/2 and "
        "download ChestXRay2017.zip (or the Kaggle copy paultimothymooney/chest-xray-pneumonia, login needed). "
        "Unzip it so that <dir>/chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg exist (a val/ folder is "
        "optional), then run again with --dataset_dir <dir>.",
    ),
    **{flag: (info["url"], True, None) for flag, info in MEDMNIST_INFO.items()},
    "fives": (
        "https://doi.org/10.6084/m9.figshare.19688169",
        False,
        "FIVES (Jin et al. 2022, CC BY 4.0) is on figshare: https://doi.org/10.6084/m9.figshare.19688169 . "
        "Click 'Download' for 'FIVES A Fundus Image Dataset for AI-based Vessel Segmentation.rar', extract it "
        "(unrar/7z) so that <dir>/.../{train,test}/Original/*.png and <dir>/.../{train,test}/Ground truth/*.png "
        "exist, then run again with --dataset_dir <dir>.",
    ),
    "kvasir_seg": ("https://datasets.simula.no/kvasir-seg/", True, None),
    "isic2018_seg": (
        "https://challenge.isic-archive.com/data/#2018",
        False,
        "ISIC 2018 Task 1 (CC BY-NC 4.0): from https://challenge.isic-archive.com/data/#2018 download "
        "ISIC2018_Task1-2_Training_Input.zip and ISIC2018_Task1_Training_GroundTruth.zip (optionally also the "
        "Validation and Test Input/GroundTruth zips, used as official splits), unzip them all into one <dir> "
        "(keeping the folder names), then run again with --dataset_dir <dir>.",
    ),
}
#: the 3D datasets provided by tools/prepare_data_3d.py (PREPARERS).
PREPARERS_3D = ("mosmeddata", "msd_spleen", "msd_prostate", "msd_pancreas", "msd_hippocampus", "btcv")


def _find_root(folder: Path) -> Path:
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if all((candidate / c).is_dir() for c in BUSI_CLASSES):
            return candidate
    raise FileNotFoundError(f"no folder with {list(BUSI_CLASSES)} sub-folders under {folder}.")


def _summary(root: Path, datalist_file: Path, seed: int) -> dict:
    cases = find_busi_cases(root)
    parts = busi_classification_datalist(root, datalist_file, seed=seed)
    summary = {
        "dataset_dir": str(root),
        "images": len(cases),
        "per_class": {c: sum(1 for x in cases if x["class_name"] == c) for c in BUSI_CLASSES},
        "images_with_several_masks": sum(1 for x in cases if len(x["masks"]) > 1),
        "split": {k: len(v) for k, v in parts.items()},
        "datalist": str(datalist_file),
    }
    print(json.dumps(summary, indent=2))
    return summary


def datalist_summary(name: str, dataset_dir: Path, parts: dict, datalist_file: Path, class_names=None) -> dict:
    """Counts per split (and per class for classification), plus the duplicate report if any.

    Args:
        name: dataset name.
        dataset_dir: the dataset folder used.
        parts: the datalist.
        datalist_file: where it was written.
        class_names: label index -> name for classification sets (``None`` for segmentation).

    Returns:
        the summary (also printed as JSON).
    """
    summary: dict = {"dataset": name, "dataset_dir": str(dataset_dir), "datalist": str(datalist_file),
                     "split": {k: len(v) for k, v in parts.items()}}
    if class_names is not None:
        summary["per_class"] = {
            k: {class_names[lab]: c for lab, c in sorted(Counter(r["label"] for r in v).items())} for k, v in parts.items()
        }
    report = datalist_file.with_name(f"{datalist_file.stem}_duplicates.json")
    if report.is_file():
        rep = json.loads(report.read_text())
        summary["duplicates"] = {**rep["counts"], "applied": rep.get("applied", True), "report": str(report)}
    print(json.dumps(summary, indent=2))
    return summary


def _need_local(name: str, dataset_dir: str | None) -> Path:
    if dataset_dir is None:
        url, _, how = SOURCES[name]
        print(f"{name}: this dataset cannot be downloaded automatically (registration or manual download at {url}).\n{how}")
        raise SystemExit(2)
    return Path(dataset_dir)


def _download_zip(url: str, out: Path, name: str, sha256: str | None) -> Path:
    archive = download_file(url, out / name, sha256=sha256)
    if not sha256:
        from drd_components.teachers.checkpoint import sha256sum

        digest = sha256sum(archive)
        (out / f"{name}.sha256").write_text(digest + "\n")
        print(f"archive sha256 (no published checksum; recorded, pass --sha256 next time): {digest}")
    extracted = out / "extracted"
    safe_extract_zip(archive, extracted)
    return extracted


def _locate(base: Path, accept: Callable[[Path], bool], what: str) -> Path:
    for cand in [base, *sorted(p for p in base.rglob("*") if p.is_dir())]:
        if accept(cand):
            return cand
    raise FileNotFoundError(f"no {what} found under '{base}'.")


def _load_3d_preparers() -> dict:
    errors = []
    for module in ("tools.prepare_data_3d", "prepare_data_3d"):
        try:
            return importlib.import_module(module).PREPARERS
        except ImportError as e:
            errors.append(f"{module}: {e}")
        except AttributeError as e:
            errors.append(f"{module}: no PREPARERS dict ({e})")
    raise RuntimeError(
        "the 3D dataset commands come from tools/prepare_data_3d.py (dict PREPARERS), which could not be "
        f"imported: {'; '.join(errors)}"
    )


def _command_3d(name: str) -> Callable:
    def command(self, output_dir: str, dataset_dir: str | None = None, **kwargs) -> None:
        preparers = _load_3d_preparers()
        if name not in preparers:
            raise RuntimeError(f"tools/prepare_data_3d.py PREPARERS has no '{name}' (has {sorted(preparers)}).")
        summary = preparers[name](output_dir, dataset_dir=dataset_dir, **kwargs)
        print(json.dumps(summary, indent=2, default=str))

    command.__name__ = name
    command.__doc__ = f"Prepare {name} (implemented in tools/prepare_data_3d.py); extra --key value options are passed on."
    return command


class PrepareData:
    """Dataset preparation commands."""

    def list(self) -> None:
        """Print every dataset with its official source and whether it downloads automatically."""
        rows = [{"dataset": k, "source": url, "automatic_download": auto} for k, (url, auto, _) in SOURCES.items()]
        rows += [{"dataset": k, "source": "see tools/prepare_data_3d.py", "automatic_download": None} for k in PREPARERS_3D]
        for r in rows:
            auto = {True: "automatic", False: "manual", None: "see 3D tool"}[r["automatic_download"]]
            print(f"{r['dataset']:<18} {auto:<12} {r['source']}")

    def busi(self, output_dir: str, url: str = BUSI_URL, sha256: str | None = None, seed: int = 0) -> None:
        """Download BUSI from the authors' source, extract it safely and write the split.

        The authors publish no checksum. Without ``--sha256`` the archive's digest is printed and
        saved next to it (``Dataset_BUSI.zip.sha256``); pass it on later runs so that any
        change of the remote file is detected.

        Args:
            output_dir: folder to download and extract into.
            url: archive address.
            sha256: expected SHA-256 of the archive.
            seed: split seed.
        """
        out = Path(output_dir)
        archive = download_file(url, out / "Dataset_BUSI.zip", sha256=sha256)
        if not sha256:
            from drd_components.teachers.checkpoint import sha256sum

            digest = sha256sum(archive)
            (out / "Dataset_BUSI.zip.sha256").write_text(digest + "\n")
            print(f"archive sha256 (no published checksum; recorded): {digest}")
        safe_extract_zip(archive, out / "extracted")
        root = _find_root(out / "extracted")
        _summary(root, out / "busi_datalist.json", seed)
        print(f"\nTrain with: --dataset_dir '{root}'")

    def busi_local(self, dataset_dir: str, output_dir: str, seed: int = 0) -> None:
        """Check a local BUSI copy and write its deterministic stratified split to ``output_dir``."""
        root = _find_root(Path(dataset_dir))
        _summary(root, Path(output_dir) / "busi_datalist.json", seed)

    def brain_tumor_mri(
        self, output_dir: str, dataset_dir: str | None = None, sha256: str | None = None, seed: int = 0,
        move_duplicates: bool = True,
    ) -> None:
        """Brain Tumor Classification (MRI): download the authors' GitHub archive (commit-pinned; no
        published checksum, the digest is recorded) or use ``--dataset_dir``; writes the datalist and
        ``datalist_duplicates.json`` (cross-split duplicates moved to the test side)."""
        out = Path(output_dir)
        if dataset_dir is None:
            extracted = _download_zip(BRAIN_TUMOR_URL, out, "brain_tumor_mri.zip", sha256)
            root = _locate(extracted, lambda p: (p / "Training").is_dir() and (p / "Testing").is_dir(), "Training/ and Testing/")
        else:
            root = Path(dataset_dir)
        parts = brain_tumor_mri_datalist(root, out / "datalist.json", seed=seed, move_duplicates=move_duplicates)
        datalist_summary("brain_tumor_mri", root, parts, out / "datalist.json", BRAIN_TUMOR_CLASSES)

    def ham10000(self, output_dir: str, dataset_dir: str | None = None, seed: int = 0) -> None:
        """HAM10000 (manual download, see the printed instructions): lesion-grouped stratified split."""
        root = _need_local("ham10000", dataset_dir)
        parts = ham10000_datalist(root, Path(output_dir) / "datalist.json", seed=seed)
        datalist_summary("ham10000", root, parts, Path(output_dir) / "datalist.json", HAM10000_CLASSES)

    def pneumonia_xray(self, output_dir: str, dataset_dir: str | None = None, seed: int = 0) -> None:
        """Pediatric chest X-ray pneumonia (manual download): official test split, validation from train+val."""
        root = _need_local("pneumonia_xray", dataset_dir)
        parts = pneumonia_xray_datalist(root, Path(output_dir) / "datalist.json", seed=seed)
        datalist_summary("pneumonia_xray", root, parts, Path(output_dir) / "datalist.json", PNEUMONIA_CLASSES)

    def _medmnist(self, flag: str, output_dir: str, dataset_dir: str | None, verify_md5: bool) -> None:
        out = Path(output_dir)
        root = Path(dataset_dir) if dataset_dir is not None else download_medmnist(flag, out).parent
        parts = medmnist_datalist(root, out / "datalist.json", flag=flag, verify_md5=verify_md5)
        datalist_summary(flag, root, parts, out / "datalist.json", MEDMNIST_INFO[flag]["classes"])

    def retinamnist(self, output_dir: str, dataset_dir: str | None = None, verify_md5: bool = True) -> None:
        """RetinaMNIST 28 px: download from Zenodo (MD5-verified) or use ``--dataset_dir`` holding retinamnist.npz;
        converts to PNG under ``<output_dir>/retinamnist_images``."""
        self._medmnist("retinamnist", output_dir, dataset_dir, verify_md5)

    def nodulemnist3d(self, output_dir: str, dataset_dir: str | None = None, verify_md5: bool = True) -> None:
        """NoduleMNIST3D 28^3: download from Zenodo (MD5-verified) or use ``--dataset_dir``; converts to NIfTI."""
        self._medmnist("nodulemnist3d", output_dir, dataset_dir, verify_md5)

    def vesselmnist3d(self, output_dir: str, dataset_dir: str | None = None, verify_md5: bool = True) -> None:
        """VesselMNIST3D 28^3: download from Zenodo (MD5-verified) or use ``--dataset_dir``; converts to NIfTI."""
        self._medmnist("vesselmnist3d", output_dir, dataset_dir, verify_md5)

    def fives(self, output_dir: str, dataset_dir: str | None = None, seed: int = 0) -> None:
        """FIVES vessel segmentation (manual figshare download): official split, validation from train."""
        root = _need_local("fives", dataset_dir)
        parts = fives_datalist(root, Path(output_dir) / "datalist.json", seed=seed)
        datalist_summary("fives", root, parts, Path(output_dir) / "datalist.json")

    def kvasir_seg(self, output_dir: str, dataset_dir: str | None = None, sha256: str | None = None, seed: int = 0) -> None:
        """Kvasir-SEG: download the official Simula zip (no published checksum: the digest is recorded;
        pass ``--sha256`` to enforce it) or use ``--dataset_dir``; seeded random 80/10/10 split."""
        out = Path(output_dir)
        if dataset_dir is None:
            extracted = _download_zip(KVASIR_URL, out, "kvasir-seg.zip", sha256)
            root = _locate(extracted, lambda p: (p / "images").is_dir() and (p / "masks").is_dir(), "images/ and masks/")
        else:
            root = Path(dataset_dir)
        parts = kvasir_seg_datalist(root, out / "datalist.json", seed=seed)
        datalist_summary("kvasir_seg", root, parts, out / "datalist.json")

    def isic2018_seg(self, output_dir: str, dataset_dir: str | None = None, seed: int = 0) -> None:
        """ISIC 2018 Task 1 (manual download): official Validation/Test folders when present."""
        root = _need_local("isic2018_seg", dataset_dir)
        parts = isic2018_segmentation_datalist(root, Path(output_dir) / "datalist.json", seed=seed)
        datalist_summary("isic2018_seg", root, parts, Path(output_dir) / "datalist.json")


for _name in PREPARERS_3D:
    setattr(PrepareData, _name, _command_3d(_name))


if __name__ == "__main__":
    fire.Fire(PrepareData)
