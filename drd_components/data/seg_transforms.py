"""Dictionary transforms of the segmentation bundles."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

__all__ = ["ValidRegiond", "LoadUnionMaskd", "AffineFromZoomsd"]

logger = logging.getLogger(__name__)


class ValidRegiond(MapTransform):
    """Add a mask of ones shaped like the image (one channel), before any padding.

    Pad the mask together with image and label afterwards (``SpatialPadd`` with the constant 0):
    it then marks the voxels that hold image data, which the DRD trainer uses to restrict the
    per-voxel KL term (``kl_mask_key``). Random crops, flips and affine transforms must be applied
    to it as well (nearest interpolation).

    Args:
        keys: the image key (the first one is used as the reference).
        mask_key: key of the new mask.
        dtype: mask dtype.
    """

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(keys)
        self.mask_key = mask_key
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ref = d[self.first_key(d)]
        ones = torch.ones((1, *ref.shape[1:]), dtype=self.dtype)
        d[self.mask_key] = MetaTensor(ones, meta=dict(ref.meta)) if isinstance(ref, MetaTensor) else ones
        return d


class LoadUnionMaskd(MapTransform):
    """Load one or several binary mask files per item and store their union as the label.

    BUSI gives some images several mask files (``_mask.png``, ``_mask_1.png``, ...), one per
    lesion; the label is their pixel-wise OR. Colour masks are reduced with the maximum over
    channels, every non-zero value counts as foreground. With no mask file the label is empty,
    shaped like ``reference_key``.

    Args:
        keys: key holding the list of mask files (a single path is accepted too).
        label_key: key of the new label (``1 x spatial``, ``uint8`` values 0/1).
        reference_key: image key used for the shape (and meta data) of an empty label.
        reader: MONAI image reader for the mask files (default: chosen by file type).
        remove_source: drop the list of mask files from the item (lists of different lengths
            cannot be collated into a batch).
        threshold: a pixel is foreground when its value is above this (0 for lossless masks; use
            e.g. 127 for JPEG-compressed 0/255 masks, whose edges carry compression noise). A mask
            whose values are all 0 or 1 (0/1 PNG, 1-bit PNG) is compared with 0 instead, so that
            a threshold meant for 0/255 masks does not turn it into an empty label.
        allow_missing_keys: skip items without ``keys``.

    Raises:
        ValueError: when the masks of one item differ in size.
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        label_key: str = "label",
        reference_key: str = "image",
        reader: str | None = None,
        remove_source: bool = True,
        threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.label_key = label_key
        self.remove_source = remove_source
        self.reference_key = reference_key
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            files = d[key]
            files = [files] if isinstance(files, (str, bytes)) else list(files or [])
            union = None
            for f in files:
                m = self.loader(f)
                m = m.amax(dim=0, keepdim=True) if m.shape[0] > 1 else m
                # 0/1 (or 1-bit) masks: every 1 is foreground, whatever the threshold for 0/255 masks
                m = m > (self.threshold if float(m.max()) > 1 else 0.0)
                if union is not None and union.shape != m.shape:
                    raise ValueError(f"mask '{f}' is {tuple(m.shape[1:])}, the other masks of its image {tuple(union.shape[1:])}.")
                union = m if union is None else (union | m)
            if union is None:
                ref = d[self.reference_key]
                union = torch.zeros((1, *ref.shape[1:]), dtype=torch.bool)
                meta = dict(ref.meta) if isinstance(ref, MetaTensor) else {}
                union = MetaTensor(union, meta=meta)
            d[self.label_key] = union.to(torch.uint8)
            if self.remove_source and key != self.label_key:
                d.pop(key)
        return d


class AffineFromZoomsd(MapTransform):
    """Make the affine of loaded NIfTI images carry the voxel spacing of the header (``pixdim``).

    Some releases (ACDC) store an sform that is a pure axis flip (1 mm voxels) while the real
    spacing is only in ``pixdim`` (``header.get_zooms()``). This transform keeps the affine's
    directions and origin and scales its columns to the header zooms. It is a no-op when the
    affine already has those zooms (MONAI's ``NibabelReader`` corrects such headers itself), so it
    is safe whichever reader loaded the file.

    Args:
        keys: image keys (``MetaTensor`` with ``pixdim`` in their meta data).
        atol: tolerance (mm) below which the spacing is considered correct.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, atol: float = 1e-3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or "pixdim" not in img.meta:
                continue
            sd = img.ndim - 1
            zooms = np.asarray(img.meta["pixdim"], dtype=np.float64)[1 : 1 + sd]
            affine = img.affine.detach().cpu().to(torch.float64).clone()
            norms = affine[:sd, :sd].norm(dim=0).numpy()
            if np.all(zooms > 0) and not np.allclose(norms, zooms, atol=self.atol):
                direction = affine[:sd, :sd] / torch.from_numpy(np.where(norms > 0, norms, 1.0))
                affine[:sd, :sd] = direction * torch.from_numpy(zooms)
                img.affine = affine
                logger.debug("%s: affine spacing %s replaced by header zooms %s", img.meta.get("filename_or_obj"), norms, zooms)
        return d

