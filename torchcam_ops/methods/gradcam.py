"""Grad-CAM."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class GradCAM(BaseCAM):
    r"""Grad-CAM (Selvaraju et al. 2017).

    .. math:: w_k = \frac{1}{hw} \sum_{ij} G_k^{ij}, \qquad
              M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))
    """

    reduction = "gradcam"
