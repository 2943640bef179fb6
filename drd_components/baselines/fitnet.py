"""FitNet / "Hint" feature distillation: 1x1 adapters regress teacher features from student stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from drd_components.baselines.engine import TeacherGuidedTrainer
from drd_components.networks.reprogramming import ReprogrammingModule, tokens_to_map

__all__ = ["HintAdapters", "FitNetLoss", "FitNetTrainer"]


class HintAdapters(nn.Module):
    """One 1x1 convolution per selected student stage, mapping ``s_i`` to the channels of its teacher tap.

    Args:
        spatial_dims: 2 or 3.
        student_channels: channels of each selected student stage.
        teacher_channels: channels of the matching teacher taps.
        student_stages: selected student stage indices.
        teacher_taps: teacher tap read by each selected stage.

    Raises:
        ValueError: when the sequences disagree in length.
    """

    def __init__(
        self,
        spatial_dims: int,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        student_stages: Sequence[int],
        teacher_taps: Sequence[int],
    ) -> None:
        super().__init__()
        if not (len(student_channels) == len(teacher_channels) == len(student_stages) == len(teacher_taps)):
            raise ValueError("need one student channel count, teacher channel count, stage and tap per adapter.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.adapters = nn.ModuleList(conv(int(s), int(t), kernel_size=1) for s, t in zip(student_channels, teacher_channels))
        self.student_stages = [int(s) for s in student_stages]
        self.teacher_taps = [int(t) for t in teacher_taps]

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs ``(adapter(s_i), f_i^T resampled to s_i's size)`` for every selected stage."""
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        pairs = []
        for adapter, s, t in zip(self.adapters, self.student_stages, self.teacher_taps):
            sf = student_features[s]
            tf = teacher_features[t]
            if tf.ndim == 3:
                tf = tokens_to_map(tf, self.spatial_dims)
            if tuple(tf.shape[2:]) != tuple(sf.shape[2:]):
                tf = F.interpolate(tf.float(), size=tuple(sf.shape[2:]), mode=mode, align_corners=False)
            pairs.append((adapter(sf), tf))
        return pairs

    @classmethod
    def from_models(
        cls,
        teacher: nn.Module,
        student: nn.Module,
        input_shape: Sequence[int],
        stages: str | Sequence[int] | None = "all",
        teacher_taps: Sequence[int] | None = None,
    ) -> HintAdapters:
        """Size the adapters from one dry run (same stage/tap rules as :class:`ReprogrammingModule`)."""
        param = next(iter(student.parameters()))
        x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            s_feats = student.forward_stages(x)
        student.train(was_training)
        t_feats = teacher.stage_features(x)
        chosen = ReprogrammingModule.select_stages(len(s_feats), stages)
        taps = (
            list(teacher_taps)
            if teacher_taps is not None
            else ReprogrammingModule.match_taps(len(t_feats), len(s_feats), chosen)
        )
        if len(taps) != len(chosen):
            raise ValueError(f"teacher_taps {taps} must have one entry per selected stage {chosen}.")
        t_ch = [t_feats[t].shape[2] if t_feats[t].ndim == 3 else t_feats[t].shape[1] for t in taps]
        s_ch = [s_feats[s].shape[1] for s in chosen]
        return cls(student.spatial_dims, s_ch, t_ch, chosen, taps).to(param.device)


class FitNetLoss(nn.Module):
    """``L_task(z_S, y) + hint_weight * sum_i MSE(adapter_i(s_i), f_i^T)``.

    Args:
        task_loss: loss on (student output, target).
        hint_weight: weight of the hint term.
    """

    def __init__(self, task_loss: nn.Module, hint_weight: float = 1.0) -> None:
        super().__init__()
        self.task_loss = task_loss
        self.hint_weight = float(hint_weight)

    def forward(
        self, student_output: torch.Tensor, target: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Return ``loss`` and the weighted terms ``loss_task`` and ``loss_hint``."""
        task = self.task_loss(student_output, target).mean()
        hint = torch.stack([F.mse_loss(a.float(), t.detach().float()) for a, t in pairs]).sum() if pairs else task * 0
        out = {"loss_task": task, "loss_hint": self.hint_weight * hint}
        out["loss"] = out["loss_task"] + out["loss_hint"]
        return out


class FitNetTrainer(TeacherGuidedTrainer):
    """Trains the student and the :class:`HintAdapters` with :class:`FitNetLoss`.

    Args:
        adapters: the hint adapters (their parameters must be in the optimizer).
        feature_cache: optional :class:`~drd_components.engines.feature_cache.TeacherFeatureCache`
            serving the teacher's tapped features.
        args, kwargs: see :class:`~drd_components.baselines.engine.TeacherGuidedTrainer`; ``teacher``
            is a :class:`~drd_components.teachers.FrozenTeacher` and ``network`` a staged student.

    Raises:
        TypeError: when the student is not staged or the loss is not a :class:`FitNetLoss`.
    """

    def __init__(self, *args: Any, adapters: HintAdapters, feature_cache: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        core = getattr(self.network, "module", self.network)
        if not callable(getattr(core, "forward_stages", None)):
            raise TypeError("FitNetTrainer needs a staged student (forward_stages/forward_head).")
        if not isinstance(self.loss_function, FitNetLoss):
            raise TypeError(f"FitNetTrainer needs a FitNetLoss, got {type(self.loss_function).__name__}.")
        self.adapters = adapters
        self.feature_cache = feature_cache

    def compute_teacher_features(self, inputs: torch.Tensor, batchdata: Any) -> list[torch.Tensor]:
        """Teacher features from the cache when one is set, else from a teacher forward."""
        if self.feature_cache is not None:
            return self.feature_cache(inputs, batchdata)
        return self.teacher.stage_features(self.teacher_inputs(inputs, batchdata))

    def compute_loss(self, inputs, targets, batchdata):
        self.adapters.train()
        t_feats = self.compute_teacher_features(inputs, batchdata)
        student = getattr(self.network, "module", self.network)
        s_feats = student.forward_stages(inputs)
        pred = student.forward_head(s_feats)
        return pred, self.loss_function(pred, targets, self.adapters(s_feats, t_feats))
