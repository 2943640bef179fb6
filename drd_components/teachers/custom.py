"""Your own teacher: any ``torch.nn.Module`` as a frozen DRD teacher, tapped by sub-module name.

:class:`CustomTeacher` wraps a model given in one of three ways and returns the outputs of the
named sub-modules (``layer_names``) as its features:

* a module built by the bundle config (``"model": {"_target_": "monai.networks.nets.DenseNet121", ...}``),
  optionally filled from a state dict file (``checkpoint``; ``weights_only`` loading, strict keys);
* a class (an import path or the class itself) plus ``model_kwargs``, filled from ``checkpoint``;
* a TorchScript file (``torchscript_file``, from ``torch.jit.script`` or ``torch.jit.trace``).

Eager modules are tapped with forward hooks (the forward pass stops as soon as every tap has fired,
so a classification head after the last tap costs nothing). TorchScript modules do not run Python
hooks, so their compiled graphs are tapped instead: after each call of a named sub-module inside its
parent's ``forward`` graph, the output is stored in an attribute of the parent and read back after the
forward pass. Either way the teacher is frozen and in eval mode, runs under
:class:`~drd_components.teachers.preprocessing.TeacherPreprocessing` (channels, resize, mean/std, CT
window) and returns ``B x C x spatial`` maps or ``B x N x C`` token sequences, whatever the layers give:
the reprogramming projectors are sized from a dry run, so no channel count is written anywhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drd_components.networks.reprogramming import tokens_to_map
from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import CheckpointError, extract_state_dict, load_checkpoint_file, verify_sha256
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = ["CustomTeacher", "TorchScriptTaps", "import_class"]

logger = logging.getLogger(__name__)


def import_class(path: str) -> type:
    """The class named by an import path (``"monai.networks.nets.DenseNet121"`` or ``"pkg.mod:Class"``).

    Raises:
        ValueError: the path does not name an importable class.
    """
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"model {path!r} is not an import path 'package.module.Class'.")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model {path!r} cannot be imported: {e}.") from e
    if not isinstance(obj, type):
        raise ValueError(f"model {path!r} is a {type(obj).__name__}, expected a class.")
    return obj


class _TapsComplete(Exception):
    """Raised by the last forward hook to end the forward pass early."""


class TorchScriptTaps:
    """Record the outputs of named sub-modules of a TorchScript module.

    TorchScript ignores Python forward hooks, so each named sub-module's output is captured in the
    compiled graph of its parent: a ``prim::SetAttr`` after every ``prim::CallMethod[forward]`` of that
    sub-module stores the output in a new attribute of the parent, read back after the forward pass.
    Parents that share a TorchScript class (same type) share the graph, so every instance of that
    class gets the attribute. Works for scripted and traced modules whose tapped sub-modules return a
    tensor.

    Args:
        module: a loaded TorchScript module (``torch.jit.load``); its graphs are changed in place.
        layer_names: dotted names of the sub-modules to tap.

    Raises:
        ValueError: a name that is not a sub-module, is never called from its parent's ``forward``,
            or returns something other than a tensor.
    """

    def __init__(self, module: torch.jit.ScriptModule, layer_names: Sequence[str]) -> None:
        self.module = module
        self.slots: list[tuple[Any, str]] = []
        patched: set[tuple[str, str]] = set()
        names = dict(module.named_modules())
        for name in layer_names:
            if not name or name not in names:
                raise ValueError(_unknown_layer(name, names))
            parent_name, _, child = name.rpartition(".")
            parent = names[parent_name] if parent_name else module
            attr = "_drd_tap_" + re.sub(r"\W", "_", child)
            type_name = parent._c._type().qualified_name()
            if (type_name, child) not in patched:
                self._patch(parent, child, attr, name)
                patched.add((type_name, child))
                for other in names.values():  # every instance of the parent's class runs the changed graph
                    if other is not parent and other._c._type().qualified_name() == type_name and not other._c.hasattr(attr):
                        other._c._register_attribute(attr, parent._c._type().getAttribute(attr), torch.empty(0))
            self.slots.append((parent, attr))

    @staticmethod
    def _patch(parent: Any, child: str, attr: str, name: str) -> None:
        graph = parent._c._get_method("forward").graph
        self_value = next(graph.inputs())
        calls = []

        def walk(block: Any) -> None:
            for node in block.nodes():
                for sub in node.blocks():
                    walk(sub)
                if node.kind() == "prim::CallMethod" and node.s("name") == "forward":
                    src = node.inputsAt(0).node()
                    if src.kind() == "prim::GetAttr" and src.s("name") == child and src.inputsAt(0).unique() == self_value.unique():
                        calls.append(node)

        walk(graph)
        if not calls:
            raise ValueError(f"layer '{name}' is never called in the forward() of its parent in the TorchScript model: "
                             "tap a module that the parent calls directly.")
        out_type = calls[0].output().type()
        if not out_type.isSubtypeOf(torch._C.TensorType.get()):
            raise ValueError(f"layer '{name}' of the TorchScript model returns {out_type}, expected a Tensor.")
        parent._c._register_attribute(attr, out_type, torch.empty(0))
        for node in calls:
            setter = graph.create("prim::SetAttr", [self_value, node.output()], 0)
            setter.s_("name", attr)
            setter.insertAfter(node)

    def reset(self) -> None:
        """Empty every slot (an empty 1D tensor marks a tap that did not fire)."""
        for parent, attr in self.slots:
            parent._c.setattr(attr, torch.empty(0))

    def read(self, layer_names: Sequence[str]) -> list[torch.Tensor]:
        """The recorded outputs, in the order of ``layer_names``, and empty the slots.

        Raises:
            RuntimeError: a tapped layer did not run in the last forward pass.
        """
        out = []
        for name, (parent, attr) in zip(layer_names, self.slots):
            value = parent._c.getattr(attr)
            if value.ndim == 1 and value.numel() == 0:
                raise RuntimeError(f"layer '{name}' did not run in the forward pass of the TorchScript teacher.")
            out.append(value)
        self.reset()
        return out


def _unknown_layer(name: str, modules: Mapping[str, nn.Module]) -> str:
    known = [n for n in modules if n]
    shown = ", ".join(known[:40]) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
    return f"layer_names: '{name}' is not a sub-module of the teacher model; its sub-modules are: {shown}."


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(output, Mapping):
        for item in output.values():
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"layer '{name}' returned {type(output).__name__} with no tensor in it: tap a layer that returns a tensor.")


class CustomTeacher(FrozenTeacher):
    """Any ``nn.Module`` (or TorchScript file) as a frozen DRD teacher tapped at ``layer_names``.

    Exactly one of ``model`` and ``torchscript_file`` must be given.

    Args:
        layer_names: dotted names of the sub-modules whose outputs are the teacher features (as in
            ``model.named_modules()``), shallow to deep; tuple/list outputs give their first tensor.
        model: the model (built by the config from a ``_target_``), a class, or an import path of a
            class built with ``model_kwargs``.
        model_kwargs: constructor arguments when ``model`` is a class or an import path.
        torchscript_file: a TorchScript file (``torch.jit.save``) instead of ``model``.
        checkpoint: state dict file loaded into ``model`` (``torch.load(weights_only=True)`` or
            ``.safetensors``; keys and shapes must match, see ``strip_prefixes``/``ignore_prefixes``).
        sha256: expected SHA-256 of ``checkpoint`` or ``torchscript_file``, checked before reading.
        container_keys: keys tried when the checkpoint wraps its state dict (``{"state_dict": ...}``).
        strip_prefixes: key prefixes removed from the file's keys (e.g. ``"module."`` of DDP files).
        ignore_prefixes: file keys dropped on purpose (after stripping; e.g. ``"head."``).
        allow_random: with neither ``checkpoint`` nor ``torchscript_file``, keep the model's own
            weights (tests, or a model whose constructor loads its weights) instead of refusing.
        spatial_dims: 2 or 3.
        in_channels: channels the model takes (grey inputs are repeated, colour inputs averaged).
        spatial_size: input size the teacher resizes to (``None``: the bundle's size).
        mean: per-channel mean of the model's normalisation (after scaling to ``[0, 1]``).
        std: per-channel standard deviation.
        input_range: intensity range of the bundle's tensor, mapped to ``[0, 1]``.
        window: CT window ``(low, high)`` in HU applied to the raw tensor instead.
        mode: resize mode (see :class:`TeacherPreprocessing`).
        channels_last: the taps are ``B x spatial x C`` maps (Swin, ConvNeXt in some libraries):
            move the channels first.
        token_grid: patch grid to arrange ``B x N x C`` token taps on (e.g. ``[14, 14]``); ``None``
            leaves tokens to the projectors (square / cubic grids).
        num_prefix_tokens: leading class/register tokens to drop with ``token_grid``.
        stop_after_taps: end an eager forward pass once every tap has fired.

    Raises:
        ValueError: conflicting or missing arguments, unknown ``layer_names``.
        CheckpointError: a missing file, a checksum mismatch or keys that do not match the model.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        model: nn.Module | type | str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        torchscript_file: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        container_keys: Sequence[str] = ("state_dict", "model", "model_state_dict"),
        strip_prefixes: Sequence[str] = ("module.",),
        ignore_prefixes: Sequence[str] = (),
        allow_random: bool = False,
        spatial_dims: int = 2,
        in_channels: int = 3,
        spatial_size: Sequence[int] | int | None = None,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        input_range: tuple[float, float] = (0.0, 1.0),
        window: tuple[float, float] | None = None,
        mode: str | None = None,
        channels_last: bool = False,
        token_grid: Sequence[int] | None = None,
        num_prefix_tokens: int | None = None,
        stop_after_taps: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(layer_names, str) or not layer_names:
            raise ValueError(f"layer_names must be a non-empty list of sub-module names, got {layer_names!r}.")
        if (model is None) == (torchscript_file is None or str(torchscript_file) == ""):
            raise ValueError("give exactly one of 'model' (a module, a class or an import path) and 'torchscript_file'.")
        self.layer_names = tuple(str(n) for n in layer_names)
        self.tap_names = self.layer_names
        self.spatial_dims = int(spatial_dims)
        self.channels_last = bool(channels_last)
        self.token_grid = tuple(int(g) for g in token_grid) if token_grid is not None else None
        self.num_prefix_tokens = num_prefix_tokens
        self.stop_after_taps = bool(stop_after_taps)
        self.preprocessing = TeacherPreprocessing(self.spatial_dims, in_channels, spatial_size, mean, std, input_range, window, mode)
        self._ts_taps: TorchScriptTaps | None = None
        if model is None:
            if checkpoint:
                raise ValueError("'checkpoint' is a state dict for 'model'; a TorchScript file carries its own weights.")
            path = Path(torchscript_file)  # type: ignore[arg-type]
            if not path.is_file():
                raise CheckpointError(f"TorchScript teacher file not found: '{path}'.")
            verify_sha256(path, sha256)
            try:
                self.model = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                raise CheckpointError(f"'{path}' is not a TorchScript file that torch.jit.load can read: {e}") from e
            self._ts_taps = TorchScriptTaps(self.model, self.layer_names)
        else:
            if isinstance(model, str):
                model = import_class(model)
            if isinstance(model, type):
                model = model(**dict(model_kwargs or {}))
            elif model_kwargs:
                raise ValueError("'model_kwargs' needs 'model' to be a class or an import path, not a built module.")
            if not isinstance(model, nn.Module):
                raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
            self.model = model
            modules = dict(model.named_modules())
            for name in self.layer_names:
                if not name or name not in modules:
                    raise ValueError(_unknown_layer(name, modules))
            if checkpoint:
                self._load(checkpoint, sha256, container_keys, strip_prefixes, ignore_prefixes)
            elif not allow_random:
                raise CheckpointError("CustomTeacher: no 'checkpoint' for the model's weights: pass the state dict file "
                                      "(teacher_checkpoint), a TorchScript file, or allow_random=True for a model that "
                                      "brings its own weights.")
            else:
                self.warn_random_weights()
            self._features: dict[str, torch.Tensor] = {}
            self._active = False
            for name in self.layer_names:
                modules[name].register_forward_hook(self._hook(name))
        self.freeze()

    def _load(self, checkpoint, sha256, container_keys, strip_prefixes, ignore_prefixes) -> None:
        strip, ignore = tuple(strip_prefixes or ()), tuple(ignore_prefixes or ())

        def key_map(key: str) -> str | None:
            for p in strip:
                if key.startswith(p):
                    key = key[len(p):]
            return None if ignore and key.startswith(ignore) else key

        obj = load_checkpoint_file(checkpoint, sha256=sha256 or None)
        state = extract_state_dict(obj, container_keys, path=str(checkpoint))
        from drd_components.teachers.checkpoint import load_state_dict_strict

        load_state_dict_strict(self.model, state, key_map=key_map, source=f"'{checkpoint}'")
        logger.info("CustomTeacher: loaded %d tensors from %s", len(state), checkpoint)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._active:  # the model is being run by someone else (another teacher sharing it)
                return
            self._features[name] = _first_tensor(output, name)
            if self.stop_after_taps and len(self._features) == len(self.layer_names):
                raise _TapsComplete

        return hook

    def _layout(self, feature: torch.Tensor) -> torch.Tensor:
        if self.channels_last and feature.ndim == self.spatial_dims + 2:
            feature = torch.movedim(feature, -1, 1)
        if feature.ndim == 3 and self.token_grid is not None:
            feature = tokens_to_map(feature, self.spatial_dims, self.token_grid, self.num_prefix_tokens)
        return feature.contiguous()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped layers' outputs for a preprocessed input.

        Raises:
            RuntimeError: a tapped layer did not run.
        """
        if self._ts_taps is not None:
            self._ts_taps.reset()
            self.model(x)
            return [self._layout(f) for f in self._ts_taps.read(self.layer_names)]
        self._features = {}
        self._active = True
        try:
            self.model(x)
        except _TapsComplete:
            pass
        finally:
            self._active = False
        missing = [n for n in self.layer_names if n not in self._features]
        if missing:
            raise RuntimeError(f"layer(s) {missing} did not run in the teacher's forward pass.")
        feats, self._features = [self._features[n] for n in self.layer_names], {}
        return [self._layout(f) for f in feats]
