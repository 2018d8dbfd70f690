"""Scoring masked copies of an image: the forward passes shared by the mask-scoring CAMs (Abs-CAM's
phase 2, Score-CAM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchcam_ops.methods.layout import ForwardPlan, resolve_images_per_forward
from torchcam_ops.methods.targeting import model_logits

# The channels-last trial costs one forward and saves 7-20% of each later one: it pays from about 16 forwards.
CHANNELS_LAST_MIN_FORWARDS = 16


# Masks at the input size are made a chunk of channels at a time, of at most about this many elements
# (64 MiB of float32): all 2048 masks of ResNet-50's last layer at 512x512 px would take 2 GiB at once.
MASK_ELEMENTS_PER_CHUNK = 1 << 24


def channel_chunks(channels: int, pixels: int, per_forward: int) -> list[tuple[int, int]]:
    """Ranges of channels whose masks (of ``pixels`` each) are made and scored together: about
    :data:`MASK_ELEMENTS_PER_CHUNK` elements, a whole number of forwards of ``per_forward`` images."""
    step = max(per_forward, MASK_ELEMENTS_PER_CHUNK // max(1, pixels) // per_forward * per_forward)
    return [(start, min(start + step, channels)) for start in range(0, channels, step)]


#: Masked images per forward: :func:`~torchcam_ops.methods.layout.resolve_images_per_forward`.
resolve_masks_per_forward = resolve_images_per_forward


def masked_scores(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    masks: Tensor,
    score: Callable[[Tensor], Tensor],
    per_forward: int,
    *,
    score_empty: bool = False,
    plan: ForwardPlan | None = None,
) -> Tensor:
    """``score(forward(image * masks[k]))`` for every mask, in forwards of ``per_forward`` masked images.

    An all-zero mask gives the same masked image (zeros) whatever k: with ``score_empty=False`` its
    score is 0 (the mask adds nothing to a score-weighted sum of masks, and Score-CAM skips such
    channels); with ``score_empty=True`` it is the score of the zero image, forwarded once. On a GPU,
    or while ``torch.compile`` traces, every mask is forwarded instead: choosing them would stall the
    host on device data, and a traced graph cannot have a data-dependent number of images.

    Args:
        forward: the model's forward, ``[B, C, H, W] -> [B, classes]``.
        image: one image ``[C, H, W]``.
        masks: ``[K, H, W]`` masks at the image's size (any floating dtype; cast to the image's).
        score: what to keep of each forward's logits ``[B, classes]``, returning ``[B, ...]``.
        per_forward: masked images per forward (a positive int).
        score_empty: whether all-zero masks get the score of the zero image (default: 0).
        plan: the call's :class:`~torchcam_ops.methods.layout.ForwardPlan`, which decides on the first
            forward of the call whether the masked images go channels-last (faster on the CPU); None
            (default) for contiguous images.

    Returns:
        The scores of the K masked images, ``[K, ...]``.
    """
    live = (masks != 0).flatten(1).any(1)
    if masks.device.type != "cpu" or torch.compiler.is_compiling():
        scores = _forward_in_chunks(forward, image, masks, score, per_forward)
    else:
        chosen = live.nonzero()[:, 0]
        empty = (~live).nonzero()[:1, 0]  # one all-zero mask, when there is one
        if score_empty or chosen.numel() == 0:
            chosen = torch.cat([chosen, empty])
        scored = _forward_in_chunks(forward, image, masks[chosen], score, per_forward, plan)
        scores = scored.new_zeros((masks.shape[0], *scored.shape[1:]))
        if score_empty and empty.numel():
            scores[~live] = scored[-1]
        scores[chosen] = scored
    if score_empty:
        return scores
    return torch.where(live.view(-1, *([1] * (scores.dim() - 1))), scores, torch.zeros_like(scores))


def _forward_in_chunks(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    masks: Tensor,
    score: Callable[[Tensor], Tensor],
    per_forward: int,
    plan: ForwardPlan | None = None,
) -> Tensor:
    channels_last = None if plan is None else plan.decided  # later chunks of the call: as decided
    scores = []
    for start in range(0, masks.shape[0], per_forward):
        batch = image[None] * masks[start : start + per_forward, None].to(image.dtype)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        output = forward(batch)
        if channels_last is None:
            channels_last = plan is not None and plan.channels_last(forward, batch, output)
        scores.append(score(model_logits(output)))
    return torch.cat(scores)
