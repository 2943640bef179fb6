"""Common base of the staged segmentation students (the head is a decoder that takes skip features)."""

from __future__ import annotations

from typing import List

import torch
from torch.utils.checkpoint import checkpoint

from drd_components.networks.batchnorm import running_stats_frozen
from drd_components.networks.students.base import StagedNetwork

__all__ = ["StagedSegmentationNetwork"]


class StagedSegmentationNetwork(StagedNetwork):
    """A staged encoder whose head is a decoder fed with every stage output (skip features).

    ``forward(x) == forward_head(forward_stages(x))``. The hybrid path ``i``
    (:meth:`forward_from`) uses a reprogrammed teacher feature as the output of encoder stage ``i``,
    runs the rest of the encoder on it, and decodes with the student's own skip features for the
    levels below ``i`` (the replaced feature itself is the skip of level ``i``).

    Memory: every hybrid path runs (part of) the encoder and the whole decoder at full resolution,
    so ``N`` hybrid paths keep about ``N`` extra decoder graphs for the backward pass. With
    ``checkpoint_hybrid=True`` each hybrid path is recomputed during the backward pass instead
    (``torch.utils.checkpoint``, non-reentrant), so only one hybrid graph is alive at a time; the
    result and the gradients are unchanged (dropout draws are replayed). Use it for large 3D
    patches; it costs one extra forward of each hybrid path. Like the trainer does for the hybrid
    forward, the recomputation leaves BatchNorm running statistics untouched.

    Subclasses set ``self.stages``, ``self.spatial_dims``, ``self.out_channels``,
    ``self.checkpoint_hybrid`` and implement :meth:`forward_head`.
    """

    checkpoint_hybrid = False

    @torch.jit.unused
    def _hybrid_tail(self, index: int, feature: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        # runs in the forward pass and again, outside the trainer's own guard, when the backward
        # pass recomputes it: keep BatchNorm running statistics out of both
        with running_stats_frozen(self):
            return StagedNetwork.forward_from(self, index, feature, list(skips))

    @torch.jit.unused
    def forward_from(self, index: int, feature: torch.Tensor, features: List[torch.Tensor]) -> torch.Tensor:
        """Hybrid path: ``feature`` replaces the output of encoder stage ``index`` (0-based); the
        later encoder stages and the decoder run on it, with the student's own ``features`` as skips
        for the levels below ``index``.

        Args:
            index: encoder stage whose output is replaced.
            feature: replacement, shaped like ``features[index]``.
            features: the student's own stage outputs for the same batch.

        Returns:
            segmentation logits shaped like the student's output.

        Raises:
            IndexError: for an index outside ``[0, N)``.
        """
        if not 0 <= index < self.num_stages:
            raise IndexError(f"stage index {index} outside [0, {self.num_stages}).")
        if self.checkpoint_hybrid and torch.is_grad_enabled() and feature.requires_grad:
            return checkpoint(self._hybrid_tail, index, feature, *features[:index], use_reentrant=False)
        return StagedNetwork.forward_from(self, index, feature, features)
