"""torchcam-ops: fast, faithful visual explanations of convolutional networks, as torch ops.

Importing the package loads the native extension, which registers ``torch.ops.torchcam_ops.*``.
"""

from torchcam_ops import methods, metrics, nn
from torchcam_ops.methods import explain
from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce

__version__ = "0.1.0"

__all__ = ["CAM_METHODS", "__version__", "cam_postprocess", "cam_reduce", "explain", "methods", "metrics", "nn"]
