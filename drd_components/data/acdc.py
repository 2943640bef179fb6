"""ACDC (Automated Cardiac Diagnosis Challenge, Bernard et al. 2018) on-disk layout and datalists.

Official layout: ``<root>/training/patientXXX/`` (and ``testing/``) with ``Info.cfg`` (``ED``, ``ES``,
``Group``, ``Height``, ``NbFrame``, ``Weight``), the end-diastolic and end-systolic frames
``patientXXX_frameYY.nii.gz`` and their labels ``patientXXX_frameYY_gt.nii.gz`` (0 background,
1 RV cavity, 2 myocardium, 3 LV cavity); the 4D cine ``patientXXX_4d.nii.gz`` is not used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = [
    "ACDC_GROUPS",
    "ACDC_LABELS",
    "read_info_cfg",
    "find_acdc_cases",
    "acdc_datalist",
    "write_synthetic_acdc",
]

#: pathology groups, in the order of the official patient numbering (20 patients each).
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
#: label values of the ground-truth files.
ACDC_LABELS = {0: "background", 1: "rv_cavity", 2: "myocardium", 3: "lv_cavity"}
_PATIENT_RE = re.compile(r"^patient(\d{3})$")


def read_info_cfg(path: str | os.PathLike) -> dict:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines).

    ``ED``/``ES``/``NbFrame`` become ints, ``Height``/``Weight`` floats (some files write them
    without a decimal point), ``Group`` stays a string.

    Raises:
        ValueError: when ``ED``, ``ES`` or ``Group`` is missing or malformed.
    """
    info: dict = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        info[key] = value
    try:
        out = {"ED": int(info["ED"]), "ES": int(info["ES"]), "Group": info["Group"]}
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: needs integer 'ED', 'ES' and a 'Group' line, got {info}.") from e
    for key, cast in (("NbFrame", int), ("Height", float), ("Weight", float)):
        if key in info:
            try:
                out[key] = cast(float(info[key]))
            except ValueError:
                out[key] = None
    return out


def _patient_dirs(root: Path) -> list[Path]:
    dirs = []
    for base in (root, root / "training", root / "testing"):
        if base.is_dir():
            dirs += [p for p in base.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)]
    return sorted(set(dirs), key=lambda p: p.name)


def find_acdc_cases(dataset_dir: str | os.PathLike, require_labels: bool = True) -> list[dict]:
    """List the ED and ES frames of every ACDC patient folder.

    Patient folders ``patientXXX`` are searched in ``dataset_dir`` itself and in its ``training``
    and ``testing`` sub-folders. The frame numbers come from ``Info.cfg`` (never assumed).

    Args:
        dataset_dir: the ACDC root folder (or its ``training`` folder).
        require_labels: skip patients whose ``_gt`` files are missing (e.g. the testing set of
            older releases); when ``False`` they are listed without ``label``.

    Returns:
        one record per patient: ``{"patient", "group", "ed_frame", "es_frame", "frames": {"ED":
        {"image", "label"}, "ES": {...}}}`` with absolute paths, sorted by patient.

    Raises:
        FileNotFoundError: when the folder is missing or holds no usable patient folder.
    """
    root = Path(dataset_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist: expected the ACDC folder with training/patientXXX/.")
    cases = []
    for pdir in _patient_dirs(root):
        cfg = pdir / "Info.cfg"
        if not cfg.is_file():
            continue
        info = read_info_cfg(cfg)
        frames = {}
        for phase in ("ED", "ES"):
            stem = f"{pdir.name}_frame{info[phase]:02d}"
            image = pdir / f"{stem}.nii.gz"
            label = pdir / f"{stem}_gt.nii.gz"
            if not image.is_file():
                image = pdir / f"{stem}.nii"
                label = pdir / f"{stem}_gt.nii"
            if not image.is_file():
                frames = {}
                break
            rec = {"image": str(image)}
            if label.is_file():
                rec["label"] = str(label)
            elif require_labels:
                frames = {}
                break
            frames[phase] = rec
        if frames:
            cases.append(
                {"patient": pdir.name, "group": info["Group"], "ed_frame": info["ED"], "es_frame": info["ES"], "frames": frames}
            )
    if not cases:
        raise FileNotFoundError(
            f"no ACDC patient found under '{root}': expected patientXXX/ folders with Info.cfg and "
            "patientXXX_frameYY.nii.gz / _gt.nii.gz files (in the folder or its training/ sub-folder)."
        )
    return cases


def acdc_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_patients_per_group: int | None = None,
) -> dict[str, list[dict]]:
    """Train/validation/test datalist for ACDC, split by patient and stratified by pathology group.

    The patient ids are blocked by group (001-020 DCM, ...), so a split by id range would give
    class-pure folds; here each group is shuffled (seeded) and cut by the fractions. Both frames
    of a patient stay in the same part.

    Args:
        dataset_dir: the ACDC root folder.
        output_file: optional JSON file to write the datalist to (for the record).
        val_fraction: share of each group's patients for validation.
        test_fraction: share of each group's patients for testing.
        seed: split seed.
        max_patients_per_group: keep at most this many patients per group (before splitting, in
            id order) for quick runs; ``None`` keeps all.

    Returns:
        ``{"training", "validation", "test"}`` lists of per-frame records ``{"image", "label",
        "patient", "phase", "group"}``.
    """
    cases = find_acdc_cases(dataset_dir)
    if max_patients_per_group is not None:
        kept: dict[str, int] = {}
        subset = []
        for c in cases:
            if kept.get(c["group"], 0) < max_patients_per_group:
                kept[c["group"]] = kept.get(c["group"], 0) + 1
                subset.append(c)
        cases = subset
    patients = [{"patient": c["patient"], "group": c["group"]} for c in cases]
    train_fraction = 1.0 - val_fraction - test_fraction
    parts = stratified_split(patients, "group", {"training": train_fraction, "validation": val_fraction, "test": test_fraction}, seed)
    by_id = {c["patient"]: c for c in cases}
    out: dict[str, list[dict]] = {}
    for name, plist in parts.items():
        records = []
        for p in sorted(plist, key=lambda r: r["patient"]):
            c = by_id[p["patient"]]
            for phase in ("ED", "ES"):
                records.append(dict(c["frames"][phase], patient=c["patient"], phase=phase, group=c["group"]))
        out[name] = records
    if output_file is not None:
        write_datalist(out, output_file)
    return out


def _synthetic_heart(shape: tuple[int, int, int], spacing: tuple[float, float, float], lv_radius_mm: float, rng: np.random.Generator):
    """Concentric LV cavity + myocardium ring and a crescent RV, per slice, as a label volume."""
    nx, ny, nz = shape
    xx, yy = np.meshgrid(np.arange(nx) * spacing[0], np.arange(ny) * spacing[1], indexing="ij")
    cx, cy = nx * spacing[0] * rng.uniform(0.45, 0.55), ny * spacing[1] * rng.uniform(0.45, 0.55)
    label = np.zeros(shape, dtype=np.uint8)
    for z in range(1, nz - 1):
        taper = 1.0 - 0.5 * abs((z - nz / 2) / (nz / 2))  # smaller towards base and apex
        r_lv = lv_radius_mm * taper
        r_myo = r_lv + 8.0
        d = np.hypot(xx - cx, yy - cy)
        rv = np.hypot(xx - (cx - r_myo * 1.2), yy - cy) < r_myo * 1.1
        label[..., z][rv & (d >= r_myo)] = 1
        label[..., z][(d >= r_lv) & (d < r_myo)] = 2
        label[..., z][d < r_lv] = 3
    return label


def write_synthetic_acdc(
    output_dir: str | os.PathLike,
    patients_per_group: int = 2,
    shape: tuple[int, int, int] = (48, 56, 8),
    seed: int = 0,
) -> Path:
    """Write a tiny synthetic dataset in ACDC's release layout, with its quirks.

    Per patient: ``training/patientXXX/Info.cfg`` (ED is frame 1, ES a later frame; Height/Weight
    sometimes without a decimal point), the ED/ES images and ``_gt`` labels. Like the real files,
    the sform is a pure axis flip ``diag(-1, -1, 1)`` with zero translation and ``qform_code`` 0,
    the spacing is only in ``pixdim`` (in-plane 1.25-1.9 mm, slices 5 or 10 mm), and the image
    dtype alternates between ``int16`` raw intensities and ``float32`` scaled to 0-255. Patient ids
    are blocked by group as in the release. Nothing here is medical data.

    Args:
        output_dir: folder to create (the ACDC root).
        patients_per_group: patients per pathology group.
        shape: volume shape ``(x, y, z)``.
        seed: random seed.

    Returns:
        the root folder.
    """
    import nibabel as nib

    root = Path(output_dir)
    rng = np.random.default_rng(seed)
    for g, group in enumerate(ACDC_GROUPS):
        for k in range(patients_per_group):
            pid = g * 20 + 2 * k + 1
            name = f"patient{pid:03d}"
            pdir = root / "training" / name
            pdir.mkdir(parents=True, exist_ok=True)
            es = int(rng.integers(8, 14))
            nb = es + int(rng.integers(8, 16))
            height = "178" if k % 2 else f"{rng.uniform(150, 190):.1f}"
            (pdir / "Info.cfg").write_text(
                f"ED: 1\nES: {es}\nGroup: {group}\nHeight: {height}\nNbFrame: {nb}\nWeight: {rng.uniform(50, 100):.1f}\n"
            )
            inplane = float(rng.choice([1.25, 1.5625, 1.9]))
            spacing = (inplane, inplane, 10.0 if pid % 3 else 5.0)
            lv = rng.uniform(14, 20) * (1.3 if group == "DCM" else 1.0)
            ef = {"DCM": 0.2, "MINF": 0.3}.get(group, 0.6)
            int16 = (pid // 2) % 2 == 0
            for frame, radius in ((1, lv), (es, lv * (1 - ef) ** (1 / 3))):
                label = _synthetic_heart(shape, spacing, radius, rng)
                base = np.array([30.0, 120.0, 80.0, 200.0])[label]
                img = base + rng.normal(0, 12, size=shape)
                img = np.clip(img, 0, None)
                if int16:
                    data = (img * rng.uniform(2, 8)).astype(np.int16)
                else:
                    data = np.round(img / img.max() * 255).astype(np.float32)
                for arr, suffix in ((data, ""), (label, "_gt")):
                    nii = nib.Nifti1Image(arr, np.diag([-1.0, -1.0, 1.0, 1.0]))
                    nii.header.set_zooms(spacing)
                    nii.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
                    nii.header.set_qform(None, code=0)
                    nib.save(nii, pdir / f"{name}_frame{frame:02d}{suffix}.nii.gz")
    return root
