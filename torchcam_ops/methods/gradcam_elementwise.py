"""Element-wise Grad-CAM."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class GradCAMElementWise(BaseCAM):
    r"""Element-wise Grad-CAM: the positive part of each gradient-activation product.

    .. math:: M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k \mathrm{ReLU}(G_k \odot A_k))))
    """

    reduction = "gradcam_elementwise"
