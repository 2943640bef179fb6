"""Medical SAM Adapter (MSA / Med-SA, Wu et al., arXiv 2304.12620) teacher.

MSA keeps SAM ViT-B frozen and trains three bottleneck adapters per block. The released weights
(the *Medical-Adapter-Zoo*, ``KidsWithTokens/Medical-Adapter-Zoo`` on Hugging Face) hold only the
144 adapter tensors; the trunk comes from Meta's ``sam_vit_b_01ec64.pth``. The adapted encoder is
:class:`~drd_components.teachers.sam_vit.SamViTEncoder` with ``adapters=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import init_context, make_view, materialize_for_load, strip_module_prefix
from drd_components.teachers.preprocessing import TeacherPreprocessing, check_spatial_size
from drd_components.teachers.sam_vit import SAM_GLOBAL_ATTN_INDEXES, SamViTEncoder

__all__ = ["MedicalSAMAdapterTeacher", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD"]

#: SAM's ImageNet statistics on the 0-255 scale (``Sam.pixel_mean`` / ``pixel_std``).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def _is_adapter_key(key: str) -> bool:
    return "_Adapter." in key


class MedicalSAMAdapterTeacher(FrozenTeacher):
    """SAM ViT-B with the Medical SAM Adapter's adapters, loaded from a zoo file plus SAM's weights.

    Two official files are needed:

    - ``sam_checkpoint``: Meta's ``sam_vit_b_01ec64.pth`` (flat ``Sam`` state dict, same layout as
      ``medsam_vit_b.pth``). Its 177 ``image_encoder.*`` tensors are required (without the 24
      ``rel_pos_*`` tables when ``rel_pos="zero"``, which are then dropped on purpose); the prompt
      encoder and mask decoder are dropped on purpose.
    - ``checkpoint``: an adapter file of the zoo (e.g. ``Melanoma_Photo_SAM_1024.pth``), a flat dict
      (or ``{"state_dict": ...}``) of exactly the 144 tensors
      ``image_encoder.blocks.{0..11}.{MLP_Adapter,Space_Adapter,Depth_Adapter}.D_fc{1,2}.{weight,bias}``
      (the ``image_encoder.`` prefix may be absent). Nothing else may be in it.

    Block structure (MSA's ``AdapterBlock``): windows are cut before ``norm1``; the attention output
    passes ``Space_Adapter`` (residual) before the shortcut; the MLP branch is
    ``x + mlp(n) + 0.5 * MLP_Adapter(n)``. ``Depth_Adapter`` only acts on MSA's 3D (``-thd``)
    inputs and is loaded but unused by this 2D teacher.

    Tapped layers, channels-first, for the default 1024x1024 input (``H/16 x W/16`` in general):

    ======== ============================== ===================
    tap      module                         shape
    ======== ============================== ===================
    block2   ``image_encoder.blocks.2``     ``B x 768 x 64 x 64``
    block5   ``image_encoder.blocks.5``     ``B x 768 x 64 x 64``
    block8   ``image_encoder.blocks.8``     ``B x 768 x 64 x 64``
    block11  ``image_encoder.blocks.11``    ``B x 768 x 64 x 64``
    neck     ``image_encoder.neck``         ``B x 256 x 64 x 64``
    ======== ============================== ===================

    Preprocessing (zoo-era MSA, early 2024): grey -> 3 channels, bilinear resize to
    ``spatial_size``, intensities in ``[0, 1]`` without mean/std (``input_scaling="unit"``). Since
    2025-04 upstream multiplies by 255 and applies SAM's ImageNet mean/std instead
    (``input_scaling="sam"``).

    Args:
        checkpoint: zoo adapter file; ``None`` leaves the adapters randomly initialised (warning).
        sha256: expected SHA-256 of ``checkpoint``.
        spatial_size: model input side(s), multiples of 16; use the zoo file's suffix
            (``_1024``, ``_256``, ``_128``). The position embedding is resized bicubically to the
            token grid, exactly as MSA does.
        sam_checkpoint: SAM ViT-B base weights (``sam_vit_b_01ec64.pth``); ``None`` leaves the trunk
            random (warning). Required when ``checkpoint`` is given.
        sam_sha256: expected SHA-256 of ``sam_checkpoint``.
        rel_pos: ``"zero"`` (default) runs without relative position bias, as MSA's code since
            2024-01-29 does (its tables are renamed ``rel_h``/``rel_w`` and never loaded, so they stay
            at their zero init); ``"sam"`` loads SAM's ``rel_pos_*`` tables (MSA before that date).
        input_scaling: ``"unit"`` (``[0, 1]``, no mean/std) or ``"sam"`` (SAM mean/std).
        window: optional ``(low, high)`` CT window in HU applied to the raw input.

    Raises:
        CheckpointError: a file is missing, fails its checksum, holds non-tensor objects, or its
            keys/shapes differ from the official layout.
        ValueError: invalid arguments, or ``checkpoint`` without ``sam_checkpoint``.
    """

    spatial_dims = 2
    tap_names = ("block2", "block5", "block8", "block11", "neck")
    tap_blocks: tuple[int, ...] = SAM_GLOBAL_ATTN_INDEXES

    def __init__(
        self,
        checkpoint: str | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = 1024,
        sam_checkpoint: str | None = None,
        sam_sha256: str | None = None,
        rel_pos: str = "zero",
        input_scaling: str = "unit",
        window: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if rel_pos not in ("zero", "sam"):
            raise ValueError(f"rel_pos must be 'zero' or 'sam', got {rel_pos!r}.")
        if input_scaling not in ("unit", "sam"):
            raise ValueError(f"input_scaling must be 'unit' or 'sam', got {input_scaling!r}.")
        if checkpoint is not None and sam_checkpoint is None:
            raise ValueError("MSA adapter weights need the SAM ViT-B base weights: pass sam_checkpoint.")
        size = check_spatial_size(spatial_size, 16, 2, "MSA")
        self.rel_pos = rel_pos
        if input_scaling == "sam":
            mean, std = [m / 255.0 for m in SAM_PIXEL_MEAN], [s / 255.0 for s in SAM_PIXEL_STD]
        else:
            mean, std = 0.0, 1.0
        self.preprocessing = TeacherPreprocessing(2, 3, size, mean=mean, std=std, window=window, mode="bilinear")

        full_load = checkpoint is not None and sam_checkpoint is not None
        with init_context(full_load):
            # zero relative-position tables add nothing to the logits: build none.
            self.image_encoder = SamViTEncoder(use_rel_pos=(rel_pos == "sam"), adapters=True)
        if full_load:
            materialize_for_load(self.image_encoder)
        if sam_checkpoint is not None:
            self.load_official_checkpoint(
                make_view(
                    self.image_encoder,
                    "image_encoder.",
                    keep=lambda k: not _is_adapter_key(k),
                    label="SAM ViT-B image_encoder",
                ),
                sam_checkpoint,
                sha256=sam_sha256,
                key_map=self._base_key_map,
            )
        else:
            self.warn_random_weights("the SAM trunk", argument="sam_checkpoint")
        if checkpoint is not None:
            self.load_official_checkpoint(
                make_view(self.image_encoder, "image_encoder.", keep=_is_adapter_key, label="MSA adapters"),
                checkpoint,
                sha256=sha256,
                key_map=self._adapter_key_map,
            )
        else:
            self.warn_random_weights("the adapters", argument="adapter checkpoint")
        self.freeze()

    def _base_key_map(self, key: str) -> str | None:
        key = strip_module_prefix(key)
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            return None  # not part of the image encoder
        if self.rel_pos == "zero" and key.startswith("image_encoder.") and ".attn.rel_pos_" in key:
            return None  # MSA never loads SAM's rel-pos tables (zero bias)
        return key

    @staticmethod
    def _adapter_key_map(key: str) -> str | None:
        key = strip_module_prefix(key)
        return "image_encoder." + key if key.startswith("blocks.") else key

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Block 2/5/8/11 token maps and the neck embedding for a preprocessed ``B x 3 x H x W`` input."""
        return self.image_encoder.forward_taps(x, self.tap_blocks)
