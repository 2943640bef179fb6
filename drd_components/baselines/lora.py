"""LoRA (low-rank adaptation) of a teacher's Linear and Conv layers, as weight parametrizations.

``W' = W + (alpha / r) * B @ A`` with ``A`` (``r x fan_in``, Kaiming-uniform) and ``B``
(``out x r``, zeros), so an adapted model starts out identical to the original. The update is
registered with :func:`torch.nn.utils.parametrize.register_parametrization`, which changes the
layer *in place*: every container that holds the layer (a teacher may keep its stages in a plain
tuple besides the registered modules) sees the adapted weight, and the base weight stays
untouched in ``<layer>.parametrizations.weight.original``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LoRAUpdate", "apply_lora", "lora_parameters", "lora_layer_names"]

_DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LoRAUpdate(nn.Module):
    """The parametrization ``W -> W + scaling * (B @ A).view_as(W)``.

    Args:
        weight_shape: shape of the adapted weight (``out x in`` or ``out x in/groups x kernel``).
        rank: the rank ``r``.
        alpha: LoRA ``alpha``; the update is scaled by ``alpha / r``.

    Raises:
        ValueError: for a non-positive rank.
    """

    def __init__(self, weight_shape: Sequence[int], rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        out_features = int(weight_shape[0])
        fan_in = math.prod(int(s) for s in weight_shape[1:])
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.scaling = float(alpha) / rank
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_B @ self.lora_A).view(self.weight_shape)
        return weight + self.scaling * delta.to(weight.dtype)


def apply_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float = 8.0,
    layer_types: Sequence[type[nn.Module]] = _DEFAULT_TYPES,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    freeze_base: bool = True,
) -> list[str]:
    """Add a LoRA update to every matching layer of ``model`` (in place).

    Args:
        model: the model to adapt (e.g. a teacher).
        rank: LoRA rank.
        alpha: LoRA alpha (scaling ``alpha / rank``).
        layer_types: layer classes adapted (default: Linear and Conv1d/2d/3d).
        include: when given, only layers whose qualified name contains one of these substrings.
        exclude: layers whose qualified name contains one of these substrings are skipped.
        freeze_base: set ``requires_grad=False`` on every parameter of ``model`` except the new
            LoRA factors.

    Returns:
        the qualified names of the adapted layers.

    Raises:
        ValueError: when no layer matches.
    """
    types = tuple(layer_types)
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, types) or parametrize.is_parametrized(module, "weight"):
            continue
        if include and not any(s in name for s in include):
            continue
        if any(s in name for s in exclude):
            continue
        targets.append((name, module))
    if not targets:
        raise ValueError(
            f"apply_lora: no layer of types {[t.__name__ for t in types]} matched include={list(include)} "
            f"exclude={list(exclude)} in {type(model).__name__}."
        )
    if freeze_base:
        model.requires_grad_(False)
    for _, module in targets:
        update = LoRAUpdate(module.weight.shape, rank, alpha).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", update)
    return [n for n, _ in targets]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (``lora_A``/``lora_B``) of ``model``."""
    return [p for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))]


def lora_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers of ``model`` that carry a LoRA update."""
    return [
        n
        for n, m in model.named_modules()
        if parametrize.is_parametrized(m, "weight")
        and any(isinstance(p, LoRAUpdate) for p in m.parametrizations["weight"])
    ]
