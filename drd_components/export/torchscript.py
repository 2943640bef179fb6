"""TorchScript export of a student network and an eager-vs-scripted parity check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["TORCHSCRIPT_METHODS", "export_torchscript", "torchscript_parity"]

#: ``"script"``: ``torch.jit.script`` (what ``monai.bundle ckpt_export`` does); ``"trace"``: ``torch.jit.trace``.
TORCHSCRIPT_METHODS = ("script", "trace")


def export_torchscript(
    network: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    method: str = "script",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Script (or trace) ``network`` in eval mode on CPU and save it.

    Args:
        network: the student.
        path: output ``.ts`` file (parent folders are created).
        input_shape: ``(channels, *spatial)``; needed for ``method="trace"`` only.
        method: one of :data:`TORCHSCRIPT_METHODS`.
        extra_files: files stored inside the archive (e.g. ``{"metadata.json": "..."}``, as
            ``ckpt_export`` does), readable with ``torch.jit.load(..., _extra_files=...)``.

    Returns:
        the written path.

    Raises:
        ValueError: for an unknown method, or ``trace`` without ``input_shape``.
    """
    if method not in TORCHSCRIPT_METHODS:
        raise ValueError(f"method must be one of {TORCHSCRIPT_METHODS}, got {method!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    if method == "script":
        module = torch.jit.script(network)
    else:
        if input_shape is None:
            raise ValueError("method='trace' needs input_shape (channels, *spatial).")
        example = torch.rand(2, *[int(s) for s in input_shape])
        with torch.no_grad():
            module = torch.jit.trace(network, example)
    torch.jit.save(module, str(path), _extra_files=dict(extra_files or {}))
    return path


def torchscript_parity(
    network: nn.Module, path: str | Path, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 3)
) -> dict[str, float | list[int]]:
    """Compare the saved TorchScript module with the eager network on random inputs.

    Args:
        network: the eager network the file was made from.
        path: the ``.ts`` file.
        input_shape: ``(channels, *spatial)`` of one input.
        batch_sizes: batch sizes to compare.

    Returns:
        ``{"max_abs_diff": float, "max_abs_output": float, "batch_sizes": [...]}``.

    Raises:
        AssertionError: when the output shapes differ.
    """
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    network = network.cpu().eval()
    worst, scale = 0.0, 0.0
    for i, batch in enumerate(batch_sizes):
        x = torch.rand(batch, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(i + 1))
        with torch.no_grad():
            expected, got = network(x), scripted(x)
        if got.shape != expected.shape:
            raise AssertionError(f"{path}: TorchScript output shape {tuple(got.shape)} != eager {tuple(expected.shape)}.")
        worst = max(worst, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    return {"max_abs_diff": worst, "max_abs_output": scale, "batch_sizes": [int(b) for b in batch_sizes]}
