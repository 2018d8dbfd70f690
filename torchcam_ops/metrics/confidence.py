"""Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++ 2018)."""

from __future__ import annotations

from torch import Tensor, nn

from torchcam_ops.metrics._common import check_maps, check_targets, class_probabilities


def average_drop_increase(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor | list[int] | int, *,
                          batch_size: int = 64) -> tuple[float, float]:
    r"""With Y the softmax score of the target on x and O its score on :math:`x \odot \operatorname{Up}(M)`:

    .. math:: \text{average drop \%} = \frac{100}{N} \sum \frac{\max(0, Y - O)}{Y}, \qquad
              \text{increase in confidence \%} = \frac{100}{N} \sum [O > Y]
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    original = class_probabilities(model, x, targets, batch_size)
    masked = class_probabilities(model, x * maps[:, None].to(x.dtype), targets, batch_size)
    drop = 100.0 * float(((original - masked).clamp_min(0) / original).mean())
    increase = 100.0 * float((masked > original).float().mean())
    return drop, increase
