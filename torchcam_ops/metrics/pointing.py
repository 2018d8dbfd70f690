"""Pointing game (Zhang et al. 2016) and energy-based pointing game (Wang et al., Score-CAM 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


def boxes_to_mask(
    boxes: Sequence[Sequence[float]] | Tensor, height: int, width: int, device: torch.device | None = None
) -> Tensor:
    """The union of boxes ``(x0, y0, x1, y1)`` (pixel coordinates, x1 and y1 exclusive, clipped to
    the image) as a bool mask ``[height, width]``.

    Args:
        boxes: one box ``(x0, y0, x1, y1)``, a sequence of boxes, or a tensor of them ``[B, 4]``; fractional
            coordinates cover every pixel the box reaches into.
        height: the mask's height in pixels.
        width: the mask's width in pixels.
        device: where the mask is made; None for torch's default device.

    Returns:
        A bool tensor ``[height, width]``, True inside at least one box.

    Raises:
        ValueError: a box has ``x1 <= x0`` or ``y1 <= y0``.
    """
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for box in torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist():
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"boxes: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
        ys = slice(max(int(y0), 0), min(int(-(-y1 // 1)), height))
        xs = slice(max(int(x0), 0), min(int(-(-x1 // 1)), width))
        mask[ys, xs] = True
    return mask


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"maps and masks: expected the same [N, H, W] shape, got {list(maps.shape)} and {list(masks.shape)}"
        )


class PointingResult(NamedTuple):
    """What :func:`pointing_game` returns (a tuple, so ``accuracy, per_class, hits = ...`` works)."""

    accuracy: float  # the mean of per-class accuracies
    per_class: dict[int, float]  # each class's hit rate
    hits: Tensor  # [N] bool, one per map


def pointing_game(
    maps: Tensor, masks: Tensor, classes: Tensor | Sequence[int], tolerance: float | None = None
) -> PointingResult:
    """Hit when the map's maximum lies within ``tolerance`` pixels (Euclidean) of a ground-truth
    pixel of the class. ``tolerance`` defaults to 15 px at 224 px, scaled with the shorter side.

    Args:
        maps: saliency maps ``[N, H, W]``.
        masks: ground-truth pixels of each map's class ``[N, H, W]`` (boxes or instance masks).
        classes: the class of each map ``[N]``, for the per-class accuracies.
        tolerance: the hit radius in pixels.

    Returns:
        :class:`PointingResult`: the mean of per-class accuracies, the per-class accuracies, the hits.
    """
    _check(maps, masks)
    batch, height, width = maps.shape
    tol = 15.0 * min(height, width) / 224 if tolerance is None else float(tolerance)
    peak = maps.flatten(1).argmax(1)
    py, px = (peak // width).float(), (peak % width).float()
    ys = torch.arange(height, device=maps.device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=maps.device, dtype=torch.float32)[None, None, :]
    near = (ys - py[:, None, None]) ** 2 + (xs - px[:, None, None]) ** 2 <= tol**2
    hits = (near & masks.bool()).flatten(1).any(1)
    accuracy, per_class = pointing_accuracy(hits, classes)
    return PointingResult(accuracy, per_class, hits)


def pointing_accuracy(hits: Tensor, classes: Tensor | Sequence[int]) -> tuple[float, dict[int, float]]:
    """The mean of per-class hit rates, and the per-class rates, from hits ``[N]`` and classes ``[N]``.

    Args:
        hits: whether each map hit, a bool tensor ``[N]`` (as :func:`pointing_game` returns it).
        classes: the class of each map ``[N]``, a tensor or a sequence of ints.

    Returns:
        ``(accuracy, per_class)``: the mean of the per-class hit rates, and a dict class -> hit rate.

    Raises:
        ValueError: ``hits`` and ``classes`` are not two non-empty ``[N]`` tensors of the same length.
    """
    classes = torch.as_tensor(classes, device=hits.device)
    if hits.dim() != 1 or classes.shape != hits.shape or hits.numel() == 0:
        raise ValueError(
            f"hits and classes: expected two non-empty [N] tensors, got {list(hits.shape)} and {list(classes.shape)}"
        )
    per_class = {int(c): float(hits[classes == c].float().mean()) for c in classes.unique().tolist()}
    return sum(per_class.values()) / len(per_class), per_class


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's energy inside the ground truth: sum(map * mask) / sum(map), ``[N]``
    (0 for an all-zero map).

    Args:
        maps: saliency maps ``[N, H, W]`` (e.g. an explainer's maps, in [0, 1]).
        masks: ground-truth pixels of each map's class ``[N, H, W]``, bool or 0/1 (e.g. from
            :func:`boxes_to_mask`).

    Returns:
        The shares, a tensor ``[N]`` of the dtype of ``maps``.

    Raises:
        ValueError: ``maps`` is not 3-D, or ``masks`` has another shape.
    """
    _check(maps, masks)
    inside = (maps * masks.to(maps.dtype)).flatten(1).sum(1)
    total = maps.flatten(1).sum(1)
    return torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )
