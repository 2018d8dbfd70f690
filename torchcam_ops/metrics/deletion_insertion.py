"""Deletion and insertion (Petsiuk et al., RISE 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.metrics._common import check_maps, check_targets, class_probabilities


@dataclass
class CurveResult:
    """Per-image curves and their areas. ``fractions[k]`` is the share of pixels changed after k steps."""

    fractions: Tensor  # [S + 1]
    scores: Tensor  # [N, S + 1], softmax probability of the target class
    auc: Tensor  # [N], trapezoid rule over fractions in [0, 1]
    step: int
    substrate: str


def gaussian_blur(x: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur with zero padding, as in the RISE reference code.

    Args:
        x: the images ``[N, C, H, W]``, floating point; each channel is blurred on its own.
        kernel_size: the number of taps of the kernel in each direction (default 11).
        sigma: the standard deviation of the Gaussian, in pixels (default 5.0).

    Returns:
        The blurred images, of the dtype and device of ``x`` and, for an odd ``kernel_size``, of its shape.
    """
    coords = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    weights = torch.exp(-(coords**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    channels = x.shape[1]
    horizontal = weights.reshape(1, 1, 1, -1).expand(channels, 1, 1, kernel_size)
    vertical = weights.reshape(1, 1, -1, 1).expand(channels, 1, kernel_size, 1)
    x = F.conv2d(x, horizontal, padding=(0, kernel_size // 2), groups=channels)
    return F.conv2d(x, vertical, padding=(kernel_size // 2, 0), groups=channels)


def _curves(
    model: nn.Module,
    start: Tensor,
    finish: Tensor,
    maps: Tensor,
    targets: Tensor,
    step: int,
    batch_size: int,
    substrate: str,
) -> CurveResult:
    """Moves ``step`` pixels at a time from ``start`` to ``finish`` in decreasing saliency order."""
    batch, _, height, width = start.shape
    pixels = height * width
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step: expected a positive number of pixels, got {step!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    steps = math.ceil(pixels / step)
    # One ranking per image: rank[n, p] is pixel p's position in decreasing saliency.
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=maps.device).expand(batch, -1))
    counts = torch.clamp(torch.arange(steps + 1, device=maps.device) * step, max=pixels)
    # All (image, step) pairs, perturbed and scored batch_size at a time: pair j is image j // (S + 1)
    # after counts[j % (S + 1)] pixels changed.
    pairs = batch * (steps + 1)
    scores = torch.empty(pairs, device=maps.device)
    for first in range(0, pairs, batch_size):
        j = torch.arange(first, min(first + batch_size, pairs), device=maps.device)
        image, k = j // (steps + 1), counts[j % (steps + 1)]
        changed = (rank[image] < k[:, None]).reshape(-1, 1, height, width)
        perturbed = torch.where(changed, finish[image], start[image])
        scores[first : first + j.shape[0]] = class_probabilities(model, perturbed, targets[image], batch_size)
    scores = scores.reshape(batch, steps + 1)
    fractions = counts.float() / pixels
    auc = torch.trapezoid(scores, fractions, dim=1)
    return CurveResult(fractions, scores, auc, step, substrate)


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor | list[int] | int,
    *,
    step: int = 224,
    batch_size: int = 64,
) -> CurveResult:
    """Deletion: the most salient pixels are set to 0 (in the model's normalised input) ``step`` at a
    time; the softmax probability of the target is recorded; lower AUC is better.

    Args:
        model: the classifier, mapping a batch ``[n, C, H, W]`` to logits ``[n, classes]``.
        x: the images ``[N, C, H, W]``, as the model takes them.
        maps: saliency maps ``[N, h, w]``, resized bilinearly to ``H x W`` when their size differs; only
            the order of their pixels counts (equal values are taken in pixel order).
        targets: the class of each image: one int for all images, or N class indices (a list or an
            integer tensor ``[N]``).
        step: the number of pixels deleted per step, a positive int (default 224).
        batch_size: the number of perturbed images per forward pass, a positive int (default 64).

    Returns:
        :class:`CurveResult` with S = ceil(H * W / step) steps: ``fractions`` ``[S + 1]`` (the share of
        pixels changed after 0, 1, ..., S steps), ``scores`` ``[N, S + 1]`` (the target's softmax probability
        there, the first on x itself), ``auc`` ``[N]`` (the area under each curve), ``step``, and
        ``substrate`` ``'zeros'``.

    Raises:
        ValueError: ``x`` is not a 4-D batch, ``maps`` is not ``[N, h, w]``, ``targets`` is not one int or
            N integer class indices, or ``step`` or ``batch_size`` is not a positive int.
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    return _curves(model, x, torch.zeros_like(x), maps, targets, step, batch_size, "zeros")


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor | list[int] | int,
    *,
    step: int = 224,
    batch_size: int = 64,
) -> CurveResult:
    """Insertion: the most salient pixels of x are inserted into a blurred copy (11x11 Gaussian,
    sigma 5) ``step`` at a time; higher AUC is better.

    Args:
        model: the classifier, mapping a batch ``[n, C, H, W]`` to logits ``[n, classes]``.
        x: the images ``[N, C, H, W]``, as the model takes them.
        maps: saliency maps ``[N, h, w]``, resized bilinearly to ``H x W`` when their size differs; only
            the order of their pixels counts (equal values are taken in pixel order).
        targets: the class of each image: one int for all images, or N class indices (a list or an
            integer tensor ``[N]``).
        step: the number of pixels inserted per step, a positive int (default 224).
        batch_size: the number of perturbed images per forward pass, a positive int (default 64).

    Returns:
        :class:`CurveResult` with S = ceil(H * W / step) steps: ``fractions`` ``[S + 1]`` (the share of
        pixels changed after 0, 1, ..., S steps), ``scores`` ``[N, S + 1]`` (the target's softmax probability
        there, the first on the blurred copy), ``auc`` ``[N]`` (the area under each curve), ``step``, and
        ``substrate`` ``'blur(11, sigma=5)'``.

    Raises:
        ValueError: ``x`` is not a 4-D batch, ``maps`` is not ``[N, h, w]``, ``targets`` is not one int or
            N integer class indices, or ``step`` or ``batch_size`` is not a positive int.
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    return _curves(model, gaussian_blur(x), x, maps, targets, step, batch_size, "blur(11, sigma=5)")
