"""TSGB and rectified modules, and model conversion as context managers."""

from torchcam_ops.nn.convert import find_classifier, guided, swap_modules, tsgb
from torchcam_ops.nn.modules import RectifiedReLU, TSGBAvgPool2d, TSGBBatchNorm2d, TSGBConv2d, TSGBLinear

__all__ = [
    "RectifiedReLU",
    "TSGBAvgPool2d",
    "TSGBBatchNorm2d",
    "TSGBConv2d",
    "TSGBLinear",
    "find_classifier",
    "guided",
    "swap_modules",
    "tsgb",
]
