"""Plain-PyTorch references of what the ops and explainers compute, written independently of the
kernels: the CAM ops (:mod:`.cam`), the TSGB rules (:mod:`.tsgb`) and GIG-CAM's path for one image
(:mod:`.gig_cam`). The tests check the library against them (in float64), the benchmarks and the demo
time the fused ops against their eager formulas. They ship with the package so that anyone can check
a result the same way.
"""

from torchcam_ops.reference.cam import reference_cam, reference_normalize, reference_postprocess
from torchcam_ops.reference.gig_cam import reference_gig_cam
from torchcam_ops.reference.tsgb import (
    reference_avg_pool,
    reference_batch_norm_grad,
    reference_conv_grad,
    reference_linear_grad,
    reference_relevance_grad,
    reference_tsgb_maps,
    reference_tsgb_model,
)

__all__ = [
    "reference_avg_pool",
    "reference_batch_norm_grad",
    "reference_cam",
    "reference_conv_grad",
    "reference_gig_cam",
    "reference_linear_grad",
    "reference_normalize",
    "reference_postprocess",
    "reference_relevance_grad",
    "reference_tsgb_maps",
    "reference_tsgb_model",
]
