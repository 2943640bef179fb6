"""The DRD objective: task + alpha * hybrid task + beta * KL + lambda * (1 - CKA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drd_components.losses.cka import CKALoss

__all__ = ["LinearSchedule", "softened_kl", "DRDLoss"]


class LinearSchedule:
    """A weight that moves linearly from ``start`` to ``end`` as training progresses.

    Args:
        start: value at the first iteration.
        end: value at the last iteration.
    """

    def __init__(self, start: float = 1.0, end: float = 0.0) -> None:
        self.start = float(start)
        self.end = float(end)

    def __call__(self, progress: float) -> float:
        """Value at ``progress`` in ``[0, 1]`` (clamped)."""
        p = min(max(float(progress), 0.0), 1.0)
        return self.start + (self.end - self.start) * p

    def __repr__(self) -> str:
        return f"LinearSchedule(start={self.start}, end={self.end})"


def softened_kl(
    target_logits: torch.Tensor,
    logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(softmax(target / T) || softmax(logits / T)) * T^2`` over the channel dimension.

    The target is detached: ``logits`` learn toward it. For segmentation maps the divergence is
    computed per voxel and averaged over the voxels where ``mask`` (``B x 1 x spatial``) is
    non-zero, then over the batch.

    Args:
        target_logits: ``B x C [x spatial]`` logits of the target distribution.
        logits: logits that learn, same shape.
        temperature: softening temperature ``T``.
        mask: optional voxel mask for spatial outputs.

    Returns:
        a scalar.
    """
    t = temperature
    target = F.softmax(target_logits.detach().float() / t, dim=1)
    log_target = F.log_softmax(target_logits.detach().float() / t, dim=1)
    log_pred = F.log_softmax(logits.float() / t, dim=1)
    kl = (target * (log_target - log_pred)).sum(dim=1)  # B [x spatial]
    if mask is not None and kl.ndim > 1:
        m = mask.to(kl.dtype).reshape(kl.shape)
        return (kl * m).sum() / m.sum().clamp_min(1.0) * t * t
    return kl.mean() * t * t


class DRDLoss(nn.Module):
    """Deep Reprogramming Distillation objective.

    ``L = L_task(z_S, y) + alpha * sum_i L_task(z_i, y) + beta * sum_i KL(z_i || z_S)
    + lambda * sum_i (1 - CKA(r_i, s_i))``

    where ``z_S`` is the student output, ``z_i`` the hybrid outputs, ``r_i`` the reprogrammed
    teacher features and ``s_i`` the matching student stage outputs. ``alpha``/``beta`` are given
    per call (the trainer evaluates their schedules).

    Args:
        task_loss: loss on (output, target), e.g. ``CrossEntropyLoss`` or ``DiceCELoss``.
        cka_loss: the CKA term (default: linear-kernel :class:`CKALoss`).
        lambda_cka: weight of the CKA term.
        temperature: KL temperature.
        use_hybrid: include the hybrid task term (ablation switch).
        use_kl: include the KL term (ablation switch).
        use_cka: include the CKA term (ablation switch).
        cka_detach_reprogrammed: stop the CKA gradient at ``r_i``: the projectors then learn from the
            hybrid paths alone (they reprogram the teacher for the task) and CKA only moves the
            student toward them. Without it the projectors can raise CKA by imitating the student,
            which makes the term easy to satisfy without moving the student.
    """

    def __init__(
        self,
        task_loss: nn.Module,
        cka_loss: nn.Module | None = None,
        lambda_cka: float = 1.0,
        temperature: float = 1.0,
        use_hybrid: bool = True,
        use_kl: bool = True,
        use_cka: bool = True,
        cka_detach_reprogrammed: bool = False,
    ) -> None:
        super().__init__()
        self.cka_detach_reprogrammed = bool(cka_detach_reprogrammed)
        self.task_loss = task_loss
        self.cka_loss = cka_loss if cka_loss is not None else CKALoss()
        self.lambda_cka = float(lambda_cka)
        self.temperature = float(temperature)
        self.use_hybrid = use_hybrid
        self.use_kl = use_kl
        self.use_cka = use_cka

    def forward(
        self,
        student_output: torch.Tensor,
        target: torch.Tensor,
        hybrid_outputs: Sequence[torch.Tensor] = (),
        student_features: Sequence[torch.Tensor] = (),
        reprogrammed_features: Sequence[torch.Tensor] = (),
        alpha: float = 1.0,
        beta: float = 1.0,
        mask: torch.Tensor | None = None,
        stage_ids: Sequence[int] | None = None,
        hybrid_scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Compute every term.

        Args:
            student_output: ``z_S``.
            target: task target.
            hybrid_outputs: ``z_i`` for each projected stage.
            student_features: ``s_i`` matching ``reprogrammed_features``.
            reprogrammed_features: ``r_i``.
            alpha: hybrid-task weight now.
            beta: KL weight now.
            mask: optional voxel mask for the KL term.
            stage_ids: student stage index of each feature pair (names the ``cka_stage<i>`` entries).
            hybrid_scale: factor on the hybrid-task and KL sums. When ``hybrid_outputs`` holds the
                hybrid paths of k stages drawn uniformly without replacement from N, ``N / k``
                makes the expected value of both terms equal to their sum over all N stages
                (:meth:`subset_scale`; ``DRDTrainer(hybrid_stages_per_step=k)`` does this).

        Returns:
            dict with ``loss`` (the total), the weighted terms ``loss_task``, ``loss_hybrid``,
            ``loss_kl``, ``loss_cka`` (which add up to ``loss``), and ``cka_stage<i>`` (the
            CKA similarity per projected stage, detached, for monitoring).

        Raises:
            ValueError: when the feature lists differ in length.
        """
        if len(student_features) != len(reprogrammed_features):
            raise ValueError(
                f"{len(student_features)} student features vs {len(reprogrammed_features)} reprogrammed features."
            )
        task = self.task_loss(student_output, target).mean()
        zero = task.new_zeros(())
        hybrid = zero
        if self.use_hybrid and hybrid_outputs:
            hybrid = torch.stack([self.task_loss(z, target).mean() for z in hybrid_outputs]).sum()
            if hybrid_scale != 1.0:
                hybrid = hybrid * hybrid_scale
        kl = zero
        if self.use_kl and hybrid_outputs:
            kl = torch.stack(
                [softened_kl(z, student_output, self.temperature, mask) for z in hybrid_outputs]
            ).sum()
            if hybrid_scale != 1.0:
                kl = kl * hybrid_scale
        terms: dict[str, torch.Tensor] = {}
        cka_term = zero
        if reprogrammed_features:
            dissim = [
                self.cka_loss(r.detach() if self.cka_detach_reprogrammed else r, s)
                for r, s in zip(reprogrammed_features, student_features)
            ]
            ids = list(stage_ids) if stage_ids is not None else list(range(len(dissim)))
            for i, d in zip(ids, dissim):
                terms[f"cka_stage{i}"] = (1.0 - d).detach()
            if self.use_cka:
                cka_term = torch.stack(dissim).sum()
        out = {
            "loss_task": task,
            "loss_hybrid": alpha * hybrid,
            "loss_kl": beta * kl,
            "loss_cka": self.lambda_cka * cka_term,
        }
        out["loss"] = out["loss_task"] + out["loss_hybrid"] + out["loss_kl"] + out["loss_cka"]
        out.update(terms)
        return out

    @staticmethod
    def subset_scale(num_stages: int, num_drawn: int) -> float:
        """``N / k``: the factor that makes the hybrid and KL sums over k of N uniformly drawn
        stages unbiased estimates of the sums over all N (each stage is drawn with probability k / N).

        Raises:
            ValueError: unless ``1 <= num_drawn <= num_stages``.
        """
        if not 1 <= num_drawn <= num_stages:
            raise ValueError(f"need 1 <= k <= N, got k={num_drawn}, N={num_stages}.")
        return num_stages / num_drawn
