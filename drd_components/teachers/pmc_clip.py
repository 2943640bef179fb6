"""PMC-CLIP teacher: the CLIP-style ``ModifiedResNet`` (RN50) image encoder of PMC-CLIP.

PMC-CLIP (Lin et al., MICCAI 2023) trains a CLIP-like model on PubMed Central figure/caption
pairs. Its image encoder is OpenAI CLIP's "RN50" variant of ResNet-50 (three-convolution stem,
anti-aliased average-pool downsampling, attention pooling). The authors released the encoder on
its own as ``image_encoder(resnet50).pth`` in the Hugging Face *dataset* repo ``axiong/pmc_oa``:
a flat ``{name: tensor}`` state dict without prefix, 339 tensors, 37.79 M parameters.

The modules below are a small re-implementation with the same attribute names, so the released
file loads with strict key and shape matching and no renaming.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import check_checkpoint_args, numpy_scalar_safe_globals
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = [
    "PMCCLIPTeacher",
    "PMCCLIPModifiedResNet",
    "CLIP_MEAN",
    "CLIP_STD",
    "PMC_CLIP_URL",
    "pmc_clip_key_map",
]

#: OpenAI CLIP normalisation statistics (RGB, on the [0, 1] scale), used by PMC-CLIP's transform.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Where the extracted image encoder is published (Hugging Face dataset repo ``axiong/pmc_oa``).
PMC_CLIP_URL = "https://huggingface.co/datasets/axiong/pmc_oa/resolve/main/image_encoder(resnet50).pth"

_FULL_VISUAL_PREFIX = "module.visual."
_FULL_PREFIX = "module."


def pmc_clip_key_map(key: str) -> str | None:
    """Map a key of either official PMC-CLIP file to a :class:`PMCCLIPModifiedResNet` key.

    * ``image_encoder(resnet50).pth`` (flat, no prefix): keys are used unchanged.
    * the full OpenCLIP-style training checkpoint (``checkpoint.pt``, state dict saved from a
      ``DistributedDataParallel`` model under ``"state_dict"``): ``module.visual.<k>`` becomes
      ``<k>``; every other ``module.*`` key (text encoder, fusion module, projections,
      ``logit_scale``, ...) is dropped on purpose.

    Any other key is kept as is, so a key that belongs to neither layout is reported as unexpected.

    Args:
        key: a key of the file.

    Returns:
        the model key, or ``None`` for a dropped key.
    """
    if key.startswith(_FULL_VISUAL_PREFIX):
        return key[len(_FULL_VISUAL_PREFIX) :]
    if key.startswith(_FULL_PREFIX):
        return None
    return key


class _AntiAliasBottleneck(nn.Module):
    """CLIP's ResNet bottleneck: stride-1 convolutions, ``AvgPool2d(stride)`` before ``conv3``.

    The shortcut, when present, is ``AvgPool2d(stride)`` (member ``"-1"``, no parameters),
    a 1x1 convolution (``"0"``) and BatchNorm (``"1"``).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != out_planes:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(inplanes, out_planes, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out_planes)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class _AttentionPool(nn.Module):
    """CLIP's attention pooling: the mean token attends over the ``grid x grid`` map.

    Args:
        grid: side of the feature grid the positional embedding was trained for (7 at 224).
        embed_dim: channels of the map (2048).
        num_heads: attention heads.
        output_dim: width of the pooled embedding (768 for PMC-CLIP).
    """

    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h * w + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"attention pooling was trained for a {self.positional_embedding.shape[0] - 1}-token grid, "
                f"got {h}x{w}; use the 224x224 input size."
            )
        tokens = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        tokens = tokens + self.positional_embedding[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=c,
            num_heads=self.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            training=False,
            need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
        )
        return out[0]


class PMCCLIPModifiedResNet(nn.Module):
    """CLIP "ModifiedResNet" with PMC-CLIP's attribute names (``conv1..3``, ``layer1..4``, ``attnpool``).

    Args:
        layers: bottleneck blocks per stage (``[3, 4, 6, 3]`` for RN50).
        output_dim: width of the attention-pooled embedding (768).
        heads: attention heads of the pooling (32 as in PMC-CLIP training).
        image_size: training resolution; sets the positional-embedding grid (``image_size // 32``).
        width: stem width (64).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        output_dim: int = 768,
        heads: int = 32,
        image_size: int = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = [_AntiAliasBottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * _AntiAliasBottleneck.expansion
            blocks += [_AntiAliasBottleneck(inplanes, planes) for _ in range(1, n_blocks)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = _AttentionPool(image_size // 32, width * 32, heads, output_dim)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of ``layer1`` .. ``layer4``."""
        x = self.stem(x)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention-pooled image embedding (``B x output_dim``)."""
        return self.attnpool(self.stages(x)[-1])


class PMCCLIPTeacher(FrozenTeacher):
    """Frozen PMC-CLIP ResNet-50 image encoder exposing ``layer1`` .. ``layer4``.

    Loads ``image_encoder(resnet50).pth`` (flat state dict, no prefix, 339 tensors) with strict
    key and shape matching. The full training checkpoint ``checkpoint.pt``
    (``{"epoch", "name", "state_dict": {"module.visual.*", "module.text_encoder.*", ...},
    "optimizer", ...}``) is accepted as well: :func:`pmc_clip_key_map` keeps only the
    ``module.visual.*`` keys (prefix stripped) and drops every other ``module.*`` key. Numpy
    scalars stored in that file are allowed through
    :func:`~drd_components.teachers.checkpoint.numpy_scalar_safe_globals`; anything else
    that is not a tensor or plain type makes the load fail (``weights_only=True``).
    ``num_batches_tracked`` counters may be absent.

    Preprocessing (PMC-CLIP's validation transform): a grey image is replicated to 3 channels,
    the ``[0, 1]`` image is resized (bicubic) to ``spatial_size`` and normalised with the OpenAI
    CLIP mean/std. Upstream resizes the shorter side and centre-crops; bundles hand over square
    images, for which both agree.

    Tapped layers (``tap_names``) and their shapes for the default 224 x 224 input:

    ========  ======================  ======
    tap       shape (B x C x H x W)   stride
    ========  ======================  ======
    layer1    B x 256 x 56 x 56       4
    layer2    B x 512 x 28 x 28       8
    layer3    B x 1024 x 14 x 14      16
    layer4    B x 2048 x 7 x 7        32
    ========  ======================  ======

    Any size divisible by 32 works for the taps (each tap is ``size / stride``); only
    :meth:`image_embedding` (the attention pool) needs 224.

    Args:
        checkpoint: path of the official file; ``None`` builds random weights (tests and dry
            runs only) and logs a warning.
        sha256: expected SHA-256 of ``checkpoint``, verified before it is read.
        spatial_size: model input size (int or ``(H, W)``), 224 by default.
        heads: attention heads of the pooling layer. Upstream training uses 32
            (``width * 32 / head_width``); community loaders pass 8. Parameter shapes and the
            stage taps do not depend on it, only :meth:`image_embedding` does.

    Raises:
        CheckpointError: the file is missing, fails the checksum, holds disallowed objects, or its
            keys/shapes differ from the model (the message lists the offending keys).
        ValueError: ``sha256`` without ``checkpoint``.
    """

    spatial_dims = 2
    tap_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = 224,
        heads: int = 32,
    ) -> None:
        super().__init__()
        check_checkpoint_args(checkpoint, sha256)
        self.preprocessing = TeacherPreprocessing(
            spatial_dims=2, in_channels=3, spatial_size=spatial_size, mean=CLIP_MEAN, std=CLIP_STD, mode="bicubic"
        )
        self.encoder = PMCCLIPModifiedResNet(layers=(3, 4, 6, 3), output_dim=768, heads=heads, image_size=224, width=64)
        if checkpoint is not None:
            self.load_official_checkpoint(
                self.encoder,
                checkpoint,
                sha256=sha256,
                container_keys=("state_dict",),
                key_map=pmc_clip_key_map,
                allowed_globals=numpy_scalar_safe_globals(),
            )
        else:
            self.warn_random_weights()
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``layer1`` .. ``layer4`` maps for a preprocessed ``B x 3 x H x W`` input."""
        return self.encoder.stages(x)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """PMC-CLIP's 768-d attention-pooled image embedding of a bundle image batch (no autograd)."""
        with torch.inference_mode():
            out = self.encoder(self.preprocessing(x))
        return out.clone()
