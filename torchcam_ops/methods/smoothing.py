"""The two smoothing options of every CAM call (pytorch-grad-cam's ``eigen_smooth`` and ``aug_smooth``).

``eigen_smooth``: each map is replaced by the first principal component of the per-channel terms it
sums (the method's weighted channels), which keeps the structure most channels share and drops what
few channels add. ``aug_smooth``: test-time augmentation, the maps of flipped and rescaled copies of
each image mapped back onto it and averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.principal_component import first_component
from torchcam_ops.methods.targeting import Targets
from torchcam_ops.ops import cam_postprocess

#: The copies ``aug_smooth`` explains, as ``(horizontal flip, intensity factor)``: pytorch-grad-cam's
#: ``HorizontalFlip`` x ``Multiply([0.9, 1, 1.1])``, the image itself among them.
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)


def check_smoothing(
    eigen_smooth: object, aug_smooth: object, raw: bool, create_graph: bool = False, targets: Targets = None
) -> None:
    """The smoothing options of a call are bools; ``aug_smooth`` has no raw maps and takes no callable
    target with per-image state; ``eigen_smooth``'s maps carry no gradient."""
    for name, value in (("eigen_smooth", eigen_smooth), ("aug_smooth", aug_smooth)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    if eigen_smooth and create_graph:
        raise ValueError(
            "eigen_smooth: the principal component's derivative is undefined where singular values repeat "
            "(dead channels), so its maps carry no gradient; call with create_graph=False, or without eigen_smooth"
        )
    if aug_smooth and callable(getattr(targets, "sliced", None)):
        raise ValueError(
            "aug_smooth: the targets hold per-image state (they slice themselves), which does not follow the "
            "flipped and rescaled copies; pass class indices, or call without aug_smooth"
        )
    if aug_smooth and raw:
        raise ValueError(
            "aug_smooth: the maps of the augmented copies are averaged after normalisation, so there are "
            "no raw maps to return; call with raw=False, or without aug_smooth"
        )


def reduction_terms(activations: Tensor, gradients: Tensor, reduction: str) -> Tensor:
    """The per-channel terms ``[n, K, h, w]`` whose sum over K is ``cam_reduce(activations, gradients,
    reduction)``, computed in the maps' dtype (float32 for half precision)."""
    dtype = map_dtype(activations.dtype)
    a, g = activations.to(dtype), gradients.to(dtype)
    hw = (2, 3)
    if reduction == "layercam":
        return torch.relu(g) * a
    if reduction == "hirescam":
        return g * a
    if reduction == "gradcam_elementwise":
        return torch.relu(g * a)
    if reduction == "gradcam":
        weights = g.mean(hw, keepdim=True)
    elif reduction == "abscam":
        weights = g.abs().mean(hw, keepdim=True)
    elif reduction == "xgradcam":
        weights = (a * g).sum(hw, keepdim=True) / (a.sum(hw, keepdim=True) + 1e-7)
    elif reduction == "gradcam++":
        squared = g * g
        alpha = squared / (2 * squared + a.sum(hw, keepdim=True) * squared * g + 1e-6)
        weights = (torch.where(g != 0, alpha, torch.zeros_like(alpha)) * torch.relu(g)).sum(hw, keepdim=True)
    else:
        raise ValueError(f"reduction: no per-channel terms are known for {reduction!r}")
    return weights * a


def principal_maps(terms: Tensor) -> Tensor:
    """``eigen_smooth``'s maps ``[n, T, h, w]`` from the terms ``[n, T, K, h, w]``: per image and
    target, the terms' first principal component over the channels, with the side that correlates
    positively with their sum (the unsmoothed map) kept."""
    n, count = terms.shape[:2]
    return first_component(terms.flatten(0, 1)).reshape(n, count, *terms.shape[3:])


def augment(x: Tensor) -> Tensor:
    """The copies of :data:`AUGMENTATIONS`, copy-major: ``[len(AUGMENTATIONS) * N, C, H, W]``."""
    return torch.cat([(x.flip(-1) if flip else x) * factor for flip, factor in AUGMENTATIONS])


def targets_of_copies(targets: Targets, batch: int) -> Targets:
    """``targets`` of a batch of ``batch`` images, repeated for its augmented copies (per-image
    targets copy-major; a class for all images, None and callables unchanged: a callable scores the
    copies' output, and a spatial one, a mask or a box, is not flipped with them)."""
    copies = len(AUGMENTATIONS)
    if isinstance(targets, Tensor) and targets.dim() >= 1:
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets: expected a tensor of shape [N] or [N, T] with N = {batch}, got {list(targets.shape)}"
            )
        return targets.repeat(copies, *([1] * (targets.dim() - 1)))
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} class indices (one per image), got {len(targets)}")
        return list(targets) * copies
    return targets


def average_of_copies(maps: Tensor) -> Tensor:
    """The maps ``[A * N, ..., H, W]`` of the augmented copies mapped back (flipped copies flipped
    again), averaged per image and normalised again: ``[N, ..., H, W]`` in [0, 1]."""
    per_copy = maps.unflatten(0, (len(AUGMENTATIONS), -1))
    restored = [m.flip(-1) if flip else m for m, (flip, _) in zip(per_copy, AUGMENTATIONS)]
    mean = torch.stack(restored).mean(0)
    size = tuple(mean.shape[-2:])
    return cam_postprocess(mean.reshape(-1, *size), size, relu=False).reshape(mean.shape)
