"""Eigen-CAM (Muhammad and Yeasin 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM


class EigenCAM(GradientFreeCAM):
    r"""Eigen-CAM: the layer's activations projected on their first principal component.

    With the activations of one image as a matrix :math:`X \in \mathbb{R}^{hw \times K}` (a row per
    pixel), centred per channel, :math:`\bar X = X - \mathbf{1}\mu^\top`, and :math:`v_1` the first
    right singular vector of :math:`\bar X`:

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\bar X v_1)))

    A singular vector's sign is arbitrary, and ReLU keeps one side of the projection, so the sign is
    fixed by a rule: the projection :math:`p = \bar X v_1` correlates positively with the channels'
    mean activation :math:`m = X\mathbf{1}/K` (:math:`\langle p, m - \bar m\rangle > 0`); when that
    correlation is 0, the entry of ``p`` with the largest magnitude (the first, on ties) is positive.
    The map does not depend on the class or on the model's output, which may be anything (detection
    and segmentation models too): ``targets`` only sets how many maps per image are returned (T for
    ``[N, T]`` indices, else one), and a callable target is not called. On a GPU the SVD waits for the
    device (cuSOLVER reports its status to the host): Eigen-CAM is the one explainer whose call
    synchronises, and it cannot be captured in a CUDA graph.
    """

    needs_class_indices = False
    class_specific = False

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        maps = first_component(evidence.activations)[:, None]
        return maps.expand(-1, evidence.targets, -1, -1)


def first_component(channel_maps: Tensor) -> Tensor:
    """The channel maps ``[n, K, h, w]`` of each image projected on their first principal component,
    ``[n, h, w]``, with the sign of the projection that correlates positively with the channels' mean
    (the first entry of largest magnitude positive when that correlation is 0); see :class:`EigenCAM`."""
    pixels = channel_maps.flatten(2).transpose(1, 2)  # [n, hw, K]
    return oriented(projection_on_first_component(pixels), pixels).reshape(
        channel_maps.shape[0], *channel_maps.shape[2:]
    )


def projection_on_first_component(pixels: Tensor) -> Tensor:
    """The rows ``[n, hw, K]`` of each image, centred per column, projected on their first right
    singular vector: ``[n, hw]``, of arbitrary sign."""
    centred = pixels - pixels.mean(1, keepdim=True)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ right[:, 0, :, None])[..., 0]


def oriented(projection: Tensor, pixels: Tensor) -> Tensor:
    """A projection ``[n, hw]`` whose sign is arbitrary (a principal component's), turned so that it
    correlates positively with the channels' mean of ``pixels`` ``[n, hw, K]``; where that correlation
    is 0, so that its first entry of largest magnitude is positive."""
    mean_activation = pixels.mean(2)
    correlation = (projection * (mean_activation - mean_activation.mean(1, keepdim=True))).sum(1)
    largest = projection.gather(1, projection.abs().argmax(1, keepdim=True))[:, 0]
    sign = torch.where(correlation != 0, correlation.sign(), largest.sign())
    return projection * sign[:, None]
