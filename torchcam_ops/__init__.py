"""torchcam-ops: fast, faithful visual explanations of convolutional networks, as torch ops.

``import torchcam_ops`` loads the native extension, which registers ``torch.ops.torchcam_ops.*`` with
their fake kernels and autograd (as ``import torchvision`` registers ``torch.ops.torchvision``), so a
``torch.export``-ed program holding these ops loads after it. Without a usable build the package still
imports and works in its pure-Python parts (metrics, the localisation benchmark), and the first op call
raises the build error with the command that fixes it. The explainers, the CLI and the pictures are
imported when first used (``torchcam_ops.methods``, ``torchcam_ops.viz``...).

The package's pytest plugin is the top-level module ``pytest_torchcam_ops``, which imports nothing of
the package (nor torch) until one of its fixtures is used: test suites that do not use it pay nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Loads the extension (registering the ops) and registers their fake kernels.
from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce  # noqa: E402

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
    if name == "explain":
        return importlib.import_module("torchcam_ops.methods").explain
    raise AttributeError(f"module 'torchcam_ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, "explain"})
