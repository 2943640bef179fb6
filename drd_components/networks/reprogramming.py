"""Reprogramming projectors: map frozen-teacher features onto the student's stage features."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["tokens_to_map", "ReprogrammingProjector", "ReprogrammingModule"]


def tokens_to_map(
    tokens: torch.Tensor,
    spatial_dims: int,
    grid_size: Sequence[int] | None = None,
    num_prefix_tokens: int | None = None,
) -> torch.Tensor:
    """Reshape a ViT token sequence ``B x N x C`` into a channels-first map ``B x C x grid``.

    Args:
        tokens: ``B x N x C`` tokens (patch tokens, possibly after class/register tokens).
        spatial_dims: 2 or 3.
        grid_size: the patch grid; when ``None`` it is inferred as the square (cube) that the
            patch tokens form after removing ``num_prefix_tokens``.
        num_prefix_tokens: leading non-patch tokens to drop (class/register tokens); when
            ``None`` the smallest count (0-8) leaving a square/cube number of tokens is used.

    Returns:
        ``B x C x grid`` tensor.

    Raises:
        ValueError: when the tokens cannot form the grid.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be B x N x C, got {tuple(tokens.shape)}.")
    n = tokens.shape[1]
    if grid_size is not None:
        grid = tuple(int(g) for g in grid_size)
        prefix = n - math.prod(grid) if num_prefix_tokens is None else num_prefix_tokens
    else:
        candidates = [num_prefix_tokens] if num_prefix_tokens is not None else range(0, 9)
        grid, prefix = None, 0
        for p in candidates:
            side = round((n - p) ** (1.0 / spatial_dims)) if n > p else 0
            if side > 0 and side**spatial_dims == n - p:
                grid, prefix = (side,) * spatial_dims, p
                break
        if grid is None:
            raise ValueError(
                f"cannot arrange {n} tokens as a {spatial_dims}D grid; pass grid_size or num_prefix_tokens."
            )
    if prefix < 0 or n - prefix != math.prod(grid):
        raise ValueError(f"{n} tokens do not fit grid {grid} with {prefix} prefix tokens.")
    patches = tokens[:, prefix:, :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class ReprogrammingProjector(nn.Module):
    """One reprogramming projector ``phi_i``: teacher map -> student stage map.

    The teacher feature is resampled to the student stage's spatial size (bilinear/trilinear;
    ViT token sequences are first arranged on their patch grid), then passed through
    ``conv1x1 -> norm -> act -> conv3x3 -> norm -> act -> conv1x1`` to the student's channels.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the teacher feature.
        out_channels: channels of the student stage output.
        out_size: spatial size of the student stage output; ``None`` keeps the teacher's size.
        hidden_channels: width of the middle layers (default: ``out_channels``).
        norm: MONAI norm spec (e.g. ``"batch"``, ``"instance"``, ``("group", {"num_groups": 8})``).
        act: MONAI activation spec.
        grid_size: patch grid of token inputs (inferred when ``None``).
        num_prefix_tokens: leading non-patch tokens of token inputs (inferred when ``None``).

    Raises:
        ValueError: for invalid dimensions.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        out_size: Sequence[int] | None = None,
        hidden_channels: int | None = None,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        grid_size: Sequence[int] | None = None,
        num_prefix_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if out_size is not None and len(out_size) != spatial_dims:
            raise ValueError(f"out_size {tuple(out_size)} does not have {spatial_dims} entries.")
        self.spatial_dims = spatial_dims
        self.out_size = tuple(int(s) for s in out_size) if out_size is not None else None
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.num_prefix_tokens = num_prefix_tokens
        hidden = hidden_channels or out_channels
        conv = Conv[Conv.CONV, spatial_dims]
        self.layers = nn.Sequential(
            conv(in_channels, hidden, kernel_size=1, bias=False),
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=hidden),
            get_act_layer(act),
            conv(hidden, hidden, kernel_size=3, padding=1, bias=False),
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=hidden),
            get_act_layer(act),
            conv(hidden, out_channels, kernel_size=1),
        )
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, feature: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """Project one teacher feature (``B x C x spatial`` or ``B x N x C`` tokens).

        Args:
            feature: the teacher feature.
            out_size: spatial size to resample to; defaults to the size given at construction
                (pass the student stage's actual size when inputs vary in size).
        """
        if feature.ndim == 3:
            feature = tokens_to_map(feature, self.spatial_dims, self.grid_size, self.num_prefix_tokens)
        if feature.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"teacher feature must be B x C x spatial ({self.spatial_dims}D) or B x N x C tokens, "
                f"got {tuple(feature.shape)}."
            )
        size = tuple(int(v) for v in out_size) if out_size is not None else self.out_size
        if size is not None and tuple(feature.shape[2:]) != size:
            feature = F.interpolate(feature, size=size, mode=self.mode, align_corners=False)
        return self.layers(feature)


class ReprogrammingModule(nn.Module):
    """The set of projectors ``{phi_i}``, one per selected student stage.

    Args:
        projectors: one projector per entry of ``student_stages``.
        student_stages: indices (0-based) of the student stages that receive a reprogrammed
            teacher feature, in increasing order.
        teacher_taps: for each projector, the index of the teacher tap it reads.

    Raises:
        ValueError: when the three sequences disagree in length or indices are not increasing.
    """

    def __init__(
        self, projectors: Sequence[nn.Module], student_stages: Sequence[int], teacher_taps: Sequence[int]
    ) -> None:
        super().__init__()
        if not (len(projectors) == len(student_stages) == len(teacher_taps)) or not projectors:
            raise ValueError(
                f"need one student stage and one teacher tap per projector, got {len(projectors)} projectors, "
                f"stages {list(student_stages)}, taps {list(teacher_taps)}."
            )
        if list(student_stages) != sorted(set(student_stages)):
            raise ValueError(f"student_stages must be increasing and unique, got {list(student_stages)}.")
        self.projectors = nn.ModuleList(projectors)
        self.student_stages = [int(s) for s in student_stages]
        self.teacher_taps = [int(t) for t in teacher_taps]

    def forward(
        self, teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Reprogrammed features ``r_i``, one per entry of :attr:`student_stages`.

        Args:
            teacher_features: the teacher's tapped features.
            student_features: the student's stage outputs for the same batch; when given, each
                ``r_i`` is resampled to the matching stage's actual spatial size.
        """
        if max(self.teacher_taps) >= len(teacher_features):
            raise ValueError(
                f"projectors read teacher taps {self.teacher_taps} but the teacher returned {len(teacher_features)}."
            )
        sizes = (
            [tuple(student_features[s].shape[2:]) for s in self.student_stages]
            if student_features is not None
            else [None] * len(self.student_stages)
        )
        return [
            proj(teacher_features[t], size) for proj, t, size in zip(self.projectors, self.teacher_taps, sizes)
        ]

    @staticmethod
    def select_stages(num_stages: int, stages: str | Sequence[int] | None) -> list[int]:
        """Resolve a stage selection: ``None``/``"all"`` -> every stage, ``"last"`` -> the last one
        (the RD preset), a sequence -> those indices (negative values count from the end)."""
        if stages is None or stages == "all":
            return list(range(num_stages))
        if stages == "last":
            return [num_stages - 1]
        if isinstance(stages, str):
            raise ValueError(f"stages must be 'all', 'last' or a list of indices, got '{stages}'.")
        resolved = sorted({s % num_stages for s in stages})
        for s in stages:
            if not -num_stages <= s < num_stages:
                raise ValueError(f"stage index {s} out of range for a student with {num_stages} stages.")
        return resolved

    @staticmethod
    def match_taps(num_taps: int, num_stages: int, stages: Sequence[int]) -> list[int]:
        """Teacher tap for each selected student stage: taps spread evenly over the student's depth
        (with equal counts, stage ``i`` reads tap ``i``)."""
        if num_taps == num_stages:
            return list(stages)
        if num_stages == 1:
            return [num_taps - 1]
        return [round(s * (num_taps - 1) / (num_stages - 1)) for s in stages]

    @classmethod
    def from_models(
        cls,
        teacher: nn.Module,
        student: nn.Module,
        input_shape: Sequence[int],
        stages: str | Sequence[int] | None = "all",
        teacher_taps: Sequence[int] | None = None,
        **projector_kwargs,
    ) -> ReprogrammingModule:
        """Build projectors from one dry run of teacher and student, so no channel count or size
        has to be written in a config.

        Args:
            teacher: a :class:`~drd_components.teachers.FrozenTeacher` (``stage_features``).
            student: a :class:`~drd_components.networks.students.StagedNetwork`.
            input_shape: ``B x C x spatial`` of the bundle's training input (B >= 2 for BatchNorm).
            stages: student stages that get a projector: ``"all"`` (DRD), ``"last"`` (RD) or indices.
            teacher_taps: teacher tap per selected stage (default: :meth:`match_taps`).
            projector_kwargs: passed to every :class:`ReprogrammingProjector`.

        Returns:
            the module, on the student's device.

        Raises:
            ValueError: teacher and student differ in ``spatial_dims``, ``input_shape`` has the wrong
                number of axes, or a dry run fails (the message names the model and the shape).
        """
        spatial_dims = int(student.spatial_dims)
        teacher_dims = getattr(teacher, "spatial_dims", None)
        if teacher_dims is not None and int(teacher_dims) != spatial_dims:
            raise ValueError(
                f"the teacher {type(teacher).__name__} is {teacher_dims}D but the student {type(student).__name__} "
                f"is {spatial_dims}D: DRD needs a teacher and a student of the same spatial_dims "
                "(check the bundle's teacher_def and network_def)."
            )
        if len(input_shape) != spatial_dims + 2:
            raise ValueError(
                f"input_shape {list(input_shape)} must be B x C x spatial with {spatial_dims} spatial sizes "
                f"(the student is {spatial_dims}D); check the training image/patch size in the config."
            )
        param = next(iter(student.parameters()))
        x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype)
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                s_feats = student.forward_stages(x)
        except Exception as e:
            raise ValueError(
                f"dry run of the student {type(student).__name__} on input shape {list(input_shape)} failed: {e}"
            ) from e
        finally:
            student.train(was_training)
        try:
            t_feats = teacher.stage_features(x)
        except Exception as e:
            raise ValueError(
                f"dry run of the teacher {type(teacher).__name__} on input shape {list(input_shape)} failed: {e}"
            ) from e
        chosen = cls.select_stages(len(s_feats), stages)
        taps = list(teacher_taps) if teacher_taps is not None else cls.match_taps(len(t_feats), len(s_feats), chosen)
        if len(taps) != len(chosen):
            raise ValueError(f"teacher_taps {taps} must have one entry per selected stage {chosen}.")
        projectors = []
        for s, t in zip(chosen, taps):
            tf, sf = t_feats[t], s_feats[s]
            in_ch = tf.shape[2] if tf.ndim == 3 else tf.shape[1]
            projectors.append(
                ReprogrammingProjector(
                    spatial_dims, in_ch, sf.shape[1], out_size=tuple(sf.shape[2:]), **projector_kwargs
                )
            )
        return cls(projectors, chosen, taps).to(param.device)
