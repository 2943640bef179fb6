"""The staged-network interface every DRD student implements."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["StagedNetwork"]


class StagedNetwork(nn.Module):
    """A network split into ``N`` stages ``S_1..S_N`` and a head ``H``.

    ``forward(x) == forward_head(forward_stages(x))`` exactly. DRD's hybrid path ``i`` replaces the
    output of stage ``i`` with a reprogrammed teacher feature and runs the remaining stages and the
    head on it (:meth:`forward_from`). For a classifier the head pools the last map; for a
    segmentation network the head is the decoder, which also takes the earlier stage outputs as
    skip features (for a hybrid path those below ``i`` come from the student itself).

    Subclasses set ``self.stages`` (an ``nn.ModuleList``, the stem belongs to the first stage),
    ``self.spatial_dims`` and implement :meth:`forward_head`.
    """

    __jit_unused_properties__ = ["num_stages"]

    @property
    def num_stages(self) -> int:
        """Number of stages ``N``."""
        return len(self.stages)

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs ``s_1..s_N`` of every stage for input ``x``."""
        features: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Network output from all stage outputs (classifiers use the last one only)."""
        raise NotImplementedError

    @torch.jit.unused
    def forward_from(self, index: int, feature: torch.Tensor, features: List[torch.Tensor]) -> torch.Tensor:
        """Hybrid path: use ``feature`` as the output of stage ``index`` (0-based), run the later
        stages and the head; earlier stage outputs come from ``features`` (the student's own).

        Args:
            index: stage whose output is replaced.
            feature: replacement, shaped like ``features[index]``.
            features: the student's own stage outputs for the same batch.

        Returns:
            the hybrid output, shaped like the network's output.

        Raises:
            IndexError: for an index outside ``[0, N)``.
        """
        if not 0 <= index < self.num_stages:
            raise IndexError(f"stage index {index} outside [0, {self.num_stages}).")
        hybrid = list(features[:index]) + [feature]
        x = feature
        for stage in self.stages[index + 1 :]:
            x = stage(x)
            hybrid.append(x)
        return self.forward_head(hybrid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stages(x))
