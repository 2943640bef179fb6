"""The frozen foundation-model teacher interface used by DRD."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from drd_components.teachers.checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_strict

__all__ = ["FrozenTeacher"]

logger = logging.getLogger(__name__)


class FrozenTeacher(nn.Module, ABC):
    """A frozen foundation model that exposes feature maps at several depths.

    Subclasses build the model in ``__init__``, set ``self.preprocessing`` (a module turning the
    bundle's image tensor into the model's input) and implement :meth:`forward_features`, which
    returns the tapped maps for an already preprocessed input. Call :meth:`freeze` at the end of
    ``__init__`` (after loading weights).

    The teacher is never trained: :meth:`train` keeps it in eval mode, no parameter requires
    grad, and :meth:`stage_features` runs without autograd. Its output tensors are ordinary
    tensors, so reprogramming projectors can take them as inputs.

    Attributes:
        spatial_dims: 2 or 3.
        tap_names: names of the tapped layers, in the order of :meth:`stage_features`.
    """

    spatial_dims: int = 2
    tap_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.preprocessing: nn.Module = nn.Identity()

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tapped feature maps for a preprocessed input.

        Args:
            x: the model's own input (after :attr:`preprocessing`).

        Returns:
            one tensor per tap: ``B x C x spatial`` maps, or ``B x N x C`` token sequences for ViTs.
        """

    def freeze(self) -> FrozenTeacher:
        """Switch to eval mode and stop gradients for every parameter."""
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: D401 - keeps nn.Module's signature
        """Ignore ``mode``: a teacher always stays in eval mode (BatchNorm statistics, dropout off)."""
        return super().train(False)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Preprocess ``x`` and return the tapped features, without autograd.

        Args:
            x: the bundle's image batch, ``B x C x spatial``.

        Returns:
            the tapped features (see :meth:`forward_features`).
        """
        with torch.inference_mode():
            feats = self.forward_features(self.preprocessing(x))
        # inference tensors cannot enter autograd graphs; a clone outside inference mode can.
        return [f.clone() for f in feats]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.stage_features(x)

    def load_official_checkpoint(
        self,
        module: nn.Module,
        path: str | os.PathLike,
        sha256: str | None = None,
        container_keys: Sequence[str] = ("state_dict", "model"),
        key_map: Any = None,
        allowed_globals: Sequence[Any] = (),
    ) -> None:
        """Load an official checkpoint file into ``module`` with strict key matching.

        Args:
            module: the sub-module whose keys the file holds.
            path: checkpoint file.
            sha256: expected digest, verified when given.
            container_keys: keys tried when the file wraps its state dict.
            key_map: optional renaming function (see :func:`load_state_dict_strict`).
            allowed_globals: plain types the file needs besides tensors.

        Raises:
            CheckpointError: see :func:`load_checkpoint_file` and :func:`load_state_dict_strict`.
        """
        obj = load_checkpoint_file(path, sha256=sha256, allowed_globals=allowed_globals)
        state = extract_state_dict(obj, container_keys, path=str(path))
        load_state_dict_strict(module, state, key_map=key_map, source=f"'{path}'")
        logger.info("%s: loaded %d tensors from %s", type(self).__name__, len(state), path)

    def warn_random_weights(self, part: str | None = None, argument: str = "checkpoint") -> None:
        """Log that (part of) the teacher keeps its random initialisation because no file was given.

        The warning goes to the logger of the module defining the teacher class. A teacher with
        random weights is only meant for tests and dry runs.

        Args:
            part: the part left random (e.g. ``"the adapters"``); ``None`` for the whole model.
            argument: the constructor argument that was not given.
        """
        what = f"using RANDOM weights for {part}" if part else "using RANDOM weights"
        logging.getLogger(type(self).__module__).warning(
            "%s: no %s given, %s (tests / dry runs only).", type(self).__name__, argument, what
        )

    @torch.no_grad()
    def feature_shapes(self, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Shapes of :meth:`stage_features` for a zero input of ``input_shape`` (``B x C x spatial``)."""
        device = next(iter(self.parameters()), torch.empty(0)).device
        return [tuple(f.shape) for f in self.stage_features(torch.zeros(*input_shape, device=device))]
