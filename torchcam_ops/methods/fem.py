"""FEM, the feature explanation method (Fuad et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape


class FEM(GradientFreeCAM):
    r"""FEM: each channel weighted by the share of its pixels that stand out, by a k-sigma rule.

    With :math:`\mu_k` and :math:`\sigma_k` the mean and the (population) standard deviation of
    channel k over its :math:`hw` pixels:

    .. math:: w_k = \frac{1}{hw} \sum_{ij} [A_k^{ij} > \mu_k + k\,\sigma_k], \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    with ``k`` = 2 by default. The map does not depend on the class: ``targets`` only sets how many
    maps per image are returned, and the model's output may be anything.
    """

    needs_class_indices = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        k: float = 2.0,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k == k or abs(k) == float("inf"):
            raise ValueError(f"k: expected a finite number, got {k!r}")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.k = float(k)

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        activations = evidence.activations
        mean = activations.mean((2, 3), keepdim=True)
        std = activations.std((2, 3), correction=0, keepdim=True)
        weights = (activations > mean + self.k * std).to(activations.dtype).mean((2, 3))  # [n, K]
        maps = torch.einsum("nk,nkhw->nhw", weights, activations)[:, None]
        return maps.expand(-1, evidence.targets, -1, -1)
