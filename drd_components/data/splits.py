"""Deterministic, stratified dataset splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["stratified_split"]


def stratified_split(
    items: Sequence[Mapping[str, Any]],
    label_key: str = "label",
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split items into named parts, keeping each class's share in every part.

    Items are sorted by their ``repr`` first, so the result depends only on the set of items and
    ``seed`` (not on file-system listing order). Within each class the shuffled items are cut by
    cumulative rounding, so every part gets ``round(fraction * n_class)`` items of each class
    (any remainder goes to the first part).

    Args:
        items: records, each with a hashable ``label_key`` entry.
        label_key: key to stratify on.
        fractions: part name -> fraction; must sum to 1. Default ``training 0.7, validation 0.15,
            test 0.15``.
        seed: seed of the shuffle.

    Returns:
        part name -> list of records (copies), in a deterministic order.

    Raises:
        ValueError: when fractions are negative or do not sum to 1, or an item lacks the label key.
    """
    fractions = dict(fractions or {"training": 0.7, "validation": 0.15, "test": 0.15})
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}.")
    by_class: dict[Hashable, list[dict]] = defaultdict(list)
    for item in items:
        if label_key not in item:
            raise ValueError(f"item {item} has no '{label_key}' entry to stratify on.")
        by_class[item[label_key]].append(dict(item))
    rng = random.Random(seed)
    parts: dict[str, list[dict]] = {name: [] for name in fractions}
    names = list(fractions)
    for label in sorted(by_class, key=repr):
        group = sorted(by_class[label], key=repr)
        rng.shuffle(group)
        n = len(group)
        bounds, acc = [], 0.0
        for name in names:
            acc += fractions[name]
            bounds.append(round(acc * n))
        start = 0
        for name, end in zip(names, bounds):
            parts[name].extend(group[start:end])
            start = end
        parts[names[0]].extend(group[start:])
    return parts
