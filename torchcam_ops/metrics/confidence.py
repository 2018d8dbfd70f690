"""Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++ 2018)."""

from __future__ import annotations

from torch import Tensor, nn

from torchcam_ops.metrics._common import check_maps, check_targets, class_probabilities


def confidence_scores(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor | list[int] | int, *, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    r"""Per image, the softmax score Y of the target on x and its score O on
    :math:`x \odot \operatorname{Up}(M)` (the image masked by its saliency map), each ``[N]``.

    Args:
        model: the classifier, mapping a batch ``[n, C, H, W]`` to logits ``[n, classes]``.
        x: the images ``[N, C, H, W]``, as the model takes them.
        maps: saliency maps ``[N, h, w]`` (e.g. an explainer's maps, in [0, 1]), resized bilinearly to
            ``H x W`` when their size differs.
        targets: the class of each image: one int for all images, or N class indices (a list or an
            integer tensor ``[N]``).
        batch_size: the number of images per forward pass (default 64).

    Returns:
        ``(original, masked)``: the softmax probabilities Y and O of each image's target class, two
        float32 tensors ``[N]``.

    Raises:
        ValueError: ``x`` is not a 4-D batch, ``maps`` is not ``[N, h, w]``, or ``targets`` is not one
            int or N integer class indices.
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    original = class_probabilities(model, x, targets, batch_size)
    masked = class_probabilities(model, x * maps[:, None].to(x.dtype), targets, batch_size)
    return original, masked


def drop_and_increase(original: Tensor, masked: Tensor) -> tuple[float, float]:
    r"""From the scores of :func:`confidence_scores`:

    .. math:: \text{average drop \%} = \frac{100}{N} \sum \frac{\max(0, Y - O)}{Y}, \qquad
              \text{increase in confidence \%} = \frac{100}{N} \sum [O > Y]

    Args:
        original: the scores Y of the original images, ``[N]``.
        masked: the scores O of the masked images, ``[N]``.

    Returns:
        ``(average drop %, increase in confidence %)``, two floats.

    Raises:
        ValueError: ``original`` and ``masked`` are not two non-empty 1-D tensors of the same shape.
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
    """Average drop % and increase in confidence % of saliency maps (see :func:`drop_and_increase`).

    Args:
        model: the classifier, mapping a batch ``[n, C, H, W]`` to logits ``[n, classes]``.
        x: the images ``[N, C, H, W]``, as the model takes them.
        maps: saliency maps ``[N, h, w]`` (e.g. an explainer's maps, in [0, 1]), resized bilinearly to
            ``H x W`` when their size differs.
        targets: the class of each image: one int for all images, or N class indices (a list or an
            integer tensor ``[N]``).
        batch_size: the number of images per forward pass (default 64).

    Returns:
        ``(average drop %, increase in confidence %)``, two floats.

    Raises:
        ValueError: ``x`` is not a 4-D batch, ``maps`` is not ``[N, h, w]``, or ``targets`` is not one
            int or N integer class indices.
    """
    return drop_and_increase(*confidence_scores(model, x, maps, targets, batch_size=batch_size))
