"""Deep Reprogramming Distillation (DRD) components for MONAI bundles.

Sub-packages: ``losses`` (CKA, the DRD objective), ``networks`` (reprogramming projectors,
staged students), ``teachers`` (frozen foundation models and their checkpoint loaders),
``engines`` (the DRD trainer), ``handlers``, ``data``, ``metrics``, ``io``, ``bundle``.
"""

from drd_components import bundle, data, engines, handlers, io, losses, metrics, networks, teachers

__version__ = "0.1.0"
