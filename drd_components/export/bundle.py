"""Build a bundle's student from its ``network_def`` and load its trained weights safely."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch import nn

__all__ = ["SIZE_IDS", "bundle_parser", "bundle_input_shape", "load_state_dict_file", "load_bundle_network"]

#: config ids searched, in order, for the spatial size of one network input.
SIZE_IDS = ("train_size", "image_size", "patch_size")


def bundle_parser(bundle_root: str | Path, config_file: str | Sequence[str] = "configs/inference.json",
                  overrides: Mapping | None = None) -> ConfigParser:
    """Read a bundle's config(s) (paths relative to ``bundle_root``) with ``bundle_root`` set.

    Args:
        bundle_root: the bundle folder.
        config_file: one config or a list of overlays, relative to ``bundle_root`` or absolute.
        overrides: ``{id: value}`` applied after reading (like ``--key value`` on the CLI).

    Returns:
        the parser (nothing instantiated yet).

    Raises:
        FileNotFoundError: when a config file is missing.
    """
    root = Path(bundle_root)
    files = [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
    paths = [p if Path(p).is_absolute() else root / p for p in map(str, files)]
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"bundle config not found: {p}")
    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    meta = root / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    for key, value in dict(overrides or {}).items():
        parser[key] = value
    return parser


def bundle_input_shape(parser: ConfigParser) -> list[int]:
    """``(channels, *spatial)`` of one network input: ``in_channels`` and the first of
    :data:`SIZE_IDS` in the config, else the metadata's ``network_data_format#inputs#image``.

    Raises:
        KeyError: when neither the config nor the metadata gives the shape.
    """
    image_meta = parser.get("_meta_#network_data_format#inputs#image", {}) or {}
    channels = parser.get_parsed_content("in_channels") if "in_channels" in parser else image_meta.get("num_channels")
    spatial = None
    for key in SIZE_IDS:
        if key in parser:
            spatial = parser.get_parsed_content(key)
            break
    if spatial is None:
        spatial = image_meta.get("spatial_shape")
    if channels is None or not spatial:
        raise KeyError(f"cannot tell the input shape: none of 'in_channels' + {SIZE_IDS} in the config and no "
                       "network_data_format#inputs#image (num_channels, spatial_shape) in metadata.json.")
    return [int(channels)] + [int(s) for s in spatial]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a student state dict saved by the bundle (``weights_only=True``); a checkpoint dict
    with a ``"model"`` entry (ignite's multi-object layout) is unwrapped.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: when the file holds no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (or {{'model': state_dict}}), got {type(state).__name__}.")
    return dict(state)


def load_bundle_network(
    bundle_root: str | Path,
    model: str | Path | None = "models/model.pt",
    config_file: str | Sequence[str] = "configs/inference.json",
    overrides: Mapping | None = None,
    network_id: str = "network_def",
) -> tuple[nn.Module, list[int], ConfigParser]:
    """Instantiate ``network_def`` from the bundle config on CPU and load ``model`` into it strictly.

    Args:
        bundle_root: the bundle folder.
        model: weights file, relative to ``bundle_root`` or absolute; ``None`` keeps random weights.
        config_file: config(s) holding ``network_def``.
        overrides: config overrides (e.g. a smaller ``image_size``).
        network_id: id of the network definition.

    Returns:
        ``(network in eval mode, input shape (channels, *spatial), parser)``.

    Raises:
        KeyError: when ``network_id`` is not in the config.
        RuntimeError: when the weights do not match the network (missing/unexpected keys listed).
    """
    parser = bundle_parser(bundle_root, config_file, overrides)
    if network_id not in parser:
        raise KeyError(f"'{network_id}' not found in {config_file} of {bundle_root}.")
    network = parser.get_parsed_content(network_id, instantiate=True)
    if model is not None:
        path = Path(model) if Path(model).is_absolute() else Path(bundle_root) / model
        result = network.load_state_dict(load_state_dict_file(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(f"{path} does not match {network_id} ({type(network).__name__}): "
                               f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}.")
    return network.cpu().eval(), bundle_input_shape(parser), parser

