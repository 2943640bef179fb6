"""Datalists for folders of images given to inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS_2D", "image_folder_datalist"]

IMAGE_EXTENSIONS_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_folder_datalist(
    input_dir: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS_2D,
    exclude_substrings: Sequence[str] = ("_mask",),
    recursive: bool = True,
) -> list[dict]:
    """``[{"image": path}, ...]`` for every image file under ``input_dir``, sorted by path.

    Args:
        input_dir: folder to scan.
        extensions: file endings accepted (case-insensitive).
        exclude_substrings: file names containing any of these are skipped (e.g. BUSI masks).
        recursive: also scan sub-folders.

    Returns:
        the datalist.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no matching file.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir '{root}' does not exist or is not a folder.")
    exts = tuple(e.lower() for e in extensions)
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in exts and not any(s in p.name for s in exclude_substrings)
    )
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(exts)}) found in input_dir '{root}'.")
    return [{"image": str(p.resolve())} for p in files]
