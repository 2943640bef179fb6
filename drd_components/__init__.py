"""Deep Reprogramming Distillation (DRD) components for MONAI bundles.

Sub-packages: ``losses`` (CKA, the DRD objective), ``networks`` (reprogramming projectors,
staged students), ``teachers`` (frozen foundation models and their checkpoint loaders),
``engines`` (the DRD trainer), ``handlers``, ``data``.
"""

from drd_components import data, engines, handlers, losses, networks, teachers

__version__ = "0.1.0"
