"""Teacher-feature caches: compute a frozen teacher's tapped features once per input, reuse them.

DRD's teacher is frozen, so its features of a given input never change. Two caches:

* :class:`MultiViewFeatureCache` (used by ``train_drd_cache.json``): one entry per *view* of a
  :class:`~drd_components.data.multiview.MultiViewDataset` (K reproducible augmented views per
  sample, random augmentation included, identified by the batch key ``view_id``). Stored on disk
  as one memory-mapped ``float16`` ``.npy`` array per kept tap (``[entries, C, *stored_size]``),
  plus a filled flag, a CRC-32 per entry and a small input fingerprint per entry, with an
  optional in-memory LRU cap; each tap is stored at the spatial size its projector resamples it
  to when that is smaller than the teacher's map (the projector then skips its interpolation).
  The folder is named by a digest of the full key (teacher weights, taps, teacher preprocessing,
  stored sizes, the dataset's transforms, view seed, K, samples, dtype); a stale or corrupt cache
  is detected and recomputed, never used. See ``docs/teacher_cache.md``.
* :class:`TeacherFeatureCache`: the older single-view cache keyed by a sample id from the batch
  (``float16``, in memory or one file per sample on disk), for a teacher input that is
  deterministic per sample; FitNet's trainer also accepts it.

Feeding the teacher un-augmented images while the student sees augmented ones (the single-view
cache's ``input_key``): the training transforms copy the image to a second key *after* the
deterministic transforms and *before* the random ones, e.g.
``CopyItemsd(keys="image", names="image_teacher")``. The teacher then always sees the
un-augmented view: intensity augmentation of the student's view is harmless, but spatial
augmentation (flips, affine, crops) is *not* matched in feature space (``r_i`` and ``s_i`` are then
misaligned views). The multi-view cache has no such restriction: the teacher's input is the
student's view. As a guard, every hit of either cache compares a cheap fingerprint of the
teacher input with the one stored when the entry was computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from drd_components.engines.drd_trainer import DRDTrainer
from drd_components.networks.reprogramming import tokens_to_map

try:  # POSIX file locks for concurrent writers
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "module_fingerprint",
    "transforms_signature",
    "stored_feature_shape",
    "MultiViewFeatureCache",
    "TeacherFeatureCache",
    "CachedDRDTrainer",
]

logger = logging.getLogger(__name__)

_PRIMITIVES = (bool, int, float, str, type(None))
#: public attributes in which MONAI's random transforms keep their last draw (not configuration)
_RANDOM_DRAW_ATTRS = frozenset({
    "affine", "gamma_value", "factor", "centers", "rotate_params", "shear_params", "translate_params", "scale_params",
    "x", "y", "z", "sigma_x", "sigma_y", "sigma_z", "noise", "hole_coords", "sampled_alpha", "sampled_k_intensity",
    "sampled_locs", "floating_control_points", "reference_control_points",
})


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's class name and every state-dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def transforms_signature(obj: Any, depth: int = 3) -> str:
    """A stable text description of (a list / ``Compose`` of) transforms: class names and plain attributes.

    Nested objects are described down to ``depth`` levels (e.g. ``Resized`` keeps its size in a
    ``Resize`` object; ``RandAffined`` its ranges three levels down). Use it as the cache's
    ``preprocessing_signature``. Attributes in which random transforms keep their last draw
    (e.g. ``rotate_params``, ``gamma_value``) are left out, so that the signature of a random
    transform describes its configuration, not its history.
    """
    if isinstance(obj, _PRIMITIVES):
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(transforms_signature(o, depth) for o in obj) + "]"
    if isinstance(obj, Mapping):
        return "{" + ",".join(f"{k!r}:{transforms_signature(v, depth)}" for k, v in sorted(obj.items(), key=str)) + "}"
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)}:{hashlib.sha256(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if depth <= 0:
        return name
    random_state = callable(getattr(obj, "set_random_state", None))
    parts = []
    for key, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if key.startswith("_") or key in ("R", "randomize", "rng"):
            continue
        if random_state and key in _RANDOM_DRAW_ATTRS:
            continue
        if isinstance(value, (*_PRIMITIVES, list, tuple, Mapping, torch.Tensor)) or hasattr(value, "__dict__"):
            if callable(value) and not hasattr(value, "__dict__"):
                continue
            parts.append(f"{key}={transforms_signature(value, depth - 1)}")
    return f"{name}(" + ",".join(parts) + ")"


class TeacherFeatureCache:
    """Per-sample store of a frozen teacher's tapped features.

    Call it like the teacher's ``stage_features`` but with the batch: ``cache(inputs, batchdata)``
    returns one tensor per teacher tap (``None`` for taps not kept), on ``inputs``' device, in
    ``float32``. Missing samples are computed in one teacher forward (under
    ``torch.inference_mode``, inside whatever ``torch.autocast`` the caller set) and stored as
    ``dtype`` on the CPU or on disk.

    Args:
        teacher: the frozen teacher (``stage_features``); its weights must not change while the
            cache is used.
        id_key: batch key holding one id per sample (strings, e.g. the image path copied by
            ``CopyItemsd(keys="image", names="image_id")``, or integers).
        input_key: batch key of the teacher's input (e.g. ``"image_teacher"``); ``None`` uses the
            student's input, which is only valid without random augmentation.
        taps: teacher taps to keep (e.g. the projectors' ``teacher_taps``); ``None`` keeps all.
        storage: ``"memory"`` or ``"disk"``.
        cache_dir: folder of the disk store (required for ``"disk"``).
        dtype: storage dtype (``float16`` halves memory; ``float32`` stores exactly).
        preprocessing_signature: anything describing the data preprocessing before the teacher
            (a string, or transforms: see :func:`transforms_signature`); part of the key.
        check_inputs: compare a checksum of each sample's teacher input with the stored one.

    Raises:
        ValueError: for an unknown storage or a disk store without ``cache_dir``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        id_key: str = "image_id",
        input_key: str | None = None,
        taps: Sequence[int] | None = None,
        storage: str = "memory",
        cache_dir: str | os.PathLike | None = None,
        dtype: torch.dtype | str = torch.float16,
        preprocessing_signature: Any = "",
        check_inputs: bool = True,
    ) -> None:
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage must be 'memory' or 'disk', got '{storage}'.")
        if storage == "disk" and not cache_dir:
            raise ValueError("storage='disk' needs cache_dir.")
        self.teacher = teacher
        self.id_key = id_key
        self.input_key = input_key
        self.taps = sorted({int(t) for t in taps}) if taps is not None else None
        self.storage = storage
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.check_inputs = check_inputs
        signature = preprocessing_signature if isinstance(preprocessing_signature, str) else transforms_signature(
            preprocessing_signature
        )
        h = hashlib.sha256()
        for part in (
            module_fingerprint(teacher),
            repr(tuple(getattr(teacher, "tap_names", ()))),
            repr(self.taps),
            signature,
            str(self.dtype),
        ):
            h.update(part.encode())
            h.update(b"\0")
        self.key = h.hexdigest()[:24]
        self.directory = Path(cache_dir) / self.key if storage == "disk" else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, tuple[list[torch.Tensor | None], torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        if self.directory is not None:
            return sum(1 for _ in self.directory.glob("*.pt"))
        return len(self._memory)

    def clear(self) -> None:
        """Drop every stored entry of this cache's namespace."""
        self._memory.clear()
        if self.directory is not None:
            for f in self.directory.glob("*.pt"):
                f.unlink()

    def _ids(self, batchdata: Any, n: int) -> list[str]:
        if not isinstance(batchdata, Mapping) or self.id_key not in batchdata:
            raise KeyError(
                f"the teacher-feature cache needs the sample id under batch key '{self.id_key}'; add e.g. "
                f"CopyItemsd(keys='image', names='{self.id_key}') as the first training transform."
            )
        raw = batchdata[self.id_key]
        ids = [str(v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for v in raw]
        if len(ids) != n:
            raise ValueError(f"batch key '{self.id_key}' holds {len(ids)} ids for {n} samples.")
        return ids

    @staticmethod
    def _checksum(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(x.shape[0], -1).double()
        return torch.stack([flat.sum(1), flat.abs().sum(1), (flat * flat).sum(1)], 1).cpu()

    def _file(self, sample_id: str) -> Path:
        return self.directory / (hashlib.sha1(sample_id.encode()).hexdigest() + ".pt")

    def _load(self, sample_id: str) -> tuple[list[torch.Tensor | None], torch.Tensor] | None:
        if self.directory is None:
            return self._memory.get(sample_id)
        path = self._file(sample_id)
        if not path.is_file():
            return None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return [obj.get(f"tap{i}") for i in range(int(obj["num_taps"]))], obj["check"]

    def _store(self, sample_id: str, feats: list[torch.Tensor | None], check: torch.Tensor) -> None:
        if self.directory is None:
            self._memory[sample_id] = (feats, check)
            return
        obj = {f"tap{i}": f for i, f in enumerate(feats) if f is not None}
        obj.update(num_taps=torch.tensor(len(feats)), check=check)
        path = self._file(sample_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)

    def __call__(self, inputs: torch.Tensor, batchdata: Any) -> list[torch.Tensor | None]:
        """Tapped teacher features of the batch (see the class docstring).

        Raises:
            KeyError: when the batch lacks ``id_key`` or ``input_key``.
            ValueError: when a sample's teacher input differs from the one cached for its id.
        """
        x = inputs
        if self.input_key is not None:
            if not isinstance(batchdata, Mapping) or self.input_key not in batchdata:
                raise KeyError(f"teacher input key '{self.input_key}' is not in the batch.")
            x = batchdata[self.input_key].to(inputs.device)
        ids = self._ids(batchdata, x.shape[0])
        checks = self._checksum(x)
        entries = [self._load(i) for i in ids]
        missing = [k for k, e in enumerate(entries) if e is None]
        if missing:
            self.misses += len(missing)
            feats = self.teacher.stage_features(x[missing])
            keep = self.taps if self.taps is not None else range(len(feats))
            for j, k in enumerate(missing):
                sample = [feats[t][j].detach().to("cpu", self.dtype).clone() if t in keep else None for t in range(len(feats))]
                entries[k] = (sample, checks[k])
                self._store(ids[k], sample, checks[k])
        self.hits += len(ids) - len(missing)
        if self.check_inputs:
            for k, (_, stored) in enumerate(entries):
                if not torch.allclose(stored, checks[k], rtol=1e-4, atol=1e-3):
                    raise ValueError(
                        f"the teacher input of sample '{ids[k]}' differs from the one its features were cached "
                        "for: random augmentation reaches the teacher (feed it an un-augmented key via input_key) "
                        "or the preprocessing changed without changing preprocessing_signature."
                    )
        num_taps = len(entries[0][0])
        out: list[torch.Tensor | None] = []
        for t in range(num_taps):
            if entries[0][0][t] is None:
                out.append(None)
            else:
                out.append(torch.stack([e[0][t] for e in entries]).to(inputs.device, torch.float32))
        return out


_FORMAT_VERSION = 1
_INPUT_STATS = 5  # sum, |x| sum, x^2 sum and two position-weighted sums of the teacher input


@dataclass(frozen=True)
class _TapPlan:
    """How one kept tap is stored: as a map, resampled to ``size`` when that is smaller."""

    size: tuple[int, ...] | None
    spatial_dims: int
    grid_size: tuple[int, ...] | None
    num_prefix_tokens: int | None

    @property
    def mode(self) -> str:
        return "bilinear" if self.spatial_dims == 2 else "trilinear"

    def resample_to(self, spatial: Sequence[int]) -> tuple[int, ...] | None:
        """The size to resample a map of spatial size ``spatial`` to before storage (``None``: keep it)."""
        if self.size is None or tuple(spatial) == self.size:
            return None
        return self.size if math.prod(self.size) < math.prod(spatial) else None


def _tap_plans(projectors: nn.Module | None) -> dict[int, _TapPlan | None]:
    """Per tap read by ``projectors``: the projectors' common resampling, or ``None`` (store as returned)."""
    if projectors is None:
        return {}
    readers: dict[int, list[nn.Module]] = {}
    for proj, tap in zip(projectors.projectors, projectors.teacher_taps):
        readers.setdefault(int(tap), []).append(proj)
    plans: dict[int, _TapPlan | None] = {}
    for tap, projs in readers.items():
        settings = {(p.out_size, p.grid_size, p.num_prefix_tokens, int(p.spatial_dims)) for p in projs}
        if len(settings) != 1:  # projectors resampling one tap differently: keep the teacher's map
            plans[tap] = None
            continue
        size, grid, prefix, dims = settings.pop()
        plans[tap] = _TapPlan(size, dims, grid, prefix)
    return plans


def stored_feature_shape(plan: _TapPlan | None, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample shape a tap of per-sample shape ``shape`` is stored with under ``plan``.

    Token sequences (``N x C``) become maps on the projector's patch grid; a map is resampled to the
    projector's size when that has fewer positions than the map.
    """
    shape = tuple(int(s) for s in shape)
    if plan is None:
        return shape
    if len(shape) == 2:  # tokens: arrange them as the projector does
        probe = torch.empty((1, *shape), device="meta")
        shape = tuple(tokens_to_map(probe, plan.spatial_dims, plan.grid_size, plan.num_prefix_tokens).shape[1:])
    target = plan.resample_to(shape[1:])
    return (shape[0], *target) if target is not None else shape


def _prepare_feature(plan: _TapPlan | None, feature: torch.Tensor) -> torch.Tensor:
    """What the cache stores for a batch of one tap: exactly the projector's input after its resampling."""
    if plan is None:
        return feature
    if feature.ndim == 3:
        feature = tokens_to_map(feature, plan.spatial_dims, plan.grid_size, plan.num_prefix_tokens)
    target = plan.resample_to(feature.shape[2:])
    if target is not None:
        feature = F.interpolate(feature.float(), size=target, mode=plan.mode, align_corners=False)
    return feature


def _buffers_digest(module: nn.Module) -> str:
    """SHA-256 over every buffer of ``module``, persistent or not (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, buf in sorted(module.named_buffers(), key=lambda kv: kv[0]):
        t = buf.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _module_config_digest(module: nn.Module) -> str:
    """SHA-256 over the plain public attributes of ``module`` and of every sub-module (e.g. the
    preprocessing's input size and interpolation mode, patch sizes): configuration that is not a
    tensor of the state dict."""
    h = hashlib.sha256()
    for name, sub in module.named_modules():
        h.update(f"{name}:{transforms_signature(sub, depth=1)}\n".encode())
    return h.hexdigest()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype == torch.float16:
        return np.dtype(np.float16)
    if dtype == torch.float32:
        return np.dtype(np.float32)
    raise ValueError(f"the multi-view feature cache stores float16 or float32, got {dtype}.")


class _FileLock:
    """An exclusive ``flock`` on a file (a no-op where ``fcntl`` is missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class MultiViewFeatureCache:
    """Disk (or memory) store of a frozen teacher's features for every view of a multi-view dataset.

    Call it like the teacher's ``stage_features`` but with the batch: ``cache(inputs, batchdata)``
    returns one tensor per teacher tap (``None`` for taps no projector reads), ``float32`` on
    ``inputs``' device. The entry of each sample is ``batchdata[id_key]`` (``view_id`` of a
    :class:`~drd_components.data.multiview.MultiViewDataset`: sample, view and crop). Entries not
    stored yet (or found corrupt or stale) are computed in one teacher forward on ``inputs`` (the
    view itself, so teacher and student always see the same view) and stored; the teacher never
    runs on a hit. Values are always returned as stored (rounded to ``dtype``), so a run gives the
    same numbers whether the cache was filled beforehand or on the way.

    **What is stored.** Only the taps the projectors read. A tap is stored exactly as its
    projector receives it after resampling: token sequences arranged on the projector's grid, and
    maps resampled (bilinear/trilinear, ``align_corners=False``, as
    :class:`~drd_components.networks.ReprogrammingProjector` does) to the student stage's size when
    that has fewer positions than the teacher's map; the projector then finds its size and skips
    the interpolation. On disk (``cache_dir``): ``<cache_dir>/<key digest>/`` holds
    ``tap<t>.npy`` (``[entries, C, *stored_size]``, memory-mapped), ``filled.npy`` (one byte per
    entry), ``crc32.npy`` (per entry, over the entry index, its input fingerprint and its
    features), ``input_check.npy`` (five float64 statistics of the teacher input per entry,
    position-weighted so flips and shifts change them) and ``meta.json`` (the full key, the
    array shapes and the sample identities). ``memory_bytes`` keeps recently used entries in RAM.

    **Key.** Teacher class, weights and buffers (:func:`module_fingerprint`, plus non-persistent
    buffers such as normalisation statistics), the public attributes of the teacher and its
    sub-modules (preprocessing size and mode, ...), tap names, kept taps and how each is
    resampled, ``dtype``, the dataset's signature (deterministic and random transforms, view seed, K, crops per view,
    sample identities) and ``num_entries``. A different key is a different folder; a folder whose
    ``meta.json`` does not parse, holds another key, or whose arrays are missing, truncated or of
    the wrong shape is logged and rebuilt (emptied). A single entry whose CRC does not match is
    logged and recomputed; an entry whose stored input fingerprint differs from the batch's input
    (a view that does not reproduce, or a changed file) is logged and recomputed too (counted in
    :attr:`stale`). Stored features are never returned unverified.

    **Several processes.** Writes take an exclusive ``flock`` on ``<folder>/lock`` and go features
    -> flush -> CRC -> flush -> filled flag -> flush, so a reader never accepts a half-written
    entry; readers take no lock. Use :meth:`fill` (or ``tools/fill_teacher_cache.py``) to compute
    every entry before training, once for several runs.

    Args:
        teacher: the frozen teacher (``stage_features``); its weights must not change while in use.
        projectors: the :class:`~drd_components.networks.ReprogrammingModule` (kept taps and their
            sizes); ``None`` stores ``taps`` as the teacher returns them.
        dataset: the :class:`~drd_components.data.multiview.MultiViewDataset` (entry count and key);
            ``None`` needs ``num_entries``.
        cache_dir: parent folder of the disk store; ``None`` keeps everything in memory.
        memory_bytes: RAM for decoded entries (least recently used dropped first). With
            ``cache_dir``: ``0`` (default) keeps none (the OS page cache still holds the files),
            ``None`` no limit. Without ``cache_dir``: ``None`` or ``0`` no limit; a dropped entry
            is recomputed on its next use.
        dtype: storage dtype, ``float16`` (default) or ``float32``.
        num_entries: entry count when no ``dataset`` is given.
        taps: taps to keep when ``projectors`` is ``None`` (default: all).
        id_key: batch key of the entry index.
        preprocessing_signature: anything else the features depend on (string or transforms).
        check_inputs: compare each hit's input fingerprint with the batch's input.

    Raises:
        ValueError: without ``dataset`` and ``num_entries``, or for an unsupported ``dtype``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        projectors: nn.Module | None = None,
        dataset: Any = None,
        cache_dir: str | os.PathLike | None = None,
        memory_bytes: int | None = 0,
        dtype: torch.dtype | str = torch.float16,
        num_entries: int | None = None,
        taps: Sequence[int] | None = None,
        id_key: str = "view_id",
        preprocessing_signature: Any = "",
        check_inputs: bool = True,
    ) -> None:
        self.teacher = teacher
        self.projectors = projectors
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self._np_dtype = _numpy_dtype(self.dtype)
        if dataset is None and num_entries is None:
            raise ValueError("MultiViewFeatureCache needs the multi-view dataset or num_entries.")
        self.num_entries = int(num_entries if num_entries is not None else dataset.num_entries)
        if dataset is not None and int(dataset.num_entries) != self.num_entries:
            raise ValueError(f"num_entries {self.num_entries} differs from the dataset's {dataset.num_entries}.")
        self.id_key = id_key
        self.check_inputs = check_inputs
        self.plans = _tap_plans(projectors)
        if projectors is not None:
            self._configured_taps = sorted(self.plans)
        else:
            self._configured_taps = sorted({int(t) for t in taps}) if taps is not None else None  # None: all
        self.kept_taps = self._configured_taps
        signature = preprocessing_signature if isinstance(preprocessing_signature, str) else transforms_signature(
            preprocessing_signature, depth=6
        )
        dataset_signature = dict(dataset.cache_signature()) if dataset is not None else {}
        self.sample_ids: list[str] = dataset_signature.pop("sample_ids", [])
        self.key = {
            "format": _FORMAT_VERSION,
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "teacher_fingerprint": module_fingerprint(teacher),
            "teacher_buffers": _buffers_digest(teacher),  # non-persistent ones too (e.g. normalisation statistics)
            "teacher_config": _module_config_digest(teacher),  # public attributes of every sub-module (sizes, modes)
            "tap_names": list(getattr(teacher, "tap_names", ())),
            "kept_taps": self.kept_taps,
            "plans": {str(t): (None if p is None else [list(p.size) if p.size else None, p.spatial_dims,
                                                        list(p.grid_size) if p.grid_size else None, p.num_prefix_tokens])
                      for t, p in sorted(self.plans.items())},
            "dtype": str(self.dtype),
            "dataset": dataset_signature,
            "num_entries": self.num_entries,
            "preprocessing_signature": signature,
        }
        self.key_text = json.dumps(self.key, sort_keys=True)
        self.key_digest = hashlib.sha256(self.key_text.encode()).hexdigest()
        self.directory = Path(cache_dir) / self.key_digest[:24] if cache_dir else None
        if self.directory is None:
            self.memory_bytes = None if not memory_bytes else int(memory_bytes)
        else:
            self.memory_bytes = None if memory_bytes is None else int(memory_bytes)
        self._memory: OrderedDict[int, tuple[list[torch.Tensor], torch.Tensor]] = OrderedDict()
        self._memory_used = 0
        self._arrays: dict[str, np.memmap] | None = None
        self.num_taps: int | None = None
        self.stored_shapes: dict[int, tuple[int, ...]] | None = None
        self._weights: dict[tuple[int, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.stale = 0
        self.rebuilds = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._lock():
                self._open_existing()

    # ------------------------------------------------------------------ disk layout
    def _lock(self) -> _FileLock:
        return _FileLock(self.directory / "lock")

    def _array_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        n = self.num_entries
        specs = {f"tap{t}": ((n, *self.stored_shapes[t]), self._np_dtype) for t in self.kept_taps}
        specs["filled"] = ((n,), np.dtype(np.uint8))
        specs["crc32"] = ((n,), np.dtype(np.uint32))
        specs["input_check"] = ((n, _INPUT_STATS), np.dtype(np.float64))
        return specs

    def _rebuild(self, reason: str) -> None:
        """Empty the folder (caller holds the lock)."""
        logger.warning("teacher cache %s: %s; rebuilding it (every entry will be recomputed).", self.directory, reason)
        self.rebuilds += 1
        self._arrays = None
        self.stored_shapes = None
        self.kept_taps = self._configured_taps
        self._memory.clear()
        self._memory_used = 0
        for path in self.directory.iterdir():
            if path.name != "lock" and path.is_file():
                path.unlink()

    def _open_existing(self) -> bool:
        """Open a valid store in the folder (caller holds the lock); rebuild an invalid one.

        Returns:
            whether a valid store is open now.
        """
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            if any(p.suffix == ".npy" for p in self.directory.iterdir()):
                self._rebuild("arrays without meta.json (an interrupted allocation)")
            return False
        try:
            meta = json.loads(meta_path.read_text())
            stored_key = json.dumps(meta["key"], sort_keys=True)
            num_taps = int(meta["num_taps"])
            shapes = {int(t): tuple(int(v) for v in s) for t, s in meta["stored_shapes"].items()}
            kept = sorted(shapes)
        except Exception as e:  # noqa: BLE001 - any unreadable meta means rebuild
            self._rebuild(f"meta.json does not parse ({type(e).__name__}: {e})")
            return False
        if stored_key != self.key_text:
            self._rebuild("meta.json holds a different key")
            return False
        if self._configured_taps is not None and kept != self._configured_taps:
            self._rebuild(f"stored taps {kept} differ from {self.kept_taps}")
            return False
        self.kept_taps, self.num_taps, self.stored_shapes = kept, num_taps, shapes
        arrays = {}
        for name, (shape, dtype) in self._array_specs().items():
            path = self.directory / f"{name}.npy"
            try:
                # read the header first: numpy would silently extend a truncated file opened with r+
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}[version]
                    stored_shape, fortran, stored_dtype = read_header(f)
                    offset = f.tell()
                size = path.stat().st_size
            except Exception as e:  # noqa: BLE001 - missing or garbled files
                self._rebuild(f"{path.name} cannot be read ({type(e).__name__}: {e})")
                return False
            if tuple(stored_shape) != shape or stored_dtype != dtype or fortran:
                self._rebuild(f"{path.name} holds {tuple(stored_shape)} {stored_dtype}, expected {shape} {dtype}")
                return False
            if size != offset + math.prod(shape) * dtype.itemsize:
                self._rebuild(f"{path.name} is {size} bytes, expected {offset + math.prod(shape) * dtype.itemsize} (truncated?)")
                return False
            arrays[name] = np.load(path, mmap_mode="r+")
        self._arrays = arrays
        return True

    def _allocate(self, feature_shapes: dict[int, tuple[int, ...]], num_taps: int) -> None:
        """Create the arrays and meta.json for the first computed batch (or open another process's)."""
        with self._lock():
            if self._open_existing():
                if self.stored_shapes != feature_shapes:
                    raise ValueError(
                        f"teacher features of stored shapes {feature_shapes} do not fit the cache's {self.stored_shapes} "
                        f"in {self.directory}."
                    )
                return
            self.num_taps, self.stored_shapes = num_taps, dict(feature_shapes)
            for name, (shape, dtype) in self._array_specs().items():
                tmp = self.directory / f".{name}.{os.getpid()}.tmp.npy"
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                arr.flush()
                del arr
                os.replace(tmp, self.directory / f"{name}.npy")
            meta = {
                "key": self.key,
                "key_sha256": self.key_digest,
                "num_taps": num_taps,
                "stored_shapes": {str(t): list(s) for t, s in sorted(feature_shapes.items())},
                "dtype": str(self.dtype),
                "bytes_per_entry": self.bytes_per_entry,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sample_ids": self.sample_ids,
            }
            tmp = self.directory / f".meta.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self.directory / "meta.json")
            if not self._open_existing():
                raise RuntimeError(f"could not open the teacher cache just written in {self.directory}.")

    # ------------------------------------------------------------------ sizes and state
    @property
    def bytes_per_entry(self) -> int | None:
        """Bytes of one entry on disk (features, flag, CRC, input fingerprint); ``None`` before the first store."""
        if self.stored_shapes is None:
            return None
        feats = sum(math.prod(s) for s in self.stored_shapes.values()) * self._np_dtype.itemsize
        return int(feats + 1 + 4 + 8 * _INPUT_STATS)

    def disk_bytes(self) -> int:
        """Bytes the folder occupies on disk (allocated blocks: the arrays are sparse until filled)."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return sum(p.stat().st_blocks * 512 for p in self.directory.iterdir() if p.is_file())

    def __len__(self) -> int:
        """Entries stored (flagged on disk, or held in memory without ``cache_dir``)."""
        if self.directory is None:
            return len(self._memory)
        self._refresh()
        return 0 if self._arrays is None else int(np.count_nonzero(self._arrays["filled"]))

    def filled_mask(self) -> np.ndarray:
        """Per entry: whether it is stored (flag only; the CRC is checked when it is read)."""
        if self.directory is None:
            mask = np.zeros(self.num_entries, dtype=bool)
            mask[list(self._memory)] = True
            return mask
        self._refresh()
        if self._arrays is None:
            return np.zeros(self.num_entries, dtype=bool)
        return np.asarray(self._arrays["filled"]).astype(bool)

    def _refresh(self) -> None:
        """Pick up a store another process allocated since."""
        if self.directory is not None and self._arrays is None and (self.directory / "meta.json").exists():
            with self._lock():
                self._open_existing()

    def clear(self) -> None:
        """Drop every entry of this key (memory and disk)."""
        self._memory.clear()
        self._memory_used = 0
        if self.directory is not None:
            with self._lock():
                self._arrays = None
                for path in self.directory.iterdir():
                    if path.name != "lock" and path.is_file():
                        path.unlink()

    # ------------------------------------------------------------------ entries
    def _input_checks(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
        n = flat.shape[1]
        key = (n, str(flat.device))
        w = self._weights.get(key)
        if w is None:
            pos = torch.arange(n, dtype=torch.float64, device=flat.device)
            w = torch.stack([torch.cos(pos * 0.7548776662466927), torch.sin(pos * 0.5698402909980532 + 0.3)], 1)
            self._weights = {key: w}
        stats = torch.cat([flat.sum(1, keepdim=True), flat.abs().sum(1, keepdim=True), (flat * flat).sum(1, keepdim=True), flat @ w], 1)
        return stats.cpu()

    @staticmethod
    def _inputs_match(stored: torch.Tensor, now: torch.Tensor) -> bool:
        scale = torch.stack([now[1], now[1], now[2], now[1], now[1]]).abs() + 1.0
        return bool(((stored - now).abs() <= 1e-5 * scale).all())

    def _crc(self, entry: int, check: np.ndarray, rows: Sequence[np.ndarray]) -> int:
        crc = zlib.crc32(int(entry).to_bytes(8, "little"))
        crc = zlib.crc32(np.ascontiguousarray(check, dtype=np.float64), crc)
        for row in rows:
            crc = zlib.crc32(np.ascontiguousarray(row), crc)
        return crc & 0xFFFFFFFF

    def _remember(self, entry: int, feats: list[torch.Tensor], check: torch.Tensor) -> None:
        if self.memory_bytes == 0:
            return
        size = sum(f.numel() * f.element_size() for f in feats)
        if self.memory_bytes is not None and size > self.memory_bytes:
            return
        old = self._memory.pop(entry, None)
        if old is not None:
            self._memory_used -= sum(f.numel() * f.element_size() for f in old[0])
        self._memory[entry] = (feats, check)
        self._memory_used += size
        while self.memory_bytes is not None and self._memory_used > self.memory_bytes:
            _, (dropped, _) = self._memory.popitem(last=False)
            self._memory_used -= sum(f.numel() * f.element_size() for f in dropped)

    def _forget(self, entry: int) -> None:
        old = self._memory.pop(entry, None)
        if old is not None:
            self._memory_used -= sum(f.numel() * f.element_size() for f in old[0])

    def _lookup(self, entry: int, check: torch.Tensor | None) -> list[torch.Tensor] | None:
        found = self._memory.get(entry)
        if found is not None:
            self._memory.move_to_end(entry)
            feats, stored_check = found
        else:
            if self.directory is None:
                return None
            self._refresh()
            if self._arrays is None or not self._arrays["filled"][entry]:
                return None
            stored_check_np = np.array(self._arrays["input_check"][entry])
            rows = [np.array(self._arrays[f"tap{t}"][entry]) for t in self.kept_taps]
            if self._crc(entry, stored_check_np, rows) != int(self._arrays["crc32"][entry]):
                self.corrupt += 1
                logger.warning(
                    "teacher cache %s: entry %d fails its CRC-32 check (corrupt or half-written); recomputing it.",
                    self.directory, entry,
                )
                return None
            feats = [torch.from_numpy(r) for r in rows]
            stored_check = torch.from_numpy(stored_check_np)
            self._remember(entry, feats, stored_check)
        if check is not None and not self._inputs_match(stored_check, check):
            self.stale += 1
            logger.warning(
                "teacher cache %s: the input of entry %d differs from the one its features were computed for "
                "(a view that does not reproduce, or changed data); recomputing it.",
                self.directory if self.directory is not None else "(memory)", entry,
            )
            self._forget(entry)
            return None
        return feats

    def _store(self, entries: Sequence[int], feats: list[torch.Tensor], checks: torch.Tensor) -> list[list[torch.Tensor]]:
        """Store the computed teacher features of ``entries``; returns them as stored (rounded)."""
        if self.num_taps is None:
            self.num_taps = len(feats)
        if self.kept_taps is None:
            self.kept_taps = list(range(len(feats)))
        if max(self.kept_taps) >= len(feats):
            raise ValueError(f"the cache keeps teacher taps {self.kept_taps} but the teacher returned {len(feats)}.")
        prepared = {t: self._stored_form(t, feats[t]).contiguous() for t in self.kept_taps}
        shapes = {t: tuple(prepared[t].shape[1:]) for t in self.kept_taps}
        if self.directory is not None:
            if self._arrays is None:
                self._allocate(shapes, len(feats))
        elif self.stored_shapes is None:
            self.stored_shapes = shapes
        if shapes != self.stored_shapes:
            raise ValueError(
                f"teacher features of stored shapes {shapes} do not fit the cache's {self.stored_shapes} "
                "(inputs of varying size cannot share a cache)."
            )
        out = [[prepared[t][j] for t in self.kept_taps] for j in range(len(entries))]
        if self.directory is not None:
            arrays = self._arrays
            with self._lock():
                rows_np = [[prepared[t][j].numpy() for t in self.kept_taps] for j in range(len(entries))]
                if any(arrays["filled"][e] for e in entries):  # overwriting: unflag first
                    for e in entries:
                        arrays["filled"][e] = 0
                    arrays["filled"].flush()
                for j, e in enumerate(entries):
                    for t, row in zip(self.kept_taps, rows_np[j]):
                        arrays[f"tap{t}"][e] = row
                    arrays["input_check"][e] = checks[j].numpy()
                for t in self.kept_taps:
                    arrays[f"tap{t}"].flush()
                arrays["input_check"].flush()
                for j, e in enumerate(entries):
                    arrays["crc32"][e] = self._crc(e, checks[j].numpy(), rows_np[j])
                arrays["crc32"].flush()
                for e in entries:
                    arrays["filled"][e] = 1
                arrays["filled"].flush()
        for j, e in enumerate(entries):
            self._remember(int(e), out[j], checks[j].clone())
        return out

    def _entry_ids(self, batchdata: Any, n: int) -> list[int]:
        if not isinstance(batchdata, Mapping) or self.id_key not in batchdata:
            raise KeyError(
                f"the multi-view teacher cache needs the entry index under batch key '{self.id_key}' "
                "(a MultiViewDataset adds it as 'view_id')."
            )
        raw = batchdata[self.id_key]
        ids = [int(v) for v in (raw.reshape(-1).tolist() if isinstance(raw, torch.Tensor) else raw)]
        if len(ids) != n:
            raise ValueError(f"batch key '{self.id_key}' holds {len(ids)} ids for {n} samples.")
        bad = [i for i in ids if not 0 <= i < self.num_entries]
        if bad:
            raise ValueError(f"entry ids {bad[:5]} out of range for a cache of {self.num_entries} entries.")
        return ids

    def __call__(self, inputs: torch.Tensor, batchdata: Any) -> list[torch.Tensor | None]:
        """Tapped teacher features of the batch (see the class docstring).

        Raises:
            KeyError: when the batch lacks ``id_key``.
            ValueError: for ids out of range or features that do not fit the stored shapes.
        """
        ids = self._entry_ids(batchdata, inputs.shape[0])
        checks = self._input_checks(inputs)
        entries: list[list[torch.Tensor] | None] = [
            self._lookup(e, checks[k] if self.check_inputs else None) for k, e in enumerate(ids)
        ]
        missing = [k for k, e in enumerate(entries) if e is None]
        if missing:
            self.misses += len(missing)
            x = inputs if len(missing) == len(ids) else inputs[missing]
            feats = self.teacher.stage_features(x)
            stored = self._store([ids[k] for k in missing], feats, checks[missing])
            for j, k in enumerate(missing):
                entries[k] = stored[j]
        self.hits += len(ids) - len(missing)
        out: list[torch.Tensor | None] = [None] * int(self.num_taps)
        for pos, t in enumerate(self.kept_taps):
            out[t] = torch.stack([e[pos] for e in entries]).to(inputs.device, torch.float32)
        return out

    @torch.no_grad()
    def compute(self, inputs: torch.Tensor) -> list[torch.Tensor | None]:
        """Teacher features of arbitrary inputs exactly as the cache would store them, not stored.

        For inputs outside the training views (e.g. validation or test images) that must look
        like what the cache serves: same taps, same resampling, same ``dtype`` rounding. Runs the
        teacher.

        Returns:
            One tensor per teacher tap (``None`` for taps not kept), ``float32`` on ``inputs``' device.
        """
        feats = self.teacher.stage_features(inputs)
        kept = self.kept_taps if self.kept_taps is not None else list(range(len(feats)))
        out: list[torch.Tensor | None] = [None] * len(feats)
        for t in kept:
            out[t] = self._stored_form(t, feats[t]).to(inputs.device, torch.float32)
        return out

    def _stored_form(self, tap: int, feature: torch.Tensor) -> torch.Tensor:
        """One tap of a batch as stored: prepared for its projector, on the CPU in ``dtype``.

        Raises:
            ValueError: when finite features overflow ``float16``.
        """
        f = feature.detach()
        f = f.as_tensor() if hasattr(f, "as_tensor") else f  # MetaTensor inputs give MetaTensor features
        f = _prepare_feature(self.plans.get(tap), f)
        stored = f.to("cpu", self.dtype)
        if self.dtype == torch.float16 and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(f).all()):
            raise ValueError(
                f"teacher tap {tap} has values beyond float16's range (max |x| = {float(f.abs().max()):.4g}); "
                "use dtype float32 for this teacher's cache."
            )
        return stored

    @torch.no_grad()
    def fill(
        self,
        dataset: Any,
        batch_size: int = 8,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        verify: bool = False,
        image_key: str = "image",
    ) -> dict[str, float]:
        """Compute every entry not stored yet (every view of every sample of ``dataset``).

        Safe to run in several processes at once (each computes what it finds missing); later
        training runs with the same key then never run the teacher.

        Args:
            dataset: the :class:`~drd_components.data.multiview.MultiViewDataset` of this cache.
            batch_size: views per teacher forward.
            num_workers: data-loader worker processes.
            device: where the teacher's inputs go (default: the teacher's device).
            verify: also read back (CRC and input fingerprint) the entries already stored.
            image_key: batch key of the teacher's (and student's) input.

        Returns:
            ``computed`` (entries the teacher ran on), ``entries``, ``seconds``.
        """
        from monai.data import DataLoader

        if int(dataset.num_entries) != self.num_entries:
            raise ValueError(f"the dataset has {dataset.num_entries} entries, the cache {self.num_entries}.")
        if device is None:
            param = next(iter(self.teacher.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        per_view = int(getattr(dataset, "items_per_view", 1))
        filled = self.filled_mask()
        todo = [i for i in range(len(dataset)) if verify or not filled[i * per_view : (i + 1) * per_view].all()]
        start, misses = time.perf_counter(), self.misses
        if todo:
            loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, shuffle=False, num_workers=num_workers)
            for batch in loader:
                self(batch[image_key].to(device), batch)
        return {"computed": self.misses - misses, "entries": self.num_entries, "seconds": time.perf_counter() - start}


class CachedDRDTrainer(DRDTrainer):
    """:class:`DRDTrainer` whose teacher features come from a feature cache.

    With a :class:`MultiViewFeatureCache` over a
    :class:`~drd_components.data.multiview.MultiViewDataset` (``train_drd_cache.json``) the
    teacher's input is the student's input (the same view) and the teacher runs only for entries
    not stored yet; with a :class:`TeacherFeatureCache` it runs once per sample id.

    Args:
        feature_cache: the cache (built on the same teacher as ``teacher``).
        args, kwargs: see :class:`DRDTrainer`.
    """

    def __init__(self, *args: Any, feature_cache: MultiViewFeatureCache | TeacherFeatureCache, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feature_cache = feature_cache

    def compute_teacher_features(self, inputs: torch.Tensor, batchdata: Any = None) -> list[torch.Tensor]:
        return self.feature_cache(inputs, batchdata)
