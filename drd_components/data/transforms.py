"""Dictionary transforms the bundles need beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["AdaptChannels", "AdaptChannelsd"]


class AdaptChannels(Transform):
    """Bring a channel-first image to a fixed channel count.

    Grey images are repeated to ``channels``; colour images are averaged to one channel when
    ``channels == 1``; a 4th (alpha) channel is dropped first. Anything else is an error, so a
    wrong input never reaches the network silently.

    Args:
        channels: channels wanted (1 or 3).
    """

    def __init__(self, channels: int = 1) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        self.channels = channels

    def __call__(self, img: torch.Tensor, name: str = "image") -> torch.Tensor:
        c = img.shape[0]
        if c == 4:
            img, c = img[:3], 3
        if c == self.channels:
            return img
        if c == 1:
            return img.repeat(self.channels, *([1] * (img.ndim - 1)))
        if c == 3 and self.channels == 1:
            return img.float().mean(dim=0, keepdim=True)
        source = getattr(img, "meta", {}).get("filename_or_obj", name) if hasattr(img, "meta") else name
        raise ValueError(f"'{source}' has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA).")


class AdaptChannelsd(MapTransform):
    """Dictionary version of :class:`AdaptChannels`.

    Args:
        keys: keys to adapt.
        channels: channels wanted.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, channels: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.adapter = AdaptChannels(channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.adapter(d[key], name=str(key))
        return d
