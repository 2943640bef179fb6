"""Package bundles as deterministic release zips and write ``model_info.json``.

Usage:
    python tools/package_bundle.py build --name busi_ultrasound_classification [--output_dir dist]
        [--include_weights] [--repo <owner>/<repo>/<tag>]
    python tools/package_bundle.py build_all [--output_dir dist] [--repo <owner>/<repo>/<tag>]

Each bundle becomes ``<output_dir>/<name>_v<version>.zip`` (``version`` from
``configs/metadata.json``, which is validated first) holding ONE top-level folder ``<name>/``. The
zip is byte-identical for identical file contents: entries sorted, every timestamp 1980-01-01
00:00:00, permissions 0644 (files) / 0755 (folders), deflate level 9 (the bytes depend on zlib, so
build a release with one Python build). Hidden files, ``__pycache__`` and ``*.pyc`` are left out;
symbolic links, special files and unknown top-level entries are refused. ``models/`` ships empty
(training writes there; teacher weights come from ``large_files.yml``) and ``eval/`` (the default
inference output folder) is left out; ``--include_weights`` adds a trained student
``models/model.pt`` unless ``large_files.yml`` declares it.

``model_info.json`` next to the zips follows the model-zoo's ``models/model_info.json`` (key
``<name>_v<version>``, ``checksum`` and ``source``) with ``checksum`` a SHA-256 (the model-zoo
uses SHA-1) and extra keys: ``hash_type``, ``size``, ``filename``, ``version``, ``files`` (path,
size and SHA-256 of every member). Entries of other bundles already in the file are kept; entries
whose zip is no longer in ``output_dir`` are dropped.

Publishing on GitHub (what ``monai.bundle download --source github`` expects): MONAI fetches
``https://github.com/<owner>/<repo>/releases/download/<tag>/<name>_v<version>.zip``, so

1. ``python tools/package_bundle.py build_all --output_dir dist --repo <owner>/<repo>/<tag>``
   (``--repo`` only fills ``source`` in model_info.json);
2. attach every ``dist/*.zip`` and ``dist/model_info.json`` to the release ``<tag>``
   (``gh release create <tag> dist/*.zip dist/model_info.json``); never replace an asset of an
   existing version: bump the version in metadata.json (with a changelog entry) instead;
3. users install with a checksum check:
   ``python tools/download_bundle.py --name <name> --version <v> --sha256 <digest> --url <asset url>
   --bundle_dir ./bundles`` (or ``--model_info`` with a trusted copy of model_info.json), or without
   one: ``python -m monai.bundle download --name <name> --version <v> --source github
   --repo <owner>/<repo>/<tag> --bundle_dir ./bundles``. Always pass ``--version``: without it
   MONAI looks for ``models/model_info.json`` in the git tree at ``<tag>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

import fire
import yaml

from drd_components.bundle import validate_metadata

__all__ = [
    "ALLOWED_TOP_LEVEL",
    "ALLOWED_WEIGHTS",
    "RUN_OUTPUT_DIRS",
    "ZIP_DATE_TIME",
    "build",
    "build_all",
    "bundle_files",
    "bundle_version",
    "large_file_paths",
    "release_url",
    "zip_name",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES_DIR = REPO_ROOT / "bundles"

#: fixed timestamp of every zip entry (the earliest a zip can store).
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
DIR_MODE = 0o755
#: top-level entries a bundle folder may hold (MONAI bundle specification plus our large_files).
ALLOWED_TOP_LEVEL = frozenset(
    {"configs", "docs", "scripts", "models", "LICENSE", "large_files.yml", "large_files.yaml", "large_files.json"}
)
#: top-level folders the bundle's own configs write run outputs to (inference.json's default
#: ``output_dir``); never packaged, like the contents of models/.
RUN_OUTPUT_DIRS = frozenset({"eval"})
#: files under models/ that ``include_weights=True`` may ship (the trained student).
ALLOWED_WEIGHTS = ("models/model.pt",)
_LARGE_FILES = ("large_files.yml", "large_files.yaml", "large_files.json")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


def _skipped(name: str) -> bool:
    """Names never packaged: hidden entries, Python caches, editor backups."""
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", ".pyo", "~"))


def _sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def zip_name(name: str, version: str) -> str:
    """File name MONAI's GitHub download expects: ``<name>_v<version>.zip``."""
    return f"{name}_v{version}.zip"


def release_url(repo: str, filename: str) -> str:
    """URL of a release asset, as ``monai.bundle download --source github --repo owner/repo/tag`` builds it.

    Args:
        repo: ``<owner>/<repo>/<tag>``.
        filename: the asset's file name.

    Raises:
        ValueError: when ``repo`` does not have three non-empty parts.
    """
    parts = str(repo).split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"repo must be '<owner>/<repo>/<tag>', got '{repo}'.")
    owner, name, tag = parts
    return f"https://github.com/{owner}/{name}/releases/download/{tag}/{filename}"


def bundle_version(bundle_dir: str | os.PathLike) -> tuple[str, dict]:
    """Validate ``<bundle_dir>/configs/metadata.json`` and return its version and content.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: naming the file and the offending key (see :func:`validate_metadata`), or for
            a file that is not JSON.
    """
    path = Path(bundle_dir) / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; every bundle needs configs/metadata.json with a 'version'.")
    try:
        meta = validate_metadata(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    return meta["version"], meta


def large_file_paths(bundle_dir: str | os.PathLike) -> set[str]:
    """Bundle-relative paths declared in ``large_files.yml`` / ``.yaml`` / ``.json`` (downloaded, never packaged).

    Raises:
        ValueError: naming the file when it is malformed.
    """
    root = Path(bundle_dir)
    paths: set[str] = set()
    for fname in _LARGE_FILES:
        path = root / fname
        if not path.is_file():
            continue
        try:
            spec = (json.loads(path.read_text()) if fname.endswith(".json") else yaml.safe_load(path.read_text())) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot be parsed: {e}") from e
        entries = spec.get("large_files", []) if isinstance(spec, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a mapping with a 'large_files' list.")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise ValueError(f"{path}: large_files[{i}] needs a 'path' string.")
            paths.add(PurePosixPath(entry["path"].replace("\\", "/")).as_posix())
    return paths


def bundle_files(bundle_dir: str | os.PathLike, include_weights: bool = False) -> list[str]:
    """Bundle-relative POSIX paths of the files to package, sorted by path components.

    Args:
        bundle_dir: the bundle folder.
        include_weights: also ship the files in :data:`ALLOWED_WEIGHTS` that exist and that
            ``large_files.yml`` does not declare.

    Returns:
        the paths.

    Raises:
        ValueError: for a symbolic link, a special file, a file resolving outside the bundle, an
            unknown top-level entry, or a requested weight file that ``large_files.yml`` declares.
        FileNotFoundError: when ``include_weights`` is set and no allowed weight file exists.
    """
    root = Path(bundle_dir)
    if root.is_symlink():
        raise ValueError(f"{root}: the bundle folder is a symbolic link; package the real folder.")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: bundle folder does not exist.")
    real_root = root.resolve()
    declared = large_file_paths(root)
    files: list[str] = []
    withheld: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        if rel_dir == Path("."):
            outputs = [d for d in dirnames if d in RUN_OUTPUT_DIRS and not (here / d).is_symlink()]
            if outputs:
                logger.info("%s: run-output folders not packaged: %s", root.name, outputs)
            dirnames[:] = [d for d in dirnames if d not in outputs]
        for entry in dirnames + sorted(filenames):
            rel = (rel_dir / entry).as_posix()
            if _skipped(entry):
                continue
            if rel_dir == Path(".") and entry not in ALLOWED_TOP_LEVEL:
                raise ValueError(
                    f"{root}: unexpected top-level entry '{entry}'; a bundle holds only {sorted(ALLOWED_TOP_LEVEL)} "
                    "(remove it, e.g. an inference output folder, before packaging)."
                )
            mode = os.lstat(here / entry).st_mode
            if stat.S_ISLNK(mode):
                raise ValueError(f"{root}: '{rel}' is a symbolic link; links are not packaged (copy the file in).")
            if entry in dirnames:
                continue
            if not stat.S_ISREG(mode):
                raise ValueError(f"{root}: '{rel}' is not a regular file.")
            if real_root not in (here / entry).resolve().parents:
                raise ValueError(f"{root}: '{rel}' resolves outside the bundle folder.")
            if rel.startswith("models/") or rel in declared:
                withheld.append(rel)
                continue
            files.append(rel)
    if include_weights:
        wanted = [w for w in ALLOWED_WEIGHTS if w in withheld]
        blocked = [w for w in wanted if w in declared]
        if blocked:
            raise ValueError(
                f"{root}: {blocked} declared in large_files.yml (downloaded separately); not packaged with weights."
            )
        if not wanted:
            raise FileNotFoundError(f"{root}: include_weights is set but none of {list(ALLOWED_WEIGHTS)} exists.")
        files += wanted
        withheld = [m for m in withheld if m not in wanted]
    if withheld:
        logger.info("%s: not packaged (models/ or large_files.yml): %s", root.name, withheld)
    return sorted(files, key=lambda p: PurePosixPath(p).parts)


def _zip_info(arcname: str, is_dir: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
    info.create_system = 3  # unix, so that external_attr carries the permission bits
    if is_dir:
        info.external_attr = ((stat.S_IFDIR | DIR_MODE) << 16) | 0x10
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = (stat.S_IFREG | FILE_MODE) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _write_zip(root: Path, name: str, files: list[str], dest: Path) -> None:
    """Write ``files`` (bundle-relative) under ``<name>/`` to ``dest`` atomically, folders first."""
    dirs = {"", "models"}
    for rel in files:
        parts = PurePosixPath(rel).parts[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = [(d, True) for d in dirs] + [(f, False) for f in files]
    entries.sort(key=lambda e: PurePosixPath(e[0]).parts if e[0] else ())
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for rel, is_dir in entries:
                arcname = f"{name}/{rel}/" if is_dir and rel else (f"{name}/" if is_dir else f"{name}/{rel}")
                data = b"" if is_dir else (root / rel).read_bytes()
                zf.writestr(_zip_info(arcname, is_dir), data, compresslevel=None if is_dir else 9)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _update_model_info(output_dir: Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``<output_dir>/model_info.json``; drop entries whose zip is gone."""
    path = output_dir / "model_info.json"
    info: dict[str, dict] = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: existing file is not valid JSON ({e}); delete it and rebuild.") from e
        if not isinstance(info, dict):
            raise ValueError(f"{path}: existing file is not a JSON object; delete it and rebuild.")
    info.update(entries)
    info = {
        k: v for k, v in info.items() if isinstance(v, dict) and (output_dir / str(v.get("filename", ""))).is_file()
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(info, indent=4, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _check(name: str, bundles_dir: Path, include_weights: bool) -> tuple[str, dict, list[str]]:
    """Validate one bundle; returns its version, metadata and file list."""
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"bundle name '{name}' must match {_NAME_PATTERN.pattern}.")
    if "_v" in name:
        logger.warning(
            "bundle name '%s' contains '_v': MONAI's latest-version lookup splits asset names at '_v'; "
            "downloads must pass --version.",
            name,
        )
    root = bundles_dir / name
    version, meta = bundle_version(root)
    return version, meta, bundle_files(root, include_weights=include_weights)


def _package(
    name: str, output_dir: Path, bundles_dir: Path, include_weights: bool, repo: str | None,
    checked: tuple[str, dict, list[str]] | None = None,
) -> tuple[Path, dict]:
    root = bundles_dir / name
    version, meta, files = checked or _check(name, bundles_dir, include_weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    filename = zip_name(name, version)
    dest = output_dir / filename
    _write_zip(root, name, files, dest)
    entry = {
        "name": name,
        "version": version,
        "monai_version": meta.get("monai_version", ""),
        "filename": filename,
        "source": release_url(repo, filename) if repo else filename,
        "checksum": _sha256(dest),
        "hash_type": "sha256",
        "size": dest.stat().st_size,
        "includes_weights": bool(include_weights),
        "files": [
            {"path": f"{name}/{rel}", "size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)}
            for rel in files
        ],
    }
    logger.info("%s: %d files, %d bytes, sha256 %s", dest, len(files), entry["size"], entry["checksum"])
    return dest, entry


def build(
    name: str,
    output_dir: str = "dist",
    bundles_dir: str | None = None,
    include_weights: bool = False,
    repo: str | None = None,
) -> str:
    """Package one bundle as ``<output_dir>/<name>_v<version>.zip`` and record it in model_info.json.

    Args:
        name: bundle folder name under ``bundles_dir``.
        output_dir: where the zip and ``model_info.json`` go.
        bundles_dir: folder holding the bundles (default: this repository's ``bundles/``).
        include_weights: ship a trained ``models/model.pt`` (see :data:`ALLOWED_WEIGHTS`).
        repo: ``<owner>/<repo>/<tag>`` of the GitHub release, for the ``source`` URL.

    Returns:
        the zip's path.

    Raises:
        ValueError, FileNotFoundError: see :func:`bundle_version` and :func:`bundle_files`.
    """
    out = Path(output_dir)
    dest, entry = _package(str(name), out, Path(bundles_dir) if bundles_dir else DEFAULT_BUNDLES_DIR,
                           include_weights, repo)
    _update_model_info(out, {dest.stem: entry})
    return str(dest)


def build_all(
    output_dir: str = "dist", bundles_dir: str | None = None, include_weights: bool = False, repo: str | None = None
) -> list[str]:
    """Package every folder of ``bundles_dir`` (see :func:`build`); all are validated before any is written.

    Returns:
        the zip paths, sorted by bundle name.

    Raises:
        ValueError, FileNotFoundError: for the first bundle that fails, naming it.
    """
    root = Path(bundles_dir) if bundles_dir else DEFAULT_BUNDLES_DIR
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not _skipped(p.name))
    if not names:
        raise FileNotFoundError(f"{root}: no bundle folders.")
    checked = {name: _check(name, root, include_weights) for name in names}  # fail before writing anything
    out = Path(output_dir)
    entries, paths = {}, []
    for name in names:
        dest, entry = _package(name, out, root, include_weights, repo, checked[name])
        entries[dest.stem] = entry
        paths.append(str(dest))
    _update_model_info(out, entries)
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire({"build": build, "build_all": build_all})
