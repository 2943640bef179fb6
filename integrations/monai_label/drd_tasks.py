"""MONAI Label tasks for the DRD bundles.

* Segmentation bundles (busi_ultrasound_segmentation, cardiac/hippocampus) are read by MONAI Label's
  stock ``BundleInferTask`` as they are (ids ``network_def``, ``preprocessing``, ``inferer``,
  ``postprocessing`` of ``configs/inference.json``; labels from ``channel_def`` of the metadata's
  first output, background left out). Training through ``BundleTrainTask`` needs one change: MONAI
  Label's datastore gives ``{"image", "label"}`` while the BUSI segmentation bundle reads its masks
  from ``"masks"`` (a list, BUSI has several mask files per image): :class:`DRDBundleTrainTask`
  maps one to the other (:func:`monailabel_to_bundle_datalist`).
* Classification bundles: :class:`DRDClassificationInferTask` returns the class probabilities as the
  JSON result instead of writing a label image.
* :class:`DRDSegmentationInferTask` is the stock ``BundleInferTask`` writing ``uint8`` label maps: the stock
  writer keeps the bundle's float output, which ITK refuses to write as PNG (2D bundles on PNG/JPEG images).

The ``monailabel`` package is imported lazily: :func:`monailabel_to_bundle_datalist` and
:func:`bundle_labels` work without it; the task classes need it (``pip install monailabel``; see
README.md for the version conflict with this project's pins).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["bundle_labels", "monailabel_to_bundle_datalist", "make_tasks"]


def bundle_labels(bundle_root: str | Path) -> dict[str, int]:
    """The label names MONAI Label shows for a bundle: ``channel_def`` of the metadata's first
    output, lower-cased, ``background`` left out (what ``BundleInferTask`` does).

    Raises:
        FileNotFoundError: when ``configs/metadata.json`` is missing.
        KeyError: when the metadata has no ``network_data_format#outputs``.
    """
    meta_path = Path(bundle_root) / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"MONAI Label needs {meta_path}.")
    outputs = json.loads(meta_path.read_text())["network_data_format"]["outputs"]
    _, pred = next(iter(outputs.items()))
    return {v.lower(): int(k) for k, v in pred.get("channel_def", {}).items() if v.lower() != "background"}


def monailabel_to_bundle_datalist(datalist: Sequence[Mapping], task: str) -> list[dict]:
    """Turn MONAI Label's ``[{"image": path, "label": path}]`` into the DRD bundle's records.

    Args:
        datalist: records from a MONAI Label datastore.
        task: ``"segmentation"`` (the label file becomes ``masks: [label]``) or ``"classification"``
            (the label must be a class index).

    Returns:
        the bundle's records.

    Raises:
        ValueError: for an unknown task, a record without ``image``/``label``, or a non-integer class.
    """
    if task not in ("segmentation", "classification"):
        raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}.")
    records = []
    for i, d in enumerate(datalist):
        if "image" not in d or "label" not in d:
            raise ValueError(f"datastore record {i} lacks 'image' or 'label': {dict(d)}")
        if task == "segmentation":
            records.append({"image": d["image"], "label": d["label"], "masks": [d["label"]]})
        else:
            try:
                records.append({"image": d["image"], "label": int(d["label"])})
            except (TypeError, ValueError) as e:
                raise ValueError(f"datastore record {i}: class label must be an integer index, got {d['label']!r}.") from e
    return records


def make_tasks():
    """Define the MONAI Label task classes (needs ``monailabel``).

    Returns:
        ``(DRDBundleTrainTask, DRDClassificationInferTask, DRDSegmentationInferTask)``.

    Raises:
        ImportError: when monailabel is not installed.
    """
    import torch
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    class DRDBundleTrainTask(BundleTrainTask):
        """``BundleTrainTask`` whose datalist records carry the keys the DRD bundles read."""

        def __init__(self, path: str, conf: dict, task: str = "segmentation", **kwargs) -> None:
            super().__init__(path, conf, **kwargs)
            self.drd_task = task

        def _fetch_datalist(self, request, datastore):
            return monailabel_to_bundle_datalist(super()._fetch_datalist(request, datastore), self.drd_task)

    class DRDClassificationInferTask(BundleInferTask):
        """``BundleInferTask`` for a classification bundle: no label image, the result JSON holds
        ``{"prediction": name, "probabilities": {name: p}}``."""

        def __init__(self, path: str, conf: dict, **kwargs) -> None:
            kwargs.setdefault("type", "classification")
            kwargs.setdefault("add_post_restore", False)
            super().__init__(path, conf, **kwargs)
            meta = json.loads((Path(path) / "configs" / "metadata.json").read_text())
            _, pred = next(iter(meta["network_data_format"]["outputs"].items()))
            self.class_names = [pred["channel_def"][str(i)] for i in range(len(pred["channel_def"]))]

        def writer(self, data, extension=None, dtype=None):
            probs = torch.as_tensor(data[self.output_label_key]).flatten().float()
            result = {"probabilities": {n: float(p) for n, p in zip(self.class_names, probs)}}
            result["prediction"] = self.class_names[int(probs.argmax())]
            return None, result

    class DRDSegmentationInferTask(BundleInferTask):
        """``BundleInferTask`` for the 2D/3D segmentation bundles as MONAI Label's writer needs them: a 2D
        label without its channel axis (``Restored`` drops it for 3D labels only, and the writer would
        take ``1 x H x W`` for a volume), ``uint8`` values unless the request asks for another ``result_dtype``
        (the stock writer keeps the bundle's float output, which ITK cannot write as PNG), and PNG instead of
        JPEG for labels of JPEG images (the stock writer keeps the input's extension: a lossy label map)."""

        def post_transforms(self, data=None):
            from monai.transforms import SqueezeDimd

            post = list(super().post_transforms(data))
            if self.dimension == 2:  # Restored keeps the channel of 2D labels; the writer wants H x W
                post.append(SqueezeDimd(keys=self.key_pred, dim=0))
            return post

        def writer(self, data, extension=None, dtype=None):
            import numpy as np

            if dtype is None and not data.get("result_dtype"):
                dtype = np.uint8
            image = str(data.get("image_path") or "").lower()
            if extension is None and not data.get("result_extension") and image.endswith((".jpg", ".jpeg")):
                extension = ".png"  # a label map must not be written lossy (MONAI Label keeps the input's extension)
            return super().writer(data, extension=extension, dtype=dtype)

    return DRDBundleTrainTask, DRDClassificationInferTask, DRDSegmentationInferTask
