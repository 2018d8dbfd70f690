"""What a map explains: ``targets`` as users give them (None, class indices, tensors, callables),
resolved on the model output into scores, class indices and their multiplicity, and checked against
the batch and the model's classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torchcam_ops.methods.calls import check_finite, check_on_device
from torchcam_ops.targets import model_logits

#: What ``targets`` may be: ``None`` (each image's top class), a class index, one index per image,
#: a LongTensor ``[N]`` or ``[N, T]`` (T classes per image, one forward pass), or a callable that maps
#: the model output to scores ``[N]`` or ``[N, T]`` (for models returning tuples/dicts, or
#: segmentation-style scores).
Targets = None | int | Sequence[int] | Tensor | Callable[[Any], Tensor]


class ResolvedTargets(NamedTuple):
    """The targets of a batch, resolved on its model output."""

    #: the scores ``[N, T]`` whose gradients are explained (logits of the classes, or a callable's scores)
    scores: Tensor
    #: whether T targets per image were asked for (``[N, T, ...]`` maps), not one (``[N, ...]``)
    multi: bool
    #: the class indices ``[N, T]``; None for a callable target
    indices: Tensor | None


def resolve_targets(output: Any, targets: Targets, batch: int) -> ResolvedTargets:
    """The scores, multiplicity and class indices of ``targets`` on the model ``output`` of a batch of
    ``batch`` images: the one place where every method turns targets into what it explains. A callable
    target gets the output as the model returned it; class indices index its logits (:func:`model_logits`)."""
    if callable(targets) and not isinstance(targets, Tensor):
        scores = targets(output)
        if (
            not isinstance(scores, Tensor)
            or scores.dim() not in (1, 2)
            or scores.shape[0] != batch
            or (scores.dim() == 2 and scores.shape[1] == 0)
        ):
            raise ValueError(
                f"targets: a callable target must return scores [N] or [N, T] with N = {batch} and T >= 1, got "
                f"{list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
            )
        if not scores.is_floating_point():
            raise TypeError(f"targets: a callable target must return floating-point scores, got {scores.dtype}")
        if not scores.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "targets: the callable target returned scores without a gradient to the model output "
                "(detached, or computed under torch.no_grad()); return a differentiable function of the output"
            )
        check_finite_scores(scores)
        return (
            ResolvedTargets(scores[:, None], False, None) if scores.dim() == 1 else ResolvedTargets(scores, True, None)
        )
    output = model_logits(output)
    if not isinstance(output, Tensor) or output.dim() != 2:
        described = f"shape {list(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        raise TypeError(
            f"the model output ({described}) is not [N, classes] logits; pass targets as a callable "
            "that maps the output to scores [N] or [N, T]"
        )
    indices, multi = class_indices(targets, batch, output.shape[1], output)
    indices = indices.to(output.device)
    scores = output.gather(1, indices)
    check_finite_scores(scores)
    return ResolvedTargets(scores, multi, indices)


def check_finite_scores(scores: Tensor) -> None:
    """A NaN or infinite target score has no meaningful gradient: refused (on the CPU; see
    :func:`check_on_device`) rather than turned into a NaN or an all-zero map."""
    check_finite(
        scores,
        "the model output: a target score is NaN or infinite, so no map can be computed "
        "(check the input and the model's weights)",
    )


def class_indices(
    targets: Targets, batch: int, num_classes: int | None, logits: Tensor | None = None
) -> tuple[Tensor, bool]:
    """Class indices ``[N, T]`` from a target specification, validated against ``num_classes``
    (not validated when it is None: the caller checks them against the model output later).
    Python ints are checked on the host; tensors with :func:`check_on_device`."""
    if targets is None:
        if logits is None:
            raise ValueError("targets: None needs the model output")
        return logits.detach().argmax(1, keepdim=True), False
    if isinstance(targets, bool):
        raise TypeError("targets: expected class indices, got a bool")
    if isinstance(targets, int):
        check_class_indices([targets], num_classes)
        return torch.full((batch, 1), targets, dtype=torch.long), False
    if isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets: expected an integer tensor of class indices, got {targets.dtype}")
        if targets.dim() == 0:
            indices, multi = targets.reshape(1, 1).expand(batch, 1).long(), False
        elif targets.dim() == 1 and targets.shape[0] == batch:
            indices, multi = targets[:, None].long(), False
        elif targets.dim() == 2 and targets.shape[0] == batch and targets.shape[1] >= 1:
            indices, multi = targets.long(), True
        else:
            raise ValueError(
                f"targets: expected a tensor of shape [N] or [N, T] with N = {batch}, got {list(targets.shape)}"
            )
        if num_classes is not None:
            check_on_device(
                ((indices >= 0) & (indices < num_classes)).all(),
                f"targets: a class index is out of range for a model with {num_classes} outputs "
                f"(expected 0 <= index < {num_classes})",
            )
        return indices, multi
    if isinstance(targets, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} class indices (one per image), got {len(targets)}")
        check_class_indices(targets, num_classes)
        return torch.tensor(list(targets), dtype=torch.long)[:, None], False
    raise TypeError(
        f"targets: expected None, an int, a sequence of ints, a LongTensor or a callable, got {type(targets).__name__}"
    )


def check_class_indices(indices: Sequence[int], num_classes: int | None) -> None:
    """Python class indices in [0, num_classes) (non-negative when num_classes is None), else ValueError."""
    for index in indices:
        if num_classes is not None and not 0 <= index < num_classes:
            raise ValueError(
                f"targets: class index {index} is out of range for a model with {num_classes} outputs "
                f"(expected 0 <= index < {num_classes})"
            )
        if index < 0:
            raise ValueError(f"targets: class index {index} is out of range (class indices are non-negative)")
        if index >= 2**63:
            raise ValueError(f"targets: class index {index} is out of range (class indices are int64)")


def slice_targets(targets: Targets, start: int, stop: int, batch: int) -> Targets:
    """The targets of images [start, stop) of a batch of ``batch`` images. Per-image targets are
    checked against the whole batch, so that a chunk never reuses another chunk's targets; a callable
    target with per-image state slices itself (a ``sliced(start, stop)`` method, as
    :class:`~torchcam_ops.targets.FinerTarget` has)."""
    if callable(targets) and not isinstance(targets, Tensor):
        sliced = getattr(targets, "sliced", None)
        return sliced(start, stop) if callable(sliced) and (start, stop) != (0, batch) else targets
    if isinstance(targets, Tensor) and targets.dim() >= 1:
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets: expected a tensor of shape [N] or [N, T] with N = {batch}, got {list(targets.shape)}"
            )
        return targets[start:stop]
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} class indices (one per image), got {len(targets)}")
        return list(targets[start:stop])
    return targets
