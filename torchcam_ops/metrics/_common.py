"""Checks and helpers shared by the metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_maps(x: Tensor, maps: Tensor) -> Tensor:
    """Saliency maps ``[N, h, w]`` for a batch ``x`` ``[N, C, H, W]``, resized to ``[N, H, W]``."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D batch [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        raise ValueError(
            f"maps: expected [N, h, w] with N = {x.shape[0]}, got "
            f"{list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__}"
        )
    maps = maps.to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    if tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps


def check_targets(targets: Tensor | list[int] | int, batch: int, device: torch.device) -> Tensor:
    """One class index per image, as a LongTensor ``[N]``."""
    if isinstance(targets, int) and not isinstance(targets, bool):
        return torch.full((batch,), targets, dtype=torch.long, device=device)
    targets = torch.as_tensor(targets, device=device)
    if targets.dtype.is_floating_point or targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"targets: expected {batch} class indices, got {list(targets.shape)} {targets.dtype}")
    return targets.long()


@torch.no_grad()
def class_probabilities(model: nn.Module, images: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """softmax(model(images))[i, targets[i]], in chunks of ``batch_size`` images."""
    return class_scores(model, images, targets, batch_size, probabilities=True, dtype=torch.float32)


@torch.no_grad()
def class_scores(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    batch_size: int,
    *,
    probabilities: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """model(images)[i, targets[i]] (its softmax with ``probabilities``), in chunks of ``batch_size``
    images, computed in ``dtype`` (default: float32, float64 for a float64 model)."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        logits = logits.to(dtype or torch.promote_types(logits.dtype, torch.float32))
        scores = torch.softmax(logits, dim=1) if probabilities else logits
        out.append(scores.gather(1, targets[start : start + batch_size, None])[:, 0])
    return torch.cat(out)
