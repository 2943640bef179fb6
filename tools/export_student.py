"""Export a bundle's trained student to ONNX or TorchScript and verify it against the eager network.

Builds the network from the bundle's ``network_def`` (``configs/inference.json`` by default), loads
the weights with ``torch.load(..., weights_only=True)``, exports (dynamic batch axis), compares the
export with PyTorch on random inputs of batch 1 and 3 (onnxruntime for ONNX) and writes
``<export>.json`` (max abs diff, versions, input shape) next to the export.

Usage:
    python tools/export_student.py --bundle_root bundles/busi_ultrasound_classification \
        --model models/model.pt --format onnx [--output models/model.onnx] [--exporter dynamo|torchscript] \
        [--input_shape "[1,224,224]"] [--overrides '{"image_size": [224, 224]}']
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drd_components.export import export_student  # noqa: E402


def main(
    bundle_root: str,
    model: str = "models/model.pt",
    format: str = "onnx",  # noqa: A002 (CLI flag name)
    output: str | None = None,
    config_file: str = "configs/inference.json",
    exporter: str = "dynamo",
    input_shape: list | None = None,
    overrides: dict | None = None,
    tolerance: float = 1e-4,
) -> None:
    """Export, verify and print the report (see module docstring)."""
    report = export_student(bundle_root, model, format, output, config_file, overrides, input_shape, exporter, tolerance)
    p = report["parity"]
    print(f"exported {report['network']} -> {report['export']} ({report['exporter']}, input {report['input_shape']}, "
          f"dynamic batch); max abs diff {p['max_abs_diff']:.3g} over batches {p['batch_sizes']} "
          f"(tolerance {p['tolerance']:.3g}): {'PASS' if p['passed'] else 'FAIL'}")
    print(json.dumps(report["versions"]))


if __name__ == "__main__":
    fire.Fire(main)
