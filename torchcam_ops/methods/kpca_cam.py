"""KPCA-CAM: Eigen-CAM with kernel PCA (Karmani et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.principal_component import oriented

Kernel = Literal["sigmoid", "rbf", "poly", "linear", "cosine"]
KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


class KPCACAM(GradientFreeCAM):
    r"""KPCA-CAM: the layer's activations projected on the first principal component of a kernel PCA.

    With the activations of one image as rows :math:`x_i \in \mathbb{R}^K` per pixel, centred per
    channel, the kernel matrix :math:`\mathcal{K}_{ij} = k(x_i, x_j)` over the :math:`hw` pixels is
    centred in feature space, :math:`\tilde{\mathcal{K}} = (I - \tfrac{1}{hw}\mathbf{1}\mathbf{1}^\top)
    \mathcal{K} (I - \tfrac{1}{hw}\mathbf{1}\mathbf{1}^\top)`, and with :math:`(\lambda_1, v_1)` its
    largest eigenpair the projection is :math:`p = \sqrt{\lambda_1}\, v_1`:

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(p)))

    ``kernel`` (scikit-learn's definitions and defaults): ``"sigmoid"`` (default)
    :math:`\tanh(\gamma \langle x, y\rangle + 1)`, ``"rbf"`` :math:`\exp(-\gamma \|x - y\|^2)`,
    ``"poly"`` :math:`(\gamma \langle x, y\rangle + 1)^3`, ``"linear"`` :math:`\langle x, y\rangle`
    (Eigen-CAM's map), ``"cosine"``; ``gamma`` defaults to :math:`1/K`. The sign of an eigenvector is
    arbitrary; it is fixed as :class:`~torchcam_ops.methods.EigenCAM` fixes it (the projection
    correlates positively with the channels' mean activation). pytorch-grad-cam's ``KPCA_CAM`` (through
    scikit-learn's ``KernelPCA``) makes the entry of largest magnitude positive instead, so its map is
    ours or the other side's. The map does not depend on the class: ``targets`` only sets how many
    maps per image are returned. The kernel matrix, :math:`(hw)^2` per image, is computed and
    decomposed in float64: 4.9 MB at 28x28.
    """

    needs_class_indices = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        kernel: Kernel = "sigmoid",
        gamma: float | None = None,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {list(KERNELS)}, got {kernel!r}")
        if gamma is not None and (
            isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf")
        ):
            raise ValueError(f"gamma: expected a positive finite number or None, got {gamma!r}")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.kernel, self.gamma = kernel, gamma

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        activations = evidence.activations
        # in float64: the top eigenvector of a float32 kernel matrix of 16 x 16 pixels is only good to
        # ~2e-4 of the map (and a GPU's float32 eigh no better); the matrix is small
        pixels = activations.double().flatten(2).transpose(1, 2)  # [n, hw, K]
        centred = pixels - pixels.mean(1, keepdim=True)
        matrix = self._kernel_matrix(centred)
        ones = torch.full_like(matrix, 1.0 / matrix.shape[-1])
        matrix = matrix - ones @ matrix - matrix @ ones + ones @ matrix @ ones
        values, vectors = torch.linalg.eigh(matrix)
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # [n, hw]
        maps = oriented(projection, pixels).reshape(activations.shape[0], 1, *activations.shape[2:])
        return maps.to(activations.dtype).expand(-1, evidence.targets, -1, -1)

    def _kernel_matrix(self, rows: Tensor) -> Tensor:
        """``k(x_i, x_j)`` for the rows ``[n, hw, K]`` of each image, ``[n, hw, hw]``."""
        gamma = self.gamma if self.gamma is not None else 1.0 / rows.shape[-1]
        inner = rows @ rows.transpose(1, 2)
        if self.kernel == "linear":
            return inner
        if self.kernel == "sigmoid":
            return torch.tanh(gamma * inner + 1.0)
        if self.kernel == "poly":
            return (gamma * inner + 1.0) ** 3
        if self.kernel == "rbf":
            squared = rows.square().sum(-1)
            return torch.exp(-gamma * (squared[:, :, None] + squared[:, None, :] - 2 * inner).clamp_min(0))
        # cosine: rows made unit first, so that a zero row (a dead layer's pixel) gives 0, not 0 / 0
        unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
        return unit @ unit.transpose(1, 2)
