"""SAT teacher (Zhao et al., "Large-vocabulary segmentation for medical images with text prompts").

SAT's visual backbone is a 3D ``PlainConvUNet`` of ``dynamic_network_architectures``. Only its
encoder is used as a teacher. It is re-implemented here with the exact key layout of the released
``Pro/SAT_Pro.pth`` and ``Nano/nano.pth`` files (``module.backbone.encoder.*``), including the
duplicate ``all_modules`` names that ``ConvDropoutNormReLU`` registers for its conv and norm.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import (
    CheckpointError,
    extract_state_dict,
    init_context,
    load_checkpoint_file,
    load_state_dict_strict,
    make_view,
    materialize_for_load,
    numpy_scalar_safe_globals,
)
from drd_components.teachers.preprocessing import (
    InputChannelSelect,
    SampleIntensityNorm,
    TeacherPreprocessing,
    check_spatial_size,
)

__all__ = ["SAT_VARIANTS", "SATConvBlock", "SATEncoder", "SATTeacher"]

logger = logging.getLogger(__name__)

#: encoder configuration of the released SAT variants (``model/maskformer.py``: ``UNET``, ``UNET-L``).
SAT_VARIANTS: dict[str, dict] = {
    "nano": {"features": (64, 64, 128, 256, 512, 768), "convs_per_stage": 2},
    "pro": {"features": (128, 128, 256, 512, 1024, 1536), "convs_per_stage": 3},
}
SAT_STRIDES = (1, 2, 2, 2, 2, 2)
SAT_CT_WINDOW = (-500.0, 1000.0)
SAT_PREFIX = "module.backbone.encoder."


class SATConvBlock(nn.Module):
    """Conv3d(3x3x3, bias) -> InstanceNorm3d(affine, eps 1e-5) -> LeakyReLU(0.01).

    Like ``ConvDropoutNormReLU``, the conv and norm are registered twice: as ``conv``/``norm`` and
    inside ``all_modules`` (``all_modules.0``/``all_modules.1``), so the state dict lists both names
    for the same tensors, as the released files do.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True)
        self.nonlin = nn.LeakyReLU(0.01)
        self.all_modules = nn.Sequential(self.conv, self.norm, self.nonlin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class _StackedConvs(nn.Module):
    def __init__(self, n: int, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            SATConvBlock(in_channels, out_channels, stride),
            *[SATConvBlock(out_channels, out_channels, 1) for _ in range(n - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class SATEncoder(nn.Module):
    """``PlainConvEncoder`` (``pool="conv"``): 6 stages, the first conv of each strided.

    Args:
        in_channels: input channels (3: SAT repeats grey volumes).
        features: output channels per stage.
        convs_per_stage: convolutions per stage.
        strides: stride of each stage's first conv.
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = SAT_VARIANTS["nano"]["features"],
        convs_per_stage: int = 2,
        strides: Sequence[int] = SAT_STRIDES,
    ) -> None:
        super().__init__()
        stages = []
        for out_channels, stride in zip(features, strides):
            stages.append(nn.Sequential(_StackedConvs(convs_per_stage, in_channels, out_channels, stride)))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages ``0..last`` (all by default)."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if last is not None and i >= last:
                break
        return outs


def _alias_partner(key: str) -> str | None:
    if ".all_modules.0." in key:
        return key.replace(".all_modules.0.", ".conv.")
    if ".all_modules.1." in key:
        return key.replace(".all_modules.1.", ".norm.")
    return None


def check_aliases(state: Mapping[str, torch.Tensor], prefix: str = SAT_PREFIX, source: str = "checkpoint") -> None:
    """Check that each ``all_modules.{0,1}`` tensor equals its ``conv``/``norm`` twin.

    In a genuine file both names share one storage. A file whose twins differ is ambiguous (which
    one does the network use?) and is refused.

    Raises:
        CheckpointError: listing the twins that differ.
    """
    bad = []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        partner = _alias_partner(key)
        if partner is None or partner not in state:
            continue  # a missing twin is reported by the strict key check
        other = state[partner]
        if value.shape != other.shape:
            continue  # reported as a shape mismatch
        same_storage = value.data_ptr() == other.data_ptr() and value.stride() == other.stride()
        if not same_storage and not torch.equal(value, other):
            bad.append(f"{key} != {partner}")
    if bad:
        raise CheckpointError(
            f"{source}: aliased SAT tensors differ ({len(bad)}): {bad[:10]}. "
            "The file is corrupt or not a SAT checkpoint."
        )


class SATTeacher(FrozenTeacher):
    """SAT's 3D U-Net encoder (SAT-Nano or SAT-Pro), from the released SAT model file.

    The file (``Nano/nano.pth``, ``Pro/SAT_Pro.pth``, or the 49-dataset
    ``Others/UNET-Ours/SAT_Nano_UNET.pth``), a dict ``{"step", "model_state_dict",
    "optimizer_state_dict"}``, is read with ``weights_only=True`` and an allow-list of
    exactly the numpy scalar globals of its optimizer's learning rates
    (:func:`~drd_components.teachers.checkpoint.numpy_scalar_safe_globals`). From
    ``model_state_dict`` (every key ``module.``-prefixed, DDP) all ``module.backbone.encoder.*`` keys
    are required with exact names and shapes (Nano 96 names = 48 tensors, Pro 144 names = 72
    tensors; each conv/norm appears under two aliased names, which must agree). The pixel decoder
    ``module.backbone.decoder.*`` and every key outside ``module.backbone.`` (query projection,
    transformer decoder, mask embeddings, deep-supervision heads, or keys of other code versions) are
    dropped on purpose; any other ``module.backbone.*`` key is an error. A file saved without the
    DDP wrapper (no ``module.`` prefix) is accepted too. The text encoder is a separate file and
    not needed.

    Architecture: 6 stages of ``convs_per_stage`` x [Conv3d 3x3x3 (bias) -> InstanceNorm3d (affine)
    -> LeakyReLU(0.01)], strides 1, 2, 2, 2, 2, 2 on the first conv of each stage; widths
    64/64/128/256/512/768 with 2 convs (Nano) or 128/128/256/512/1024/1536 with 3 convs (Pro).

    Tapped layers (``tap_names``, default E2-E5; ``taps`` selects others), ``B x C x H x W x D`` for
    the default ``288 x 288 x 96`` input (stride ``2**i`` for stage ``i``; sizes must be multiples of
    ``2**i`` for the deepest tap, 32 for E5, and the deepest tapped map needs more than one voxel
    because instance norm cannot normalise a single voxel, e.g. ``64 x 32 x 32`` is the smallest
    input for E5):

    ==== ============================= =========== =========== ================
    tap  module                        Nano C      Pro C       grid
    ==== ============================= =========== =========== ================
    E0   ``backbone.encoder.stages.0`` 64          128         288 x 288 x 96
    E1   ``backbone.encoder.stages.1`` 64          128         144 x 144 x 48
    E2   ``backbone.encoder.stages.2`` 128         256         72 x 72 x 24
    E3   ``backbone.encoder.stages.3`` 256         512         36 x 36 x 12
    E4   ``backbone.encoder.stages.4`` 512         1024        18 x 18 x 6
    E5   ``backbone.encoder.stages.5`` 768         1536        9 x 9 x 3
    ==== ============================= =========== =========== ================

    Preprocessing (``data/inference_dataset.py``): CT is clipped to ``[-500, 1000]`` HU, MR/PET to
    the 0.5/99.5 percentiles, then z-scored with the sample's own mean/std (SAT uses the whole
    resampled volume's statistics; here those of the given patch); grey volumes are repeated to 3
    channels and resized to ``spatial_size``. SAT's spacing is 1 x 1 x 3 mm and its sliding-window
    patch 288 x 288 x 96 (H, W, D after RAS orientation, slice axis last).

    Args:
        checkpoint: the SAT model file; ``None`` builds random weights (with a warning).
        sha256: expected SHA-256 of the file.
        spatial_size: model input ``(H, W, D)`` in the incoming tensor's axis order, multiples of
            ``2**max(taps)`` (32 for the default taps); ``None`` keeps the incoming size.
        variant: ``"nano"`` or ``"pro"``.
        modality: ``"ct"``, ``"mr"``, ``"pet"`` (intensity rule as above) or ``"none"`` (input
            already normalised).
        taps: encoder stages to return (0-5).
        input_channel: for multi-channel inputs, the channel the teacher sees (SAT is prompted with one
            modality; e.g. 0 = T2 of a T2/ADC prostate volume); ``None`` keeps every channel, which
            only works for one channel or three.

    Raises:
        CheckpointError: the file is missing, fails its checksum, holds objects outside the
            allow-list, or its encoder keys/shapes differ from the variant's official layout.
        ValueError: invalid arguments.
    """

    spatial_dims = 3
    tap_names: tuple[str, ...] = ("E2", "E3", "E4", "E5")

    def __init__(
        self,
        checkpoint: str | None = None,
        sha256: str | None = None,
        spatial_size: Sequence[int] | int | None = (288, 288, 96),
        variant: str = "nano",
        modality: str = "ct",
        taps: Sequence[int] = (2, 3, 4, 5),
        input_channel: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in SAT_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(SAT_VARIANTS)}, got {variant!r}.")
        if modality not in ("ct", "mr", "pet", "none"):
            raise ValueError(f"modality must be 'ct', 'mr', 'pet' or 'none', got {modality!r}.")
        taps = tuple(int(t) for t in taps)
        if not taps or any(t not in range(6) for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"taps must be increasing stage indices in 0..5, got {taps}.")
        self.variant = variant
        self.taps = taps
        self.tap_names = tuple(f"E{t}" for t in taps)
        size = check_spatial_size(spatial_size, 2 ** taps[-1], 3, "SAT") if spatial_size is not None else None
        self.input_channel = input_channel
        steps: list[nn.Module] = [InputChannelSelect(input_channel)]
        if modality in ("mr", "pet"):
            steps.append(SampleIntensityNorm("none", percentiles=(0.5, 99.5)))
        steps.append(
            TeacherPreprocessing(
                3, 3, size, mean=0.0, std=1.0, window=SAT_CT_WINDOW if modality == "ct" else None, mode="trilinear"
            )
        )
        if modality != "none":
            steps.append(SampleIntensityNorm("zscore"))
        self.preprocessing = nn.Sequential(*steps)

        cfg = SAT_VARIANTS[variant]
        with init_context(checkpoint is not None):
            self.encoder = SATEncoder(3, cfg["features"], cfg["convs_per_stage"])
        if checkpoint is not None:
            materialize_for_load(self.encoder)
            self._load(checkpoint, sha256)
        else:
            self.warn_random_weights(f"the {variant} encoder")
        self.freeze()

    def _load(self, path: str, sha256: str | None) -> None:
        obj = load_checkpoint_file(path, sha256=sha256, allowed_globals=numpy_scalar_safe_globals())
        state = extract_state_dict(obj, ("model_state_dict",), path=str(path))
        state = {self._normalise(k): v for k, v in state.items()}
        check_aliases(state, source=f"'{path}'")
        view = make_view(self.encoder, SAT_PREFIX, label=f"SAT-{self.variant.capitalize()} encoder")
        load_state_dict_strict(view, state, key_map=self._key_map, source=f"'{path}'")
        logger.info("SATTeacher: loaded the %s encoder from %s", self.variant, path)

    @staticmethod
    def _normalise(key: str) -> str:
        return key if key.startswith("module.") else "module." + key

    @staticmethod
    def _key_map(key: str) -> str | None:
        if key.startswith(SAT_PREFIX):
            return key
        if key.startswith("module.backbone.decoder."):
            return None  # pixel decoder: not part of the teacher
        if key.startswith("module.backbone."):
            return key  # unknown backbone part: reported as unexpected
        return None  # text-prompt head (and extra keys of other code versions): not part of the teacher

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs ``taps`` for a preprocessed ``B x 3 x H x W x D`` input."""
        feats = self.encoder(x, last=self.taps[-1])
        return [feats[t] for t in self.taps]
