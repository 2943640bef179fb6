"""Safe loading of foundation-model checkpoint files.

Every teacher loads its official checkpoint through :func:`load_checkpoint_file` and
:func:`load_state_dict_strict`. Nothing here unpickles arbitrary objects: ``torch.load`` always
runs with ``weights_only=True``; files that hold plain non-tensor objects (numpy scalars,
``argparse.Namespace`` configs, ...) are opened with an explicit, minimal allow-list through
``torch.serialization.safe_globals``. Checksums are verified before anything is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "sha256sum",
    "verify_sha256",
    "load_checkpoint_file",
    "extract_state_dict",
    "load_state_dict_strict",
]


class CheckpointError(RuntimeError):
    """Raised when a checkpoint file is missing, corrupt, of the wrong model or fails a checksum."""


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks.

    Args:
        path: file to hash.
        chunk_size: bytes read per step.

    Returns:
        the lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str | None) -> None:
    """Check a file against an expected SHA-256 digest.

    Args:
        path: file to check.
        expected: expected hex digest; ``None`` or an empty string skips the check.

    Raises:
        CheckpointError: when the digest differs.
    """
    if not expected:
        return
    actual = sha256sum(path)
    if actual.lower() != expected.strip().lower():
        raise CheckpointError(f"checksum mismatch for '{path}': expected sha256 {expected}, got {actual}.")


def load_checkpoint_file(
    path: str | os.PathLike,
    sha256: str | None = None,
    allowed_globals: Sequence[Any] = (),
    map_location: str | torch.device = "cpu",
) -> Any:
    """Load a checkpoint file without executing untrusted code.

    ``.safetensors`` files are read with the ``safetensors`` package; everything else with
    ``torch.load(weights_only=True)``. Where an official file stores a few plain objects next to
    the tensors, pass exactly those types in ``allowed_globals``; any other pickled object makes
    the load fail.

    Args:
        path: checkpoint file.
        sha256: expected SHA-256 hex digest, checked before reading when given.
        allowed_globals: classes/functions the restricted unpickler may rebuild.
        map_location: where tensors are placed.

    Returns:
        the loaded object (usually a dict).

    Raises:
        CheckpointError: the file is missing, fails its checksum, or holds objects outside the
            allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: '{path}'.")
    verify_sha256(path, sha256)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CheckpointError(f"reading '{path}' needs the 'safetensors' package.") from e
        return load_file(str(path), device=str(map_location))
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError variants
        raise CheckpointError(
            f"could not load '{path}' with weights_only=True: {e}. Only tensors and plain types "
            "are accepted; a checkpoint holding other pickled objects is refused."
        ) from e


def extract_state_dict(obj: Any, container_keys: Iterable[str] = ("state_dict", "model"), path: str = "") -> dict:
    """Find the tensor dict inside a loaded checkpoint container.

    Args:
        obj: the object returned by :func:`load_checkpoint_file`.
        container_keys: keys tried in order when ``obj`` wraps its state dict
            (e.g. ``{"state_dict": ...}``); a flat dict of tensors is returned as is.
        path: file name used in error messages.

    Returns:
        a ``{name: tensor}`` dict.

    Raises:
        CheckpointError: no tensor dict was found.
    """
    if isinstance(obj, Mapping):
        for key in container_keys:
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(
        f"'{path}' does not hold a state dict: expected a dict of tensors or one under "
        f"{list(container_keys)}; found {type(obj).__name__}"
        + (f" with keys {sorted(obj)[:10]}" if isinstance(obj, Mapping) else "")
    )


def _is_batch_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_state_dict_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    key_map: Callable[[str], str | None] | None = None,
    source: str = "checkpoint",
    ignore_missing: Callable[[str], bool] = _is_batch_counter,
) -> None:
    """Load a state dict with strict key and shape matching and a readable error.

    Args:
        module: the module to fill.
        state_dict: tensors from the official file.
        key_map: optional function renaming an official key to the module's key; returning
            ``None`` drops the key on purpose (e.g. a text tower the teacher does not use).
        source: file name used in error messages.
        ignore_missing: predicate for module keys that may be absent from the file
            (by default BatchNorm ``num_batches_tracked`` counters).

    Raises:
        CheckpointError: listing every unexpected key, missing key and shape mismatch.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key_map(key) if key_map is not None else key
        if new_key is None:
            continue
        mapped[new_key] = value
    expected = module.state_dict()
    missing = [k for k in expected if k not in mapped and not ignore_missing(k)]
    unexpected = [k for k in mapped if k not in expected]
    mismatched = [
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in mapped
        if k in expected and tuple(mapped[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched[:20]}")
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(parts)
            + ". Is this the right model's checkpoint?"
        )
    module.load_state_dict(mapped, strict=False)
