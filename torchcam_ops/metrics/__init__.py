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

__all__ = [
    "CurveResult",
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
