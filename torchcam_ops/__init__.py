"""torchcam-ops: fast, faithful visual explanations of convolutional networks, as torch ops.

``import torchcam_ops`` is light (it imports neither torch nor the extension), so the package's pytest
plugin costs nothing to test suites that do not use it. The first use of the package (any attribute:
``torchcam_ops.cam_reduce``, ``torchcam_ops.methods``...) or ``import torchcam_ops.ops`` loads the
native extension, which registers ``torch.ops.torchcam_ops.*``. Without a usable build the package
still works in its pure-Python parts (metrics, the localisation benchmark), and the first op call
raises the build error with the command that fixes it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "cli",
    "evaluation",
    "localization",
    "methods",
    "metrics",
    "models",
    "nn",
    "ops",
    "reference",
    "targets",
    "report",
    "testing",
    "viz",
)
_FROM_OPS = ("CAM_METHODS", "cam_postprocess", "cam_reduce")

__all__ = [
    "CAM_METHODS",
    "__version__",
    "cam_postprocess",
    "cam_reduce",
    "explain",
    "methods",
    "metrics",
    "nn",
    "targets",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"torchcam_ops.{name}")
    if name in _FROM_OPS:
        return getattr(importlib.import_module("torchcam_ops.ops"), name)
    if name == "explain":
        return importlib.import_module("torchcam_ops.methods").explain
    raise AttributeError(f"module 'torchcam_ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_FROM_OPS, "explain"})
