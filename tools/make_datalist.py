"""Write a Decathlon-format datalist (training / validation / test) from your own labelled folder.

Usage:
    # segmentation: images + masks matched by file name (mask stem = image stem + --mask_suffix)
    python tools/make_datalist.py --image_dir /data/polyps/images --mask_dir /data/polyps/masks \
        --output_file /data/polyps/datalist.json
    # ... split by video: the group is taken from the file name ...
    python tools/make_datalist.py --image_dir frames --mask_dir masks --output_file datalist.json \
        --group_regex '^(video\\d+)_'
    # ... or from a CSV column (the image named in its first column, or --csv_image_column)
    python tools/make_datalist.py --image_dir frames --mask_dir masks --output_file datalist.json \
        --group_csv frames.csv --group_column patient_id
    # classification: one sub-folder per class (labels in sorted folder order, or --class_names "[a,b]")
    python tools/make_datalist.py --image_dir /data/xray --output_file /data/xray/datalist.json

Then train any bundle on it: ``python -m monai.bundle run training --config_file configs/train.json
--datalist_file /data/polyps/datalist.json``. With a grouping no group is in more than one split (each
record keeps its ``group``); without one the split is random (stratified by class for
classification; ``--max_items N`` keeps about N items, whole groups, for a quick trial). Paths are written
relative to the JSON file's folder (``--base_dir <dir>``: relative to
that folder, given to the bundle as ``--dataset_dir``; ``--absolute_paths``: absolute). The logic is
:func:`drd_components.data.user_datalist.make_datalist`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drd_components.data.user_datalist import IMAGE_EXTENSIONS, make_datalist  # noqa: E402


def main(
    image_dir: str,
    output_file: str,
    mask_dir: str | None = None,
    mask_suffix: str = "",
    class_names: list | None = None,
    group_regex: str | None = None,
    group_csv: str | None = None,
    group_column: str | None = None,
    csv_image_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    base_dir: str | None = None,
    absolute_paths: bool = False,
    extensions: list | tuple = IMAGE_EXTENSIONS,
    max_items: int | None = None,
) -> None:
    """Write the datalist and print its split (see the module docstring)."""
    summary = make_datalist(image_dir, output_file, mask_dir, mask_suffix, class_names, group_regex, group_csv, group_column,
                            csv_image_column, val_fraction, test_fraction, seed, base_dir, absolute_paths, tuple(extensions),
                            max_items)
    print(f"wrote {summary['output_file']} ({summary['task']}"
          + (f", classes {summary['class_names']}" if summary["class_names"] else "") + ")")
    for name, entry in summary["parts"].items():
        extra = f", {entry['groups']} groups" if "groups" in entry else ""
        labels = f", labels {json.dumps(entry['labels'])}" if "labels" in entry else ""
        print(f"  {name:<10} {entry['items']:>6} items{extra}{labels}")
    if summary["grouped"]:
        print(f"  groups in more than one split: {len(summary['leaked_groups'])}")
    if summary["base_dir"]:
        print(f"  paths relative to {summary['base_dir']}")


if __name__ == "__main__":
    fire.Fire(main)
