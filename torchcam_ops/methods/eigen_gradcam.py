"""Eigen-Grad-CAM: the class-specific Eigen-CAM."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcam_ops.methods.base import BaseCAM, LayerEvidence
from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.principal_component import first_component


class EigenGradCAM(BaseCAM):
    r"""Eigen-Grad-CAM: the first principal component of the activations times their gradients.

    With :math:`X \in \mathbb{R}^{hw \times K}` the matrix of :math:`A_k G_k` of one image and one
    class (a row per pixel), centred per channel, :math:`\bar X = X - \mathbf{1}\mu^\top`, and
    :math:`v_1` its first right singular vector:

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\bar X v_1)))

    The sign of a singular vector is arbitrary; it is fixed as :class:`~torchcam_ops.methods.EigenCAM`
    fixes it, so that the projection correlates positively with the channels' mean of
    :math:`A_k G_k` (HiResCAM's map over K): the side of the component that carries the class's
    evidence is kept. pytorch-grad-cam's ``EigenGradCAM`` leaves the sign to its SVD, so its map is
    ours or the map of the other side. As for Eigen-CAM, the SVD waits for the device on a GPU.
    """

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        dtype = map_dtype(evidence.x.dtype)
        activations = evidence.activations.to(dtype)
        return torch.stack([first_component(activations * g.to(dtype)) for g in evidence.gradients], dim=1)
