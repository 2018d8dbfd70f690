"""Faithfulness and localisation metrics for saliency maps (definitions in docs/design.md)."""

from torchcam_ops.metrics.confidence import average_drop_increase, confidence_scores, drop_and_increase
from torchcam_ops.metrics.deletion_insertion import CurveResult, deletion, gaussian_blur, insertion
from torchcam_ops.metrics.pointing import (
    PointingResult,
    boxes_to_mask,
    energy_pointing_game,
    pointing_accuracy,
    pointing_game,
)
from torchcam_ops.metrics.randomization import (
    RandomizationResult,
    data_randomization,
    default_stages,
    layers_in_forward_order,
    model_randomization,
)
from torchcam_ops.metrics.remove_and_debias import PERCENTILES, ROADResult, noisy_linear_imputation, removal_masks, road
from torchcam_ops.metrics.similarity import constant_maps, hog_correlation, hog_features, spearman, ssim

__all__ = [
    "CurveResult",
    "PERCENTILES",
    "ROADResult",
    "noisy_linear_imputation",
    "removal_masks",
    "road",
    "RandomizationResult",
    "constant_maps",
    "data_randomization",
    "default_stages",
    "hog_correlation",
    "hog_features",
    "layers_in_forward_order",
    "model_randomization",
    "spearman",
    "ssim",
    "average_drop_increase",
    "boxes_to_mask",
    "confidence_scores",
    "deletion",
    "drop_and_increase",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion",
    "pointing_accuracy",
    "pointing_game",
    "PointingResult",
]
