"""Prepare the 3D datasets of the DRD bundles: download (where the source allows it) and write datalists.

Usage:
    python tools/prepare_data_3d.py msd_spleen --output_dir /data/spleen          # downloads Task09_Spleen.tar
    python tools/prepare_data_3d.py msd_prostate --output_dir /data/prostate --dataset_dir /data/Task05_Prostate
    python tools/prepare_data_3d.py mosmeddata --output_dir /data/mosmed --dataset_dir /data/COVID19_1110
    python tools/prepare_data_3d.py btcv --output_dir /data/btcv --dataset_dir /data/btcv   # holds RawData/

Every preparer is ``(output_dir, dataset_dir=None, **kw) -> summary``: it writes
``<output_dir>/datalist.json`` and prints a JSON summary. MSD archives come from the mirror MONAI
uses (``monai.apps.DecathlonDataset``), are checked against the MD5 MONAI lists (a mismatch deletes
the partial file) and extracted with :func:`drd_components.io.archive.safe_extract_tar`.
MosMedData and BTCV need a registration or a licence agreement: without ``dataset_dir`` the
preparer prints the manual steps and exits with status 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import fire

from drd_components.data.btcv import BTCV_LABELS, btcv_gallbladder_datalist, find_btcv_training_dir
from drd_components.data.mosmed import MOSMED_CLASSES, find_mosmeddata_studies, mosmeddata_datalist
from drd_components.data.msd import MSD_TASKS, find_msd_task_dir, msd_datalist
from drd_components.io.archive import safe_extract_tar
from drd_components.io.download import download_file

__all__ = ["PREPARERS", "ManualDownloadRequired", "MANUAL_STEPS", "prepare_msd", "prepare_mosmeddata", "prepare_btcv"]

DATALIST_NAME = "datalist.json"

MANUAL_STEPS = {
    "mosmeddata": """MosMedData (COVID19_1110) cannot be downloaded automatically (licence agreement on the site).
  1. Open https://mosmed.ai/datasets/covid19_1110, accept the licence terms shown there and download
     the COVID19_1110 archive.
  2. Extract it so that this layout exists:
       <folder>/COVID19_1110/studies/CT-0/study_0001.nii.gz ... studies/CT-4/study_XXXX.nii.gz
  3. Run again with --dataset_dir <folder>  (COVID19_1110, its studies/ folder or any parent).""",
    "btcv": """BTCV (Multi-Atlas Labeling Beyond the Cranial Vault) needs a Synapse account.
  1. Register at https://www.synapse.org, open https://www.synapse.org/#!Synapse:syn3193805 (Files > Abdomen)
     and download RawData.zip (30 labelled training CTs).
  2. Extract it so that this layout exists:
       <folder>/RawData/Training/img/img0001.nii.gz and <folder>/RawData/Training/label/label0001.nii.gz
  3. Run again with --dataset_dir <folder>  (the folder holding RawData/, or RawData/Training).""",
}


class ManualDownloadRequired(SystemExit):
    """Raised (exit status 2) when a dataset must be fetched by hand; ``instructions`` says how."""

    def __init__(self, name: str) -> None:
        super().__init__(2)
        self.instructions = MANUAL_STEPS[name]


def _manual(name: str) -> ManualDownloadRequired:
    print(f"dataset_dir is required for '{name}'.\n{MANUAL_STEPS[name]}", file=sys.stderr)
    return ManualDownloadRequired(name)


def _finish(summary: dict, parts: dict) -> dict:
    summary["split"] = {k: len(v) for k, v in parts.items()}
    print(json.dumps(summary, indent=2))
    return summary


def prepare_msd(task: str, output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """Download (unless ``dataset_dir`` is given) and split an MSD task.

    Args:
        task: MSD task folder name, a key of :data:`drd_components.data.msd.MSD_TASKS`.
        output_dir: folder for the archive, the extracted task and ``datalist.json``.
        dataset_dir: an existing task folder (or a parent of it); skips the download.
        kwargs: passed to :func:`drd_components.data.msd.msd_datalist` (``val_fraction``,
            ``test_fraction``, ``seed``, ``max_cases``).

    Returns:
        the summary (also printed as JSON).
    """
    info = MSD_TASKS[task]
    out = Path(output_dir)
    if dataset_dir is None:
        archive = download_file(info["url"], out / f"{task}.tar", md5=info["md5"])
        safe_extract_tar(archive, out)
        dataset_dir = str(out)
    root = find_msd_task_dir(dataset_dir, task)
    datalist_file = out / DATALIST_NAME
    parts = msd_datalist(root, datalist_file, **kwargs)
    summary = {
        "dataset": task,
        "dataset_dir": str(root),
        "labels": {str(k): v for k, v in info["labels"].items()},
        "modalities": list(info["modalities"]),
        "cases": sum(len(v) for v in parts.values()),
        "datalist": str(datalist_file),
    }
    return _finish(summary, parts)


def prepare_mosmeddata(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """Split a local MosMedData ``COVID19_1110`` copy (manual download; see :data:`MANUAL_STEPS`).

    Args:
        output_dir: folder for ``datalist.json``.
        dataset_dir: ``COVID19_1110`` or a parent; without it the manual steps are printed.
        kwargs: passed to :func:`drd_components.data.mosmed.mosmeddata_datalist`.

    Raises:
        ManualDownloadRequired: without ``dataset_dir`` (exit status 2).
    """
    if dataset_dir is None:
        raise _manual("mosmeddata")
    datalist_file = Path(output_dir) / DATALIST_NAME
    parts = mosmeddata_datalist(dataset_dir, datalist_file, **kwargs)
    items = [x for v in parts.values() for x in v]
    summary = {
        "dataset": "MosMedData COVID19_1110",
        "dataset_dir": str(find_mosmeddata_studies(dataset_dir)),
        "cases": len(items),
        "per_class": {c: sum(1 for x in items if x["class_name"] == c) for c in MOSMED_CLASSES},
        "datalist": str(datalist_file),
    }
    return _finish(summary, parts)


def prepare_btcv(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """Split a local BTCV ``RawData`` copy (manual download; see :data:`MANUAL_STEPS`).

    Args:
        output_dir: folder for ``datalist.json``.
        dataset_dir: a folder holding ``RawData/Training`` (or it itself); without it the manual
            steps are printed.
        kwargs: passed to :func:`drd_components.data.btcv.btcv_gallbladder_datalist`.

    Raises:
        ManualDownloadRequired: without ``dataset_dir`` (exit status 2).
    """
    if dataset_dir is None:
        raise _manual("btcv")
    datalist_file = Path(output_dir) / DATALIST_NAME
    parts = btcv_gallbladder_datalist(dataset_dir, datalist_file, **kwargs)
    summary = {
        "dataset": "BTCV multi-organ (gallbladder = label 4)",
        "dataset_dir": str(find_btcv_training_dir(dataset_dir)),
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "cases": sum(len(v) for v in parts.values()),
        "datalist": str(datalist_file),
    }
    return _finish(summary, parts)


def prepare_msd_spleen(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """MSD Task09_Spleen (CT; 0 background, 1 spleen); see :func:`prepare_msd`."""
    return prepare_msd("Task09_Spleen", output_dir, dataset_dir, **kwargs)


def prepare_msd_prostate(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """MSD Task05_Prostate (4D T2 + ADC MRI; 0 background, 1 PZ, 2 TZ); see :func:`prepare_msd`."""
    return prepare_msd("Task05_Prostate", output_dir, dataset_dir, **kwargs)


def prepare_msd_pancreas(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """MSD Task07_Pancreas (CT; 0 background, 1 pancreas, 2 tumour); see :func:`prepare_msd`."""
    return prepare_msd("Task07_Pancreas", output_dir, dataset_dir, **kwargs)


def prepare_msd_hippocampus(output_dir: str, dataset_dir: str | None = None, **kwargs) -> dict:
    """MSD Task04_Hippocampus (MRI; 0 background, 1 anterior, 2 posterior); see :func:`prepare_msd`."""
    return prepare_msd("Task04_Hippocampus", output_dir, dataset_dir, **kwargs)


#: preparer name -> ``(output_dir, dataset_dir=None, **kw) -> summary``.
PREPARERS: dict[str, Callable[..., dict]] = {
    "mosmeddata": prepare_mosmeddata,
    "msd_spleen": prepare_msd_spleen,
    "msd_prostate": prepare_msd_prostate,
    "msd_pancreas": prepare_msd_pancreas,
    "msd_hippocampus": prepare_msd_hippocampus,
    "btcv": prepare_btcv,
}

def _command(preparer: Callable[..., dict]) -> Callable[..., None]:
    """CLI wrapper: the summary is already printed as JSON, so fire should not print it again."""

    @functools.wraps(preparer)
    def run(*args, **kwargs) -> None:
        preparer(*args, **kwargs)

    return run


if __name__ == "__main__":
    fire.Fire({name: _command(fn) for name, fn in PREPARERS.items()})
