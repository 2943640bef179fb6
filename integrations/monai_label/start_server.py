"""Start MONAI Label's server (``monailabel start_server ...``) in its own environment, with torch's CPU build.

Usage (the interpreter of the MONAI Label virtualenv, see README.md)::

    python integrations/monai_label/start_server.py start_server --app integrations/monai_label/drd_app \
        --studies /data/images --conf bundles /path/to/bundle[,/path/to/bundle2] --host 127.0.0.1 --port 8000

Arguments are those of ``monailabel``. The one thing this adds: monailabel imports ``torchvision.utils`` at
start-up (``monailabel.transform.post``), and torchvision's wheels on PyPI are built against torch's CUDA
build; next to the CPU build their C++ operators cannot load, and torchvision 0.28 then fails at import
because it registers fake kernels for ``torchvision::nms`` / ``qnms`` without checking that the operators
exist. Declaring the two schemas first lets torchvision import; its C++ operators (detection ops) stay
unavailable, and neither monailabel's server nor the DRD bundles use them.
"""

from __future__ import annotations

import sys

import torch


def _declare_missing_torchvision_ops() -> None:
    for name in ("nms", "qnms"):
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def main(argv: list[str]) -> None:
    """Run ``monailabel <argv>`` in this process."""
    _declare_missing_torchvision_ops()
    from monailabel.main import Main

    sys.argv = ["monailabel", *argv]
    Main().run()


if __name__ == "__main__":
    main(sys.argv[1:])
