"""The first principal component of channel maps, with a fixed side: Eigen-CAM's projection, which
Eigen-Grad-CAM, Seg-Eigen-CAM and every method's ``eigen_smooth`` share."""

from __future__ import annotations

import torch
from torch import Tensor


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
