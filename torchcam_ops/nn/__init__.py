"""TSGB and rectified modules, model conversion as context managers, and TSGB's relevance budget."""

from torchcam_ops.nn.budget import LayerRelevance, RelevanceBudget, relevance_budget
from torchcam_ops.nn.convert import find_classifier, guided, tsgb
from torchcam_ops.nn.modules import RectifiedReLU, TSGBAvgPool2d, TSGBBatchNorm2d, TSGBConv2d, TSGBLinear

__all__ = [
    "LayerRelevance",
    "RelevanceBudget",
    "RectifiedReLU",
    "TSGBAvgPool2d",
    "TSGBBatchNorm2d",
    "TSGBConv2d",
    "TSGBLinear",
    "find_classifier",
    "guided",
    "relevance_budget",
    "tsgb",
]
