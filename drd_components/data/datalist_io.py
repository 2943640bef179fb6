"""Writing datalists to disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_datalist"]


def write_datalist(parts: dict, output_file: str | os.PathLike) -> Path:
    """Write a datalist as JSON atomically (temporary file + rename), creating the folder.

    Args:
        parts: split name -> records.
        output_file: destination.

    Returns:
        the destination path.
    """
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(parts, indent=1))
    os.replace(tmp, out)
    return out
