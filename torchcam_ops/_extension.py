"""Loads the compiled extension and refuses builds that do not match this package or this torch.

``import torchcam_ops`` tries to load it (:func:`try_load`) but does not fail without it: the
pure-Python parts (metrics, the localisation benchmark) work, and the first op call raises the
:class:`ExtensionBuildError` that says what is wrong and which command fixes it
(:func:`assert_has_ops`, torchvision's ``_has_ops`` / ``_assert_has_ops`` pattern)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

from torchcam_ops._source_hash import source_hash

BUILD_COMMAND = "pip install --no-build-isolation -e .   (from the repository root; or: ./run build)"
EXPECTED_OPS = (
    "cam_reduce",
    "cam_reduce_backward",
    "cam_postprocess",
    "cam_postprocess_backward",
    "rectified_relu",
    "rectified_relu_backward",
    "tsgb_linear",
    "tsgb_linear_backward",
    "tsgb_conv2d",
    "tsgb_conv2d_backward",
    "tsgb_batch_norm",
    "tsgb_batch_norm_backward",
    "tsgb_avg_pool2d",
    "tsgb_avg_pool2d_backward",
    "tsgb_pass_through",
    "tsgb_pass_through_backward",
)
_PACKAGE_DIR = Path(__file__).resolve().parent
#: Written beside the extension by setup.py: the torch it was built for.
BUILD_FACTS = "_C_build.json"
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


def build_facts() -> dict:
    """What setup.py recorded beside the extension: ``torch`` (the version it was built for) and
    ``no_cuda_kernels`` (why the CUDA kernels were left out, or None); {} when nothing was recorded."""
    try:
        facts = json.loads((_PACKAGE_DIR / BUILD_FACTS).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def load() -> ModuleType:
    try:
        from torchcam_ops import _C
    except ImportError as err:
        built_for = build_facts().get("torch")
        if built_for is not None and built_for != torch.__version__:
            # The usual cause of undefined symbols: torch was upgraded or downgraded after the build.
            raise _fail(
                f"the extension was built for torch {built_for}, but torch {torch.__version__} is installed, "
                f"so it cannot be loaded ({err})."
            ) from err
        raise _fail(f"the native extension torchcam_ops._C could not be loaded ({err}).") from err

    if _C.torch_version != torch.__version__:
        raise _fail(
            f"the extension was built against torch {_C.torch_version}, but torch {torch.__version__} is installed."
        )
    if _C.cpu_capability == "AVX2" and not _cpu_supports_avx2():
        raise _fail(
            "the extension was built with AVX2 CPU kernels and this CPU lacks AVX2; "
            "rebuild with TORCHCAM_OPS_CPU_CAPABILITY=DEFAULT."
        )
    # In a source checkout, a build older than the sources would run old kernels silently.
    if _SOURCE_DIR.is_dir() and os.environ.get("TORCHCAM_OPS_ALLOW_STALE_BUILD") != "1":
        current = source_hash(_SOURCE_DIR)
        if _C.source_hash != current:
            raise _fail(
                f"the extension is stale: built from sources {_C.source_hash}, the checkout has {current} "
                "(set TORCHCAM_OPS_ALLOW_STALE_BUILD=1 to use it anyway)."
            )
    missing = [name for name in EXPECTED_OPS if not hasattr(torch.ops.torchcam_ops, name)]
    if not hasattr(_C, "cam_methods"):
        missing.append("cam_methods")
    if missing:
        raise _fail(f"the extension does not register {', '.join(missing)}.")
    if not _C.with_cuda and torch.cuda.is_available():
        why = build_facts().get("no_cuda_kernels") or "built without them"
        warnings.warn(
            f"torchcam_ops: this build has no CUDA kernels ({why}), so the ops run on CPU tensors only. "
            f"Rebuild on this machine for them: {BUILD_COMMAND}",
            stacklevel=2,
        )
    return _C


def cam_methods() -> tuple[str, ...]:
    """The method names of cam_reduce, from the loaded extension (its ``kCamMethods``)."""
    assert_has_ops()
    from torchcam_ops import _C

    return tuple(_C.cam_methods)


_load_error: ExtensionBuildError | None = None
_loaded = False


def try_load() -> bool:
    """Loads the extension once; False (and the error kept for :func:`assert_has_ops`) when it
    cannot be used."""
    global _load_error, _loaded
    if not _loaded and _load_error is None:
        try:
            load()
            _loaded = True
        except ExtensionBuildError as err:
            _load_error = err
    return _loaded


def has_ops() -> bool:
    return try_load()


def assert_has_ops() -> None:
    """Raises the reason the extension cannot be used, if it cannot."""
    if not try_load():
        raise ExtensionBuildError(str(_load_error)) from _load_error
