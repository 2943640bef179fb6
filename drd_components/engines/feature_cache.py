"""Teacher-feature cache: compute each training sample's tapped teacher features once, reuse them.

DRD's teacher is frozen, so when the teacher's *input* is deterministic per sample its features
are the same every epoch. :class:`TeacherFeatureCache` stores them (``float16``, in memory or one
file per sample on disk) keyed by a sample id from the batch, and serves later epochs from the
store. The store is namespaced by a fingerprint of everything the features depend on: the
teacher's class, its weights and buffers, the tapped layers, and a signature of the data
preprocessing; changing any of them selects a fresh namespace (old disk entries are never reused).

Feeding the teacher un-augmented images while the student sees augmented ones: the training
transforms copy the image to a second key *after* the deterministic transforms and *before* the
random ones, e.g. ``CopyItemsd(keys="image", names="image_teacher")``, and the cache's
``input_key`` names it (``tools/bundle_templates/overlays/train_drd_cache.json`` does both, plus
``CopyItemsd(keys="image", names="image_id")`` at the very start so that the file path becomes the
sample id). The teacher then always sees the un-augmented view: intensity augmentation of the
student's view is harmless, but spatial augmentation (flips, affine, crops) is *not* matched in
feature space (``r_i`` and ``s_i`` are then misaligned views); that combination is unsupported —
use intensity-only augmentation or no random augmentation with the cache. As a guard, every hit
compares a cheap checksum of the teacher input with the one stored at the first epoch and raises
when it changed (random augmentation reaching the teacher, or a preprocessing change the
signature missed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drd_components.engines.drd_trainer import DRDTrainer

__all__ = ["module_fingerprint", "transforms_signature", "TeacherFeatureCache", "CachedDRDTrainer"]

_PRIMITIVES = (bool, int, float, str, type(None))


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
    ``Resize`` object). Use it as the cache's ``preprocessing_signature``.
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
    parts = []
    for key, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if key.startswith("_") or key in ("R", "randomize", "rng"):
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


class CachedDRDTrainer(DRDTrainer):
    """:class:`DRDTrainer` whose teacher features come from a :class:`TeacherFeatureCache`.

    Args:
        feature_cache: the cache (built on the same teacher as ``teacher``).
        args, kwargs: see :class:`DRDTrainer`.
    """

    def __init__(self, *args: Any, feature_cache: TeacherFeatureCache, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feature_cache = feature_cache

    def compute_teacher_features(self, inputs: torch.Tensor, batchdata: Any = None) -> list[torch.Tensor]:
        return self.feature_cache(inputs, batchdata)
