"""Loads the compiled extension and refuses builds that do not match this package or this torch."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch

from torchcam_ops._source_hash import source_hash

BUILD_COMMAND = "pip install --no-build-isolation -e .   (from the repository root; or: ./run build)"
EXPECTED_OPS = (
    "cam_reduce", "cam_reduce_backward", "cam_postprocess", "cam_postprocess_backward",
    "rectified_relu", "rectified_relu_backward",
    "tsgb_linear", "tsgb_linear_backward", "tsgb_conv2d", "tsgb_conv2d_backward",
    "tsgb_batch_norm", "tsgb_batch_norm_backward", "tsgb_avg_pool2d", "tsgb_avg_pool2d_backward",
)
_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_DIR = _PACKAGE_DIR.parent / "csrc"


class ExtensionBuildError(ImportError):
    """The native extension is missing, stale, or was built for another torch."""


def _fail(problem: str) -> ExtensionBuildError:
    return ExtensionBuildError(
        f"torchcam_ops: {problem}\nBuild the extension with:\n    {BUILD_COMMAND}\n"
        "(set TORCHCAM_OPS_DISABLE_CUDA=1 to build the CPU kernels only)"
    )


def _cpu_supports_avx2() -> bool:
    check = getattr(torch.cpu, "_is_avx2_supported", None)
    return bool(check()) if check is not None else True


def load() -> ModuleType:
    try:
        from torchcam_ops import _C
    except ImportError as err:
        raise _fail(f"the native extension torchcam_ops._C could not be loaded ({err}).") from err

    if _C.torch_version != torch.__version__:
        raise _fail(f"the extension was built against torch {_C.torch_version}, but torch {torch.__version__} is installed.")
    if _C.cpu_capability == "AVX2" and not _cpu_supports_avx2():
        raise _fail("the extension was built with AVX2 CPU kernels and this CPU lacks AVX2; "
                    "rebuild with TORCHCAM_OPS_CPU_CAPABILITY=DEFAULT.")
    # In a source checkout, a build older than the sources would run old kernels silently.
    if _SOURCE_DIR.is_dir() and os.environ.get("TORCHCAM_OPS_ALLOW_STALE_BUILD") != "1":
        current = source_hash(_SOURCE_DIR)
        if _C.source_hash != current:
            raise _fail(
                f"the extension is stale: built from sources {_C.source_hash}, the checkout has {current} "
                "(set TORCHCAM_OPS_ALLOW_STALE_BUILD=1 to use it anyway)."
            )
    missing = [name for name in EXPECTED_OPS if not hasattr(torch.ops.torchcam_ops, name)]
    if missing:
        raise _fail(f"the extension does not register {', '.join(missing)}.")
    return _C
