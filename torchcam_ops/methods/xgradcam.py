"""XGrad-CAM."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class XGradCAM(BaseCAM):
    r"""XGrad-CAM (Fu et al. 2020).

    .. math:: w_k = \frac{\sum_{ij} A_k^{ij} G_k^{ij}}{\sum_{ij} A_k^{ij} + 10^{-7}}, \qquad
              M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))
    """

    reduction = "xgradcam"
