"""Seg-Eigen-CAM (Chung and Ying 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcam_ops.methods.base import BaseCAM, LayerEvidence
from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.principal_component import projection_on_first_component


class SegEigenCAM(BaseCAM):
    r"""Seg-Eigen-CAM: Eigen-CAM of the activations weighted pixel by pixel by their absolute gradients,
    for segmentation models (and any other).

    With :math:`X` the matrix of :math:`|G_k| A_k` of one image and target (a row per pixel), centred
    per channel, and :math:`v_1` its first right singular vector, :math:`p = \bar X v_1`, turned so that
    its largest magnitude is positive (:math:`-p` where :math:`|\min p| > |\max p|`, the paper's
    Eq. 13):

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(p)))

    Targets as for every gradient method: class indices, or a callable such as
    :class:`~torchcam_ops.targets.SegmentationTarget` for a segmentation model's category over a mask.
    As for Eigen-CAM, the SVD waits for the device on a GPU.
    """

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        dtype = map_dtype(evidence.x.dtype)
        activations = evidence.activations.to(dtype)
        maps = []
        for gradient in evidence.gradients:
            weighted = gradient.to(dtype).abs() * activations
            projection = projection_on_first_component(weighted.flatten(2).transpose(1, 2))  # [n, hw]
            flip = projection.amin(1).abs() > projection.amax(1).abs()
            projection = torch.where(flip[:, None], -projection, projection)
            maps.append(projection.reshape(activations.shape[0], *activations.shape[2:]))
        return torch.stack(maps, dim=1)
