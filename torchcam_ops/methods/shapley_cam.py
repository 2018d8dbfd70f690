"""Shapley-CAM (Cai et al. 2025)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from torchcam_ops.methods.base import BaseCAM, LayerEvidence
from torchcam_ops.methods.calls import map_dtype


class ShapleyCAM(BaseCAM):
    r"""Shapley-CAM: Grad-CAM whose gradient is corrected by half the Hessian-vector product with the
    activations, a second-order estimate of each channel's Shapley value.

    With :math:`G = \partial y_c / \partial A` and :math:`H A = \partial (G \cdot A) / \partial A`
    (:math:`A` held constant in the product), the Hessian of the class score with respect to the
    layer's output applied to the activations:

    .. math:: w_k = \frac{1}{hw} \sum_{ij} \left(G_k - \tfrac{1}{2} (H A)_k\right)^{ij}, \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    Where everything after the layer is piecewise linear in it (ReLU networks with class logits as
    targets), :math:`H A = 0` and the map is Grad-CAM's; smooth activations (SiLU, GELU, Hardswish),
    softmax targets and attention give it its own. The Hessian-vector product is one more backward
    pass per target through the graph of the first one (``torch.autograd.grad`` with
    ``create_graph``).
    """

    second_order: ClassVar[bool] = True

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        dtype = map_dtype(evidence.x.dtype)
        weights = []
        for gradient, output_gradient in zip(evidence.gradients, evidence.output_gradients):
            product = None
            # a gradient without a graph (the layers after the target are linear and their parameters
            # frozen) has no second derivative: H A = 0
            if output_gradient.requires_grad:
                # in the layer's own layout: H applies to all of A, a ViT's class token included
                (product,) = torch.autograd.grad(
                    output_gradient,
                    evidence.output,
                    grad_outputs=evidence.output.detach(),
                    retain_graph=True,
                    create_graph=True,
                    allow_unused=True,
                )
            if product is not None:
                gradient = gradient - 0.5 * self._channel_maps(product, evidence.layer.name)
            weights.append(gradient.to(dtype).mean((2, 3)))
        return torch.stack(weights, dim=1)
