"""Output transforms that expose DRD's loss terms to MONAI's logging handlers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["LossTermsTransform"]


class LossTermsTransform:
    """Pick the scalar loss terms out of ``engine.state.output`` for StatsHandler/TensorBoard.

    Works with the decollated list MONAI engines produce (terms are replicated per item, the
    first is used) and with a plain dict. Returns ``{"loss": ...}`` for a stock
    ``SupervisedTrainer`` and, for :class:`~drd_components.engines.DRDTrainer`, also
    ``loss_task``, ``loss_hybrid``, ``loss_kl``, ``loss_cka``, ``alpha``, ``beta`` and the
    per-stage ``cka_stage<i>`` similarities.

    Args:
        prefixes: output keys starting with any of these are reported.
    """

    def __init__(self, prefixes: Sequence[str] = ("loss", "alpha", "beta", "cka_stage")) -> None:
        self.prefixes = tuple(prefixes)

    def __call__(self, output: Any) -> dict[str, float] | None:
        if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
            if not output:
                return None
            output = output[0]
        if not isinstance(output, Mapping):
            return None
        terms = {}
        for key, value in output.items():
            if isinstance(key, str) and key.startswith(self.prefixes):
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    terms[key] = float(value.detach())
                elif isinstance(value, (int, float)):
                    terms[key] = float(value)
        return terms or None
