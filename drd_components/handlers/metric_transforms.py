"""Output transforms that put engine outputs in the form ignite's classification metrics expect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["classification_output_transform"]


def classification_output_transform(
    output: Sequence[Mapping[str, Any]] | Mapping[str, Any], pred_key: str = "pred", label_key: str = "label"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores B x C, labels B)`` from a (decollated) engine output.

    ``ignite.metrics.Accuracy`` treats a one-hot ``B x C`` target as ``B * C`` binary decisions,
    which inflates multi-class accuracy (a wrong prediction still matches ``C - 2`` zeros). This
    transform turns one-hot or ``B x 1`` labels into class indices so that accuracy is the
    fraction of correctly classified images.

    Args:
        output: ``engine.state.output`` (a list of per-item dicts, or a batched dict).
        pred_key: key of the class scores / one-hot predictions.
        label_key: key of the labels (indices, ``B x 1`` or one-hot).

    Returns:
        the scores and the integer labels.
    """
    if isinstance(output, Mapping):
        preds, labels = torch.as_tensor(output[pred_key]), torch.as_tensor(output[label_key])
    else:
        preds = torch.stack([torch.as_tensor(o[pred_key]) for o in output])
        labels = torch.stack([torch.as_tensor(o[label_key]) for o in output])
    preds = preds.reshape(preds.shape[0], -1)
    if labels.ndim > 1 and labels.reshape(labels.shape[0], -1).shape[1] > 1:
        labels = labels.reshape(labels.shape[0], -1).argmax(dim=1)
    return preds.float(), labels.reshape(-1).long()
