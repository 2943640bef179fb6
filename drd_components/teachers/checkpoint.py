"""Safe loading of foundation-model checkpoint files.

Every teacher loads its official checkpoint through :func:`load_checkpoint_file` and
:func:`load_state_dict_strict`. Nothing here unpickles arbitrary objects: ``torch.load`` always
runs with ``weights_only=True``; files that hold plain non-tensor objects (numpy scalars,
``argparse.Namespace`` configs, ...) are opened with an explicit, minimal allow-list through
``torch.serialization.safe_globals`` (for numpy scalars: :func:`numpy_scalar_safe_globals`).
Checksums are verified before anything is read.

The module also holds the helpers teachers use around a strict load: building a network without
random initialisation when every tensor is about to come from a file (:func:`init_context`,
:func:`materialize_for_load`), comparing a file with part of a module under the file's own key
names (:class:`StateDictView`, :func:`make_view`) and common key renaming
(:func:`strip_module_prefix`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "sha256sum",
    "verify_sha256",
    "check_checkpoint_args",
    "numpy_scalar_safe_globals",
    "load_checkpoint_file",
    "extract_state_dict",
    "load_state_dict_strict",
    "strip_module_prefix",
    "StateDictView",
    "make_view",
    "init_context",
    "materialize_for_load",
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


def check_checkpoint_args(checkpoint: str | os.PathLike | None, sha256: str | None) -> None:
    """Refuse an expected checksum that comes without a checkpoint file (it would be ignored).

    Args:
        checkpoint: the checkpoint path given to a teacher, or ``None``.
        sha256: the expected digest given with it.

    Raises:
        ValueError: ``sha256`` is set and ``checkpoint`` is ``None``.
    """
    if checkpoint is None and sha256:
        raise ValueError("sha256 was given without a checkpoint file.")


def numpy_scalar_safe_globals() -> list:
    """The restricted-unpickler allow-list for numpy scalars stored next to the tensors.

    Official training checkpoints often hold numpy *scalars* besides their tensors: nnU-Net's
    ``logging`` lists (Swin-UMamba), SAT's optimizer learning rates, metrics of the full PMC-CLIP
    checkpoint (e.g. ``np.float64``). A numpy scalar pickles as ``numpy.core.multiarray.scalar``
    (numpy 1.x, which wrote the released files) or ``numpy._core.multiarray.scalar`` (numpy 2.x)
    applied to a ``numpy.dtype``, whose state is set on an instance of its DType class
    (``Float64DType``, ... under numpy 2.x); the raw bytes come through ``_codecs.encode``, which
    ``torch.load`` already allows. Exactly these are allowed: the scalar constructor under both
    names, ``numpy.dtype`` and the DType classes of float64, float32, int64, int32 and bool.
    Numpy arrays and any other object still make the load fail.

    Returns:
        entries for ``torch.serialization.safe_globals`` (the ``allowed_globals`` of
        :func:`load_checkpoint_file`); an empty list when numpy is not installed.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch in practice
        return []
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, "multiarray"):  # numpy 1.x
        core = np.core
    scalar = core.multiarray.scalar
    allowed: list = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    for scalar_type in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        dtype_class = type(np.dtype(scalar_type))  # numpy.dtypes.Float64DType, ... (numpy.dtype[float64] before 1.25)
        if dtype_class not in allowed:
            allowed.append(dtype_class)
    return allowed


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
        if expected and mapped and not any(k in expected for k in mapped):
            parts.append(
                f"no key in common ({len(mapped)} keys in the file, {len(expected)} in the model): "
                "this is a checkpoint of a different model"
            )
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


def strip_module_prefix(key: str) -> str:
    """Remove a leading ``module.`` (DataParallel/DDP wrapper) from a key.

    Args:
        key: a key of a checkpoint file.

    Returns:
        the key without the wrapper's prefix (unchanged when it has none).
    """
    return key[len("module.") :] if key.startswith("module.") else key


class StateDictView(nn.Module):
    """A part of a module's state dict exposed under the official key names, for strict loading.

    :func:`load_state_dict_strict` compares a file with ``module.state_dict()``. This view lets a
    teacher compare a file with only the tensors that file should hold (e.g. only the adapters of
    an MSA zoo file) and with the file's own key prefix (e.g. ``module.backbone.encoder.``), so that
    error messages name the official keys. Loading writes into the viewed module's own tensors.
    The view does not register the module as a child.

    Args:
        module: the module whose tensors are loaded.
        prefix: prepended to the module's keys (the official file's prefix).
        keep: optional predicate on the prefixed key; keys for which it is false are not part of
            the view (neither expected nor loaded).
        label: name used in error messages (defaults to the module's class name).
    """

    def __init__(
        self,
        module: nn.Module,
        prefix: str = "",
        keep: Callable[[str], bool] | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.__dict__["_target"] = module  # plain attribute: not a registered child
        self._prefix = prefix
        self._keep = keep
        self._label = label or type(module).__name__

    def __repr__(self) -> str:
        return f"StateDictView({self._label}, prefix={self._prefix!r})"

    def state_dict(self, *args, **kwargs) -> OrderedDict:  # type: ignore[override]
        """The viewed module's tensors under their prefixed names, filtered by ``keep``."""
        out: OrderedDict = OrderedDict()
        for key, value in self._target.state_dict().items():
            full = self._prefix + key
            if self._keep is None or self._keep(full):
                out[full] = value
        return out

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Copy ``state_dict`` (prefixed names) into the viewed module (checked by the caller)."""
        n = len(self._prefix)
        stripped = {k[n:]: v for k, v in state_dict.items() if k.startswith(self._prefix)}
        return self._target.load_state_dict(stripped, strict=False)


def make_view(
    module: nn.Module, prefix: str = "", keep: Callable[[str], bool] | None = None, label: str | None = None
) -> StateDictView:
    """A :class:`StateDictView` whose class name is ``label`` (it appears in CheckpointError messages).

    Args:
        module: the module whose tensors are loaded.
        prefix: the official file's key prefix.
        keep: optional predicate on the prefixed key selecting the tensors of the view.
        label: class name of the view (defaults to the module's class name).

    Returns:
        the view.
    """
    label = label or type(module).__name__
    cls = type(label, (StateDictView,), {})
    return cls(module, prefix=prefix, keep=keep, label=label)


def init_context(skip_init: bool):
    """Context for building a module whose every tensor is about to be loaded from a file.

    With ``skip_init`` the modules are created on the ``meta`` device (no memory, no random init);
    the caller must then call :func:`materialize_for_load` on the module and load every tensor.
    Without it, ordinary initialisation runs.

    Args:
        skip_init: skip the random initialisation.

    Returns:
        a context manager.
    """
    return torch.device("meta") if skip_init else contextlib.nullcontext()


def materialize_for_load(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Give a module built under :func:`init_context` uninitialised storage on ``device``.

    Every tensor must then be loaded (:func:`load_state_dict_strict`). The one kind of tensor that
    load may leave untouched by default, BatchNorm's ``num_batches_tracked`` counter, is set to
    zero, so no tensor keeps uninitialised memory.

    Args:
        module: a module on the ``meta`` device.
        device: where to allocate its tensors.

    Returns:
        ``module`` (allocated in place).
    """
    module.to_empty(device=device)
    for name, buf in module.named_buffers():
        if _is_batch_counter(name):
            buf.zero_()
    return module
