"""Generate the 18 bundle folders from ``tools/bundle_specs.py`` and check they are up to date.

Usage:
    python -m tools.generate_bundles generate [--names busi_ultrasound_classification,...]
    python -m tools.generate_bundles check      # exit 1 and list the files that differ
    python -m tools.generate_bundles list       # the 18 bundles and their state
    python -m tools.generate_bundles new <name> --task segmentation --spatial_dims 2 --num_classes 2 \
        --teacher medsam --student shufflenet_unet [--datalist_file d.json] [--output_dir dir]   # your own task

Every file of a bundle except ``models/`` content is generated: configs (train, evaluate,
inference, multi_gpu_train, the baseline/ablation overlays, teacher_standin, metadata,
logging.conf), ``docs/README.md``, ``docs/data_license.txt``, ``LICENSE`` and ``large_files.yml``.
The output is checked in, so each bundle folder works on its own when copied out of the
repository; ``tests/test_bundle_generator.py`` fails when the checked-in files differ from what
the generator writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/generate_bundles.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fire

from tools.bundle_specs import BUNDLES, BY_NAME, BundleSpec
from tools.bundle_templates import configs, documents

REPO_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = Path(__file__).resolve().parent / "bundle_templates" / "overlays"

#: which real dataset of the workspace (``DRD_DATA_ROOT``) each bundle was run on here, and where
REAL_DATA_HERE = {
    "busi_ultrasound_classification": ("busi", "tests/test_integration_busi_classification.py"),
    "busi_ultrasound_segmentation": ("busi", "tests/test_bundle_segmentation_integration.py"),
    "cardiac_mri_segmentation": ("ACDC", "tests/test_bundle_segmentation_integration.py"),
    "brain_tumor_mri_classification": ("brain_tumor_mri", "tests/test_integration_collection.py"),
    "retina_fundus_classification": ("medmnist/retinamnist.npz", "tests/test_integration_collection.py"),
    "polyp_endoscopy_segmentation": ("kvasir_seg", "README walk-through with make_datalist; docs/benchmark_real_teachers.md"),
    "vessel_mra_classification": ("medmnist/vesselmnist3d.npz", "docs/benchmark_real_teachers.md; bundle README Performance"),
}


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=4) + "\n"


def render(spec: BundleSpec) -> dict[str, str]:
    """Every generated file of one bundle: ``{relative path: text}``."""
    train = configs.train_config(spec)
    files = {
        "configs/train.json": _dump(train),
        "configs/evaluate.json": _dump(configs.evaluate_config(spec)),
        "configs/inference.json": _dump(configs.inference_config(spec, train)),
        "configs/multi_gpu_train.json": _dump(configs.multi_gpu_config(spec)),
        "configs/teacher_standin.json": _dump(configs.teacher_standin_config(spec)),
        "configs/metadata.json": _dump(documents.metadata(spec)),
        "configs/mlflow_tracking.json": _dump(configs.mlflow_tracking_config()),
        "configs/logging.conf": documents.LOGGING_CONF,
        "docs/README.md": documents.readme(spec, train),
        "docs/data_license.txt": documents.data_licence(spec),
        "LICENSE": documents.licence(spec),
        "large_files.yml": documents.large_files(spec),
    }
    for overlay in configs.offline_teacher_overlays(spec):  # real teachers fetched from the package index
        files[f"configs/{overlay}"] = _dump(configs.offline_teacher_config(spec, overlay))
    if OVERLAYS.is_dir():  # generic baseline/ablation overlays: the same file in every bundle
        for overlay in sorted(OVERLAYS.glob("*.json")):
            files[f"configs/{overlay.name}"] = overlay.read_text()
    return files


def _select(names: str | list | tuple | None) -> list[BundleSpec]:
    if names is None:
        return list(BUNDLES)
    wanted = names.split(",") if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown bundle(s) {unknown}; known: {sorted(BY_NAME)}.")
    return [BY_NAME[n] for n in wanted]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate(names: str | list | None = None, bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> list[str]:
    """Write the generated files of the selected bundles (all by default).

    Returns:
        the paths written, relative to ``bundles_dir``.
    """
    root = Path(bundles_dir)
    written = []
    for spec in _select(names):
        for rel, text in render(spec).items():
            _write_atomic(root / spec.name / rel, text)
            written.append(f"{spec.name}/{rel}")
        (root / spec.name / "models").mkdir(exist_ok=True)
    return written


def stale_files(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> list[str]:
    """Generated files that are missing or differ on disk, plus bundle folders no spec describes."""
    root = Path(bundles_dir)
    out = []
    for spec in BUNDLES:
        for rel, text in render(spec).items():
            path = root / spec.name / rel
            if not path.is_file() or path.read_text() != text:
                out.append(f"{spec.name}/{rel}")
        configs_dir = root / spec.name / "configs"
        expected = {Path(r).name for r in render(spec) if r.startswith("configs/")}
        if configs_dir.is_dir():
            out += [f"{spec.name}/configs/{p.name} (not generated)" for p in sorted(configs_dir.iterdir()) if p.name not in expected]
    if root.is_dir():
        out += [f"{p.name}/ (no spec)" for p in sorted(root.iterdir()) if p.is_dir() and p.name not in BY_NAME]
    return out


def check(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> None:
    """Exit with status 1 when any checked-in bundle file differs from the generator's output."""
    stale = stale_files(bundles_dir)
    if stale:
        print("out of date (run `python -m tools.generate_bundles generate`):\n  " + "\n  ".join(stale))
        raise SystemExit(1)
    print(f"{len(BUNDLES)} bundles up to date.")


def bundle_table(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> str:
    """A markdown table of the 18 bundles: task, teacher, student, data and their state here."""
    root = Path(bundles_dir)
    data_root = Path(os.environ.get("DRD_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
    lines = ["| # | bundle | task | teacher | student | dataset | files | real data here |", "|---|---|---|---|---|---|---|---|"]
    for spec in BUNDLES:
        present = all((root / spec.name / rel).is_file() for rel in render(spec))
        real = REAL_DATA_HERE.get(spec.name)
        if real is None:
            state = "no (dataset not in the workspace): smoke-tested on a generated copy of its layout"
        else:
            state = f"{'yes' if (data_root / real[0]).exists() else 'absent now'}: {real[0]} ({real[1]})"
        lines.append(f"| {spec.row} | {spec.name} | {spec.spatial_dims}D {spec.task} | {spec.teacher.title} | {spec.student_title.split(' (')[0]} "
                     f"| {spec.dataset.title} | {'complete' if present else 'INCOMPLETE'} | {state} |")
    return "\n".join(lines)


def list_bundles(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> None:
    """Print :func:`bundle_table`."""
    print(bundle_table(bundles_dir))


def new(
    name: str,
    task: str,
    spatial_dims: int,
    num_classes: int,
    teacher: str,
    student: str | None = None,
    class_names: list | tuple | None = None,
    in_channels: int = 1,
    size: list | tuple | None = None,
    modality: str = "OT",
    intensity: str = "scale",
    spacing: list | tuple | None = None,
    teacher_size: int | list | None = None,
    datalist_file: str | None = None,
    output_dir: str | os.PathLike = ".",
    overwrite: bool = False,
) -> str:
    """Write a complete new bundle for your own task and data (``<output_dir>/<name>``).

    Same templates as the 18 bundles: train/evaluate/inference/multi-GPU configs, the baseline, ablation and
    teacher overlays (``teacher_standin.json``, ``teacher_custom.json``), metadata, README with every
    hyper-parameter, licences, ``large_files.yml``. The bundle reads a Decathlon-format datalist
    (``--datalist_file``; written into ``configs/train.json`` as the default when given here).

    Example:
        python -m tools.generate_bundles new my_polyp_segmentation --task segmentation --spatial_dims 2 \
            --num_classes 2 --teacher medsam --student shufflenet_unet --in_channels 3 --size "[256,256]" \
            --datalist_file /data/polyps/datalist.json --output_dir ~/bundles

    Arguments: see :func:`tools.bundle_templates.new_bundle.new_bundle_spec` (teachers: the eight foundation
    models by key, ``standin`` or ``custom``; students: resnet18, shufflenet_unet, vit_tiny, unet).

    Returns:
        the bundle folder.
    """
    from tools.bundle_templates.new_bundle import new_bundle_spec

    spec = new_bundle_spec(name, task, int(spatial_dims), int(num_classes), teacher, student, class_names, int(in_channels), size,
                           modality, intensity, spacing, teacher_size)
    root = Path(output_dir).expanduser() / spec.name
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise SystemExit(f"{root} exists and is not empty: choose another --output_dir or pass --overwrite True.")
    if Path(output_dir).expanduser().resolve() == (REPO_ROOT / "bundles").resolve():
        raise SystemExit("bundles/ holds the generated collection (tests/test_bundle_generator.py checks it): write new bundles elsewhere.")
    files = render(spec)
    if datalist_file:
        train = json.loads(files["configs/train.json"])
        train["datalist_file"] = str(Path(datalist_file).expanduser().resolve())
        files["configs/train.json"] = _dump(train)
    for rel, text in files.items():
        _write_atomic(root / rel, text)
    (root / "models").mkdir(exist_ok=True)
    print(f"wrote {root} ({len(files)} files): {spec.spatial_dims}D {spec.task}, {len(spec.class_names)} classes, "
          f"teacher {spec.teacher.key}, student {spec.student_title.split(' (')[0]}")
    print(f"train: cd {root} && python -m monai.bundle run training --config_file configs/train.json"
          + ("" if datalist_file else " --datalist_file <datalist.json>"))
    return str(root)


if __name__ == "__main__":
    fire.Fire({"generate": generate, "check": check, "list": list_bundles, "new": new})
