"""Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++ 2018)."""

from __future__ import annotations

from torch import Tensor, nn

from torchcam_ops.metrics._common import check_maps, check_targets, class_probabilities


def confidence_scores(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor | list[int] | int, *, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    r"""Per image, the softmax score Y of the target on x and its score O on
    :math:`x \odot \operatorname{Up}(M)` (the image masked by its saliency map), each ``[N]``."""
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    original = class_probabilities(model, x, targets, batch_size)
    masked = class_probabilities(model, x * maps[:, None].to(x.dtype), targets, batch_size)
    return original, masked


def drop_and_increase(original: Tensor, masked: Tensor) -> tuple[float, float]:
    r"""From the scores of :func:`confidence_scores`:

    .. math:: \text{average drop \%} = \frac{100}{N} \sum \frac{\max(0, Y - O)}{Y}, \qquad
              \text{increase in confidence \%} = \frac{100}{N} \sum [O > Y]
    """
    if original.shape != masked.shape or original.dim() != 1 or original.numel() == 0:
        raise ValueError(
            f"original and masked: expected two non-empty [N] tensors, got {list(original.shape)} "
            f"and {list(masked.shape)}"
        )
    drop = 100.0 * float(((original - masked).clamp_min(0) / original).mean())
    increase = 100.0 * float((masked > original).float().mean())
    return drop, increase


def average_drop_increase(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor | list[int] | int, *, batch_size: int = 64
) -> tuple[float, float]:
    """Average drop % and increase in confidence % of saliency maps (see :func:`drop_and_increase`)."""
    return drop_and_increase(*confidence_scores(model, x, maps, targets, batch_size=batch_size))
