"""A teacher with a task head: linear probe, full fine-tuning or LoRA, and the KD teacher.

Classification: the tapped features are global-average pooled (ViT tokens: mean over tokens),
concatenated and fed to one linear layer. Segmentation: a light convolutional decoder (each tap
-> 1x1 conv to ``hidden_channels``, resampled to the finest tap, summed, 3x3 conv + norm + act,
1x1 conv to the classes, resampled to the input size) gives per-voxel logits.

Modes:
    ``"probe"``: the teacher stays frozen (features under ``torch.inference_mode``), only the head
        trains (linear probe for classification, a frozen-encoder decoder for segmentation).
    ``"finetune"``: every teacher parameter trains with the head. The teacher's normalisation
        layers stay in eval mode (a :class:`FrozenTeacher` never leaves it): BatchNorm statistics
        are those of pre-training (frozen-BN fine-tuning).
    ``"lora"``: LoRA factors on the teacher's Linear/Conv layers and the head train; the base
        weights do not change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from drd_components.baselines.lora import apply_lora
from drd_components.networks.reprogramming import tokens_to_map
from drd_components.teachers.checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_strict

__all__ = ["ClassificationProbeHead", "SegmentationProbeHead", "TeacherWithHead", "TEACHER_MODES"]

TEACHER_MODES = ("probe", "finetune", "lora")


def _as_map(feature: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    return tokens_to_map(feature, spatial_dims) if feature.ndim == 3 else feature


class ClassificationProbeHead(nn.Module):
    """Pool each tap, concatenate, one linear layer.

    Args:
        in_channels: channels of each used tap.
        num_classes: logits.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(int(sum(in_channels)), num_classes)

    def forward(self, features: Sequence[torch.Tensor], out_size: Sequence[int] | None = None) -> torch.Tensor:
        pooled = [f.mean(dim=1) if f.ndim == 3 else f.flatten(2).mean(dim=2) for f in features]
        return self.fc(torch.cat(pooled, dim=1))


class SegmentationProbeHead(nn.Module):
    """A light convolutional decoder over several taps (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each used tap.
        num_classes: output channels.
        hidden_channels: decoder width.
        norm: MONAI norm spec.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        num_classes: int,
        hidden_channels: int = 64,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.lateral = nn.ModuleList(conv(int(c), hidden_channels, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            get_act_layer("relu"),
            conv(hidden_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=hidden_channels),
            get_act_layer("relu"),
            conv(hidden_channels, num_classes, kernel_size=1),
        )
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, features: Sequence[torch.Tensor], out_size: Sequence[int] | None = None) -> torch.Tensor:
        maps = [_as_map(f, self.spatial_dims) for f in features]
        target = max((tuple(m.shape[2:]) for m in maps), key=lambda s: torch.tensor(s).prod().item())
        x = None
        for lat, m in zip(self.lateral, maps):
            y = lat(m)
            if tuple(y.shape[2:]) != target:
                y = F.interpolate(y, size=target, mode=self.mode, align_corners=False)
            x = y if x is None else x + y
        x = self.fuse(x)
        if out_size is not None and tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode=self.mode, align_corners=False)
        return x


class TeacherWithHead(nn.Module):
    """A teacher (:class:`~drd_components.teachers.FrozenTeacher`) plus a task head.

    ``forward(x)`` returns task logits (``B x classes`` or ``B x classes x spatial``), so a
    stock :class:`monai.engines.SupervisedTrainer` trains it and a stock evaluator validates it.

    Args:
        teacher: the teacher (changed in place for ``"finetune"``/``"lora"``).
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: output classes.
        input_shape: ``B x C x spatial`` of the bundle's input, for one dry run that sizes the head.
        mode: one of :data:`TEACHER_MODES`.
        taps: teacher taps the head reads (default: the last one for classification, all for
            segmentation).
        hidden_channels: width of the segmentation decoder.
        lora_rank: LoRA rank (``"lora"`` mode).
        lora_alpha: LoRA alpha (``"lora"`` mode).
        lora_include: name substrings of the teacher layers that get LoRA (default: all Linear/Conv).
        head_checkpoint: optional state-dict file of the head (e.g. a saved linear probe).
        checkpoint: optional state-dict file of the whole module (e.g. a saved LoRA model).

    Raises:
        ValueError: for an unknown task or mode, or taps out of range.
    """

    def __init__(
        self,
        teacher: nn.Module,
        task: str,
        num_classes: int,
        input_shape: Sequence[int],
        mode: str = "probe",
        taps: Sequence[int] | None = None,
        hidden_channels: int = 64,
        lora_rank: int = 4,
        lora_alpha: float = 8.0,
        lora_include: Sequence[str] = (),
        head_checkpoint: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got '{task}'.")
        if mode not in TEACHER_MODES:
            raise ValueError(f"mode must be one of {TEACHER_MODES}, got '{mode}'.")
        self.teacher = teacher
        self.task = task
        self.mode = mode
        device = next(iter(teacher.parameters())).device
        shapes = [tuple(f.shape) for f in teacher.stage_features(torch.zeros(*input_shape, device=device))]
        if taps is None:
            taps = [len(shapes) - 1] if task == "classification" else list(range(len(shapes)))
        self.taps = [int(t) % len(shapes) for t in taps]
        if any(not -len(shapes) <= int(t) < len(shapes) for t in taps):
            raise ValueError(f"taps {list(taps)} out of range for a teacher with {len(shapes)} taps.")
        channels = [shapes[t][2] if len(shapes[t]) == 3 else shapes[t][1] for t in self.taps]
        if task == "classification":
            self.head: nn.Module = ClassificationProbeHead(channels, num_classes)
        else:
            self.head = SegmentationProbeHead(len(input_shape) - 2, channels, num_classes, hidden_channels)
        self.head.to(device)
        if mode == "probe":
            teacher.requires_grad_(False)
        elif mode == "finetune":
            teacher.requires_grad_(True)
        else:
            apply_lora(teacher, lora_rank, lora_alpha, include=lora_include)
        if head_checkpoint:
            self._load(self.head, head_checkpoint)
        if checkpoint:
            self._load(self, checkpoint)

    @staticmethod
    def _load(module: nn.Module, path: str | os.PathLike) -> None:
        state = extract_state_dict(load_checkpoint_file(path), ("state_dict", "model"), path=str(path))
        load_state_dict_strict(module, state, source=f"'{path}'")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The used taps for ``x``; with gradients into the teacher unless in ``"probe"`` mode."""
        if self.mode == "probe":
            feats = self.teacher.stage_features(x)
        else:
            feats = self.teacher.forward_features(self.teacher.preprocessing(x))
        return [feats[t] for t in self.taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), out_size=x.shape[2:])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train in this mode (head; plus teacher or LoRA factors)."""
        return [p for p in self.parameters() if p.requires_grad]
