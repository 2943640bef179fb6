"""ONNX export of a student network with a dynamic batch axis, and an onnxruntime parity check."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["ONNX_EXPORTERS", "export_onnx", "onnx_parity"]

#: ``"dynamo"``: ``torch.export``-based exporter (PyTorch's default since 2.9, needs ``onnxscript``);
#: ``"torchscript"``: the legacy tracer-based exporter (deprecated by PyTorch, kept as an option).
ONNX_EXPORTERS = ("dynamo", "torchscript")


def _example_input(input_shape: Sequence[int], batch: int) -> torch.Tensor:
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must be (channels, *spatial), got {list(input_shape)}.")
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, *[int(s) for s in input_shape], generator=generator)


def export_onnx(
    network: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    exporter: str = "dynamo",
    opset_version: int | None = None,
    input_name: str = "image",
    output_name: str = "pred",
) -> Path:
    """Export ``network`` (in eval mode, on CPU) to a single ONNX file whose batch axis is dynamic.

    The example input has batch size 2 (a batch of 1 makes ``torch.export`` specialise the
    batch dimension); spatial sizes are fixed to ``input_shape``.

    Args:
        network: the student; it is moved to CPU and set to eval mode.
        input_shape: ``(channels, *spatial)`` of one input.
        path: output ``.onnx`` file (parent folders are created).
        exporter: one of :data:`ONNX_EXPORTERS`.
        opset_version: ONNX opset (``None``: the exporter's default).
        input_name: name of the graph input.
        output_name: name of the graph output.

    Returns:
        the written path.

    Raises:
        ValueError: for an unknown exporter or a malformed ``input_shape``.
        ImportError: when ``onnx`` (or, for the dynamo exporter, ``onnxscript``) is not installed.
    """
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}.")
    import onnx  # noqa: F401  (clear ImportError before a long trace)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    example = _example_input(input_shape, batch=2)
    kwargs: dict = {"input_names": [input_name], "output_names": [output_name], "opset_version": opset_version}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        if exporter == "dynamo":
            import onnxscript  # noqa: F401

            arg = next(iter(_forward_arg_names(network)))
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                network, (example,), str(path), dynamo=True, external_data=False,
                dynamic_shapes={arg: {0: batch}}, **kwargs,
            )
        else:
            torch.onnx.export(
                network, (example,), str(path), dynamo=False,
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, **kwargs,
            )
    return path


def _forward_arg_names(network: nn.Module) -> list[str]:
    import inspect

    names = [p for p in inspect.signature(network.forward).parameters if p not in ("self",)]
    if not names:
        raise ValueError(f"{type(network).__name__}.forward takes no input argument.")
    return names


def onnx_parity(
    network: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 3),
) -> dict[str, float | list[int]]:
    """Run the ONNX file with onnxruntime (CPU) and the network in PyTorch on the same random
    inputs, for several batch sizes (checks the dynamic batch axis too).

    Args:
        network: the eager network the file was exported from.
        path: the ``.onnx`` file.
        input_shape: ``(channels, *spatial)`` of one input.
        batch_sizes: batch sizes to compare.

    Returns:
        ``{"max_abs_diff": float, "max_abs_output": float, "batch_sizes": [...]}``: the largest
        absolute difference over all outputs, and the largest absolute eager output (scale).

    Raises:
        ImportError: when onnxruntime is not installed.
        AssertionError: when the ONNX output has a different shape from the eager one.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    network = network.cpu().eval()
    worst, scale = 0.0, 0.0
    for i, batch in enumerate(batch_sizes):
        x = torch.rand(batch, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(i + 1))
        with torch.no_grad():
            expected = network(x).numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"{path}: ONNX output shape {got.shape} != eager {expected.shape} for batch {batch}.")
        worst = max(worst, float(np.max(np.abs(got - expected))))
        scale = max(scale, float(np.max(np.abs(expected))))
    return {"max_abs_diff": worst, "max_abs_output": scale, "batch_sizes": [int(b) for b in batch_sizes]}
