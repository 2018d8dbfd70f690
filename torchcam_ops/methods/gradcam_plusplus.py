"""Grad-CAM++."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (Chattopadhyay et al. 2018).

    .. math:: \alpha_k^{ij} = \frac{(G_k^{ij})^2}{2 (G_k^{ij})^2 + \sum_{ab} A_k^{ab} (G_k^{ij})^3 + 10^{-6}}
              \ (0 \text{ where } G = 0), \qquad w_k = \sum_{ij} \alpha_k^{ij} \mathrm{ReLU}(G_k^{ij}),
              \qquad M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))
    """

    reduction = "gradcam++"
