"""Hinton logit knowledge distillation from a teacher with a task head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from drd_components.baselines.engine import TeacherGuidedTrainer
from drd_components.losses.drd_loss import softened_kl

__all__ = ["LogitKDLoss", "KDTrainer"]


class LogitKDLoss(nn.Module):
    """``(1 - w) * L_task(z_S, y) + w * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``.

    The teacher logits are detached. For segmentation logits the divergence is per voxel
    (averaged over voxels, or over the voxels of ``mask``).

    Args:
        task_loss: loss on (student output, target).
        temperature: softening temperature ``T``.
        kd_weight: ``w`` in ``[0, 1]``.

    Raises:
        ValueError: for ``kd_weight`` outside ``[0, 1]`` or a non-positive temperature.
    """

    def __init__(self, task_loss: nn.Module, temperature: float = 4.0, kd_weight: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.task_loss = task_loss
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)

    def forward(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``loss`` and the weighted terms ``loss_task`` and ``loss_kd``.

        Raises:
            ValueError: when the logit shapes differ.
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ."
            )
        task = self.task_loss(student_logits, target).mean()
        kd = softened_kl(teacher_logits, student_logits, self.temperature, mask)
        out = {"loss_task": (1.0 - self.kd_weight) * task, "loss_kd": self.kd_weight * kd}
        out["loss"] = out["loss_task"] + out["loss_kd"]
        return out


class KDTrainer(TeacherGuidedTrainer):
    """Trains the student with :class:`LogitKDLoss` against a frozen teacher's logits.

    ``teacher`` maps the teacher input to task logits shaped like the student's output (e.g. a
    :class:`~drd_components.baselines.TeacherWithHead` loaded from a linear probe or LoRA run).
    See :class:`~drd_components.baselines.engine.TeacherGuidedTrainer` for the other arguments;
    ``mask_key`` optionally names a batch key with a voxel mask for the KD term.
    """

    def __init__(self, *args: Any, mask_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.loss_function, LogitKDLoss):
            raise TypeError(f"KDTrainer needs a LogitKDLoss, got {type(self.loss_function).__name__}.")
        self.mask_key = mask_key

    def compute_loss(self, inputs, targets, batchdata):
        t_in = self.teacher_inputs(inputs, batchdata)
        with torch.inference_mode():
            t_logits = self.teacher(t_in)
        t_logits = t_logits.clone().float()
        pred = self.network(inputs)
        mask = batchdata[self.mask_key].to(self.state.device) if self.mask_key else None
        return pred, self.loss_function(pred, targets, t_logits, mask)
