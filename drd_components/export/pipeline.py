"""Export a bundle's trained student (TorchScript or ONNX), verify it and write a JSON report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from drd_components.export.bundle import load_bundle_network
from drd_components.export.onnx_export import export_onnx, onnx_parity
from drd_components.export.torchscript import export_torchscript, torchscript_parity

__all__ = ["EXPORT_FORMATS", "export_student"]

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}


def _write_json_atomic(path: Path, payload: Mapping) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def export_student(
    bundle_root: str | Path,
    model: str | Path = "models/model.pt",
    fmt: str = "onnx",
    output: str | Path | None = None,
    config_file: str | Sequence[str] = "configs/inference.json",
    overrides: Mapping | None = None,
    input_shape: Sequence[int] | None = None,
    exporter: str = "dynamo",
    tolerance: float = 1e-4,
) -> dict:
    """Build ``network_def`` from the bundle, load ``model`` (``weights_only=True``), export,
    compare with the eager network on random inputs (batch 1 and 3) and write
    ``<export>.json`` next to the export.

    Args:
        bundle_root: the bundle folder.
        model: student weights (relative to ``bundle_root`` or absolute).
        fmt: ``"onnx"`` or ``"torchscript"``.
        output: export path (default: ``model`` with ``.onnx`` / ``.ts``).
        config_file: config(s) with ``network_def``.
        overrides: config overrides (e.g. ``{"image_size": [32, 32]}``).
        input_shape: ``(channels, *spatial)``; default from the config / metadata.
        exporter: ONNX exporter, ``"dynamo"`` or ``"torchscript"`` (see :data:`ONNX_EXPORTERS`);
            ignored for ``fmt="torchscript"``.
        tolerance: largest accepted absolute difference relative to ``max(1, max |eager output|)``.

    Returns:
        the report written to the JSON file (format, paths, input shape, versions, parity).

    Raises:
        ValueError: for an unknown format.
        AssertionError: when the parity check fails (the report is written first, with ``"passed": false``).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(EXPORT_FORMATS)}, got {fmt!r}.")
    root = Path(bundle_root)
    model_path = Path(model) if Path(model).is_absolute() else root / model
    network, shape, parser = load_bundle_network(root, model_path, config_file, overrides)
    shape = [int(s) for s in input_shape] if input_shape is not None else shape
    out = Path(output) if output is not None else model_path.with_suffix(EXPORT_FORMATS[fmt])
    start = time.perf_counter()
    if fmt == "onnx":
        export_onnx(network, shape, out, exporter=exporter)
        parity = onnx_parity(network, out, shape)
        import onnx
        import onnxruntime

        versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    else:
        # like ``monai.bundle ckpt_export``: metadata and the (overridden) config travel inside the
        # archive, which is what MONAI Deploy's bundle operator reads from a TorchScript bundle
        config = {k: v for k, v in parser.config.items() if k != "_meta_"}
        config["bundle_root"] = "."  # not this machine's path
        extra = {"metadata.json": json.dumps(parser.config.get("_meta_", {})),
                 Path(config_file if isinstance(config_file, (str, Path)) else config_file[0]).name: json.dumps(config)}
        export_torchscript(network, out, shape, extra_files=extra)
        parity = torchscript_parity(network, out, shape)
        versions = {}
    elapsed = time.perf_counter() - start
    limit = tolerance * max(1.0, float(parity["max_abs_output"]))
    report = {
        "format": fmt,
        "exporter": exporter if fmt == "onnx" else "torch.jit.script",
        "export": str(out),
        "weights": str(model_path),
        "network": f"{type(network).__module__}.{type(network).__name__}",
        "input_shape": shape,
        "dynamic_axes": {"batch": 0},
        "parity": dict(parity, tolerance=limit, passed=bool(parity["max_abs_diff"] <= limit)),
        "export_seconds": round(elapsed, 3),
        "versions": dict(versions, torch=torch.__version__),
    }
    _write_json_atomic(out.with_name(out.name + ".json"), report)
    if not report["parity"]["passed"]:
        raise AssertionError(f"{out}: max abs diff {parity['max_abs_diff']:.3g} exceeds {limit:.3g}.")
    return report
