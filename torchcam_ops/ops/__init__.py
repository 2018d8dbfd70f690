"""Typed wrappers over ``torch.ops.torchcam_ops.*``, with their fake kernels.

Importing this package loads the native extension, which defines and implements the ops (autograd
included), and registers what torch.compile and torch.export need besides: a fake kernel per op.
One module per family, each with its wrappers first and its fake kernels after them:

- :mod:`torchcam_ops.ops.cam`: ``cam_reduce``, ``cam_postprocess``;
- :mod:`torchcam_ops.ops.tsgb`: ``rectified_relu`` and the TSGB rules ``tsgb_linear``, ``tsgb_conv2d``,
  ``tsgb_batch_norm``, ``tsgb_avg_pool2d``, ``tsgb_pass_through``;
- :mod:`torchcam_ops.ops.factorization`: ``nmf_sweep`` (Deep Feature Factorization's solver step).
"""

from torchcam_ops.ops._registration import HAS_OPS
from torchcam_ops.ops.cam import CAM_METHODS, cam_postprocess, cam_reduce, check_output_size, set_max_output_elements
from torchcam_ops.ops.factorization import nmf_sweep
from torchcam_ops.ops.tsgb import (
    RELU_MODES,
    int_pair,
    rectified_relu,
    tsgb_avg_pool2d,
    tsgb_batch_norm,
    tsgb_conv2d,
    tsgb_linear,
    tsgb_pass_through,
)

__all__ = [
    "CAM_METHODS",
    "HAS_OPS",
    "RELU_MODES",
    "cam_postprocess",
    "cam_reduce",
    "check_output_size",
    "int_pair",
    "nmf_sweep",
    "rectified_relu",
    "set_max_output_elements",
    "tsgb_avg_pool2d",
    "tsgb_batch_norm",
    "tsgb_conv2d",
    "tsgb_linear",
    "tsgb_pass_through",
]


def __getattr__(name: str):
    # the output limit is a variable of ops.cam (set_max_output_elements changes it there)
    if name == "MAX_OUTPUT_ELEMENTS":
        from torchcam_ops.ops import cam

        return cam.MAX_OUTPUT_ELEMENTS
    raise AttributeError(f"module 'torchcam_ops.ops' has no attribute {name!r}")
