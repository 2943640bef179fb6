"""Validation of a bundle's ``configs/metadata.json`` against the MONAI bundle specification.

MONAI's ``verify_metadata`` downloads its JSON schema at run time, which fails offline. This
module carries a JSON schema written from the specification's list of mandatory keys and tensor
format specifiers (MONAI Bundle Specification, "metadata.json File"), so bundles can be checked
anywhere.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["METADATA_SCHEMA", "validate_metadata"]

_TENSOR = {
    "type": "object",
    "required": [
        "type",
        "format",
        "modality",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    ],
    "properties": {
        "type": {"type": "string", "enum": ["image", "series", "tuples", "probabilities"]},
        "format": {"type": "string", "minLength": 1},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}, "minItems": 1},
        "dtype": {"type": "string", "minLength": 1},
        "value_range": {"type": "array", "items": {"type": "number"}},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": [
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "optional_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ],
    "properties": {
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "changelog": {"type": "object", "additionalProperties": {"type": "string"}},
        "monai_version": {"type": "string"},
        "pytorch_version": {"type": "string"},
        "numpy_version": {"type": "string"},
        "optional_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "task": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "authors": {"type": ["string", "array"]},
        "copyright": {"type": "string"},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
                "outputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
            },
        },
    },
}


def validate_metadata(path: str | os.PathLike) -> dict:
    """Validate a ``metadata.json`` file; the current version must have a changelog entry.

    Args:
        path: the file.

    Returns:
        the parsed metadata.

    Raises:
        ValueError: naming the file and the first schema violation.
    """
    import jsonschema

    with open(path) as f:
        meta = json.load(f)
    try:
        jsonschema.validate(meta, METADATA_SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise ValueError(f"{path}: invalid metadata at '{where}': {e.message}") from e
    if "changelog" in meta and meta["version"] not in meta["changelog"]:
        raise ValueError(f"{path}: version {meta['version']} has no entry in 'changelog'.")
    return meta
