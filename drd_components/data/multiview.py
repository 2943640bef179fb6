"""Multi-view training data: K fixed, reproducible augmented views per sample.

A teacher-feature cache can only serve features for an input it has seen. With random
augmentation every epoch makes new inputs, so :class:`MultiViewDataset` fixes a *pool* of
``num_views`` (K) augmented views per sample: view ``v`` of sample ``i`` is the sample's
deterministic pre-processing output (cached like :class:`monai.data.CacheDataset`) passed through
the bundle's random transforms after they were reseeded with a stable hash of
``(view_seed, i, v)`` (:meth:`monai.transforms.Compose.set_random_state` reseeds every random
transform inside). The same view is therefore produced every time it is asked for, in any
process (data-loader workers included) and in any order, so the teacher's features of view
``(i, v)`` computed once stay valid for the student's copy of that view in every later epoch:
image, label and mask go through the same transforms with the same parameters.

:class:`MultiViewSampler` then draws, each epoch, one view per sample (uniformly from K) in a
shuffled sample order, seeded by ``(seed, epoch)``; the trainer calls its ``set_epoch`` at every
epoch start, so a resumed run draws the same views. ``view_seed`` fixes the pool (and with it the
teacher cache), the run's ``seed`` only which views each epoch draws: runs with different seeds
share one cache. K = 1 without random transforms is plain deterministic training.

Flat dataset index ``i * K + v``. Random transforms that return several samples per call (e.g.
``RandCropByPosNegLabeld(num_samples=P)``) give P items per view; each item carries its own
``view_id`` ``(i * K + v) * P + j``, the index of its teacher-cache entry, and ``sample_index`` ``i``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import CacheDataset
from monai.transforms import Compose, apply_transform
from torch.utils.data import Dataset, Sampler

__all__ = ["view_random_seed", "sample_identity", "MultiViewDataset", "MultiViewSampler"]

#: keys added to every item
VIEW_ID_KEY = "view_id"
SAMPLE_ID_KEY = "sample_id"
"""Optional datalist key: a stable identity of the sample's content (e.g. source file digest + split +
index). When present it replaces the item's paths in the teacher cache's key, so runs that write the same
images to different folders share one cache."""
SAMPLE_INDEX_KEY = "sample_index"


def view_random_seed(view_seed: int, sample_index: int, view: int) -> int:
    """The seed of the random transforms for view ``view`` of sample ``sample_index``.

    A stable hash (numpy ``SeedSequence``) of the three integers: the same in every process and
    Python session, unrelated for neighbouring arguments.

    Args:
        view_seed: the seed of the view pool.
        sample_index: index of the sample in the dataset.
        view: view number in ``[0, K)``.

    Returns:
        an integer in ``[0, 2**32)``.
    """
    return int(np.random.SeedSequence([int(view_seed), int(sample_index), int(view)]).generate_state(1)[0])


def sample_identity(item: Any) -> str:
    """A stable text identity of one datalist item (file paths, labels, ids).

    Strings, numbers and paths are written as they are; arrays and tensors as a short digest of
    their bytes. A mapping with a ``sample_id`` entry (:data:`SAMPLE_ID_KEY`) is identified by that
    entry alone: the datalist vouches that equal ids mean equal content wherever the files are. Used in the teacher cache's key so that a different or reordered datalist never
    reuses another list's features.

    Args:
        item: a datalist entry (usually a dict of paths and labels).

    Returns:
        the identity string.
    """
    if isinstance(item, Mapping) and item.get(SAMPLE_ID_KEY) is not None:
        return f"{{{SAMPLE_ID_KEY}={item[SAMPLE_ID_KEY]}}}"
    if isinstance(item, Mapping):
        return "{" + ",".join(f"{k}={sample_identity(item[k])}" for k in sorted(item, key=str)) + "}"
    if isinstance(item, (list, tuple)):
        return "[" + ",".join(sample_identity(v) for v in item) + "]"
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return f"array{item.shape}:{hashlib.sha1(np.ascontiguousarray(item).tobytes()).hexdigest()[:16]}"
    if isinstance(item, (bool, int, float, str, type(None), np.generic)):
        return str(item)
    return str(item)


def _as_compose(transform: Sequence[Callable] | Callable | None) -> Compose:
    if transform is None:
        return Compose([])
    if isinstance(transform, Compose):
        return transform
    if isinstance(transform, (list, tuple)):
        return Compose(list(transform))
    return Compose([transform])


class MultiViewDataset(Dataset):
    """K reproducible augmented views of every sample (see the module docstring).

    Args:
        data: the datalist (e.g. ``datalist["training"]``).
        transform: the *deterministic* pre-processing (loading, resampling, intensity, resizing);
            its output is cached in memory like :class:`monai.data.CacheDataset` (which does it).
            Named like ``CacheDataset``'s argument so that a bundle overlay can swap the dataset
            class and keep ``data``, ``cache_rate`` and ``num_workers``.
        random_transform: the random augmentation applied to each view (a ``Compose`` or a list of
            transforms); ``None`` for none.
        num_views: K, views per sample (>= 1).
        view_seed: seed of the view pool (the cache's key includes it; independent of the run's seed).
        cache_rate: fraction of the deterministic outputs kept in memory (``CacheDataset``).
        num_workers: threads that fill the deterministic cache (``CacheDataset``).
        items_per_view: items a view yields (``num_samples`` of a multi-sample crop); ``None``
            works it out from view 0 of sample 0.
        progress: show ``CacheDataset``'s progress bar.

    Raises:
        ValueError: for ``num_views < 1`` or a view that yields a different number of items.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        random_transform: Sequence[Callable] | Callable | None = None,
        num_views: int = 1,
        view_seed: int = 0,
        cache_rate: float = 1.0,
        num_workers: int | None = 1,
        items_per_view: int | None = None,
        progress: bool = True,
    ) -> None:
        if int(num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}.")
        # imported here: feature_cache imports the engines package, which must not import data at load time
        from drd_components.engines.feature_cache import transforms_signature

        self.data = data
        self.num_views = int(num_views)
        self.view_seed = int(view_seed)
        self.deterministic_transform = _as_compose(transform)
        self.random_transform = _as_compose(random_transform)
        # taken now, before any view is drawn: random transforms keep their last draw in public attributes
        self.deterministic_signature = transforms_signature(self.deterministic_transform, depth=6)
        self.random_signature = transforms_signature(self.random_transform, depth=6)
        self.base = CacheDataset(
            data, transform=self.deterministic_transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
        self._lock = threading.Lock()
        self.items_per_view = int(items_per_view) if items_per_view is not None else None
        if self.items_per_view is None:
            self.items_per_view = len(self._view_items(0, 0)) if len(data) else 1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def num_samples(self) -> int:
        """N, the number of samples (datalist entries)."""
        return len(self.data)

    @property
    def num_entries(self) -> int:
        """Teacher-cache entries: ``N * K * items_per_view``."""
        return self.num_samples * self.num_views * int(self.items_per_view)

    def __len__(self) -> int:
        return self.num_samples * self.num_views

    def sample_ids(self) -> list[str]:
        """:func:`sample_identity` of every datalist entry, in order."""
        return [sample_identity(item) for item in self.data]

    def cache_signature(self) -> dict:
        """What the views depend on, for a teacher cache's key (plain JSON types).

        Returns:
            ``num_samples``, ``num_views``, ``items_per_view``, ``view_seed``, the signatures of the
            deterministic and random transforms and a digest of the sample identities (the
            identities themselves are under ``sample_ids``).
        """
        ids = self.sample_ids()
        return {
            "num_samples": self.num_samples,
            "num_views": self.num_views,
            "items_per_view": int(self.items_per_view),
            "view_seed": self.view_seed,
            "deterministic_transforms": self.deterministic_signature,
            "random_transforms": self.random_signature,
            "samples_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "sample_ids": ids,
        }

    def _view_items(self, sample_index: int, view: int) -> list[dict]:
        item = self.base[sample_index]
        item = copy.deepcopy(item)  # the cached deterministic output must never be modified in place
        with self._lock:  # the random transforms' state is shared: reseed and apply atomically
            self.random_transform.set_random_state(seed=view_random_seed(self.view_seed, sample_index, view))
            out = apply_transform(self.random_transform, item) if self.random_transform.transforms else item
        items = list(out) if isinstance(out, (list, tuple)) else [out]
        if self.items_per_view is not None and len(items) != self.items_per_view:
            raise ValueError(
                f"view {view} of sample {sample_index} yields {len(items)} items, expected {self.items_per_view} "
                "(a random transform must return the same number of samples for every call)."
            )
        base_id = (sample_index * self.num_views + view) * len(items)
        for j, it in enumerate(items):
            if not isinstance(it, dict):
                raise TypeError(f"MultiViewDataset needs dict items (dictionary transforms), got {type(it).__name__}.")
            it[VIEW_ID_KEY] = base_id + j
            it[SAMPLE_INDEX_KEY] = sample_index
        return items

    def get_view(self, sample_index: int, view: int) -> dict | list[dict]:
        """View ``view`` of sample ``sample_index`` (a dict, or a list of ``items_per_view`` dicts).

        Raises:
            IndexError: for an index out of range.
        """
        if not (0 <= sample_index < self.num_samples and 0 <= view < self.num_views):
            raise IndexError(f"view ({sample_index}, {view}) out of range ({self.num_samples} samples x {self.num_views} views).")
        items = self._view_items(sample_index, view)
        return items[0] if self.items_per_view == 1 else items

    def __getitem__(self, index: int) -> dict | list[dict]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} views.")
        return self.get_view(index // self.num_views, index % self.num_views)


class MultiViewSampler(Sampler[int]):
    """Each epoch: every sample once, in a shuffled order, each with one of its K views.

    Yields flat :class:`MultiViewDataset` indices ``i * K + v``. The order and the views come from
    a generator seeded by ``(seed, epoch)`` (numpy ``SeedSequence``); the view of sample ``i`` in an
    epoch does not depend on the order. Call :meth:`set_epoch` at every epoch start
    (:class:`~drd_components.engines.DRDTrainer` does it for its data loader's sampler), so a
    resumed run replays the same epochs. It runs in the main process, so it works with data-loader
    workers. In a distributed run (an initialised process group, or ``num_replicas``/``rank``
    given) each process takes every ``num_replicas``-th index of the epoch's list, padded like
    ``DistributedSampler`` to an even split.

    Args:
        num_samples: N (e.g. ``MultiViewDataset.num_samples``).
        num_views: K.
        seed: the run's seed.
        shuffle: shuffle the sample order (views are drawn either way).
        num_replicas: processes of a distributed run (default: the process group's size, else 1).
        rank: this process's rank (default: the process group's rank, else 0).

    Raises:
        ValueError: for ``num_views < 1`` or a rank out of range.
    """

    def __init__(
        self,
        num_samples: int,
        num_views: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if int(num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}.")
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = int(num_replicas) if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        self.rank = int(rank) if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} out of range for {self.num_replicas} replicas.")
        self.num_samples = int(num_samples)
        self.num_views = int(num_views)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and views the next iteration yields."""
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """The whole epoch's flat indices (all processes), for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        views = rng.integers(0, self.num_views, size=self.num_samples)
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        return [int(i) * self.num_views + int(views[i]) for i in order]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            indices = (indices * math.ceil(total / max(len(indices), 1)))[:total] if indices else []
            indices = indices[self.rank : total : self.num_replicas]
        return iter(indices)
