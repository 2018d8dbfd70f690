"""Assertions for saliency regression tests in your own test suite.

    from torchcam_ops.testing import assert_explanation_in_region

    def test_classifier_looks_at_the_dog(model, image):
        assert_explanation_in_region(model, image, target=207, box=(40, 30, 180, 200),
                                     target_layers=["layer4"], min_energy=0.5)

With the pytest plugin (installed with the package) the same is available as the fixture
``assert_explanation_in_region``, and ``torchcam_explain`` gives the functional ``explain``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods import explain
from torchcam_ops.methods.layers import LayerSpec
from torchcam_ops.metrics import boxes_to_mask, energy_pointing_game

__all__ = ["assert_explanation_in_region", "explanation_energy"]


def _batch(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[0] != 1):
        raise ValueError(
            f"x: expected one image [C, H, W] or [1, C, H, W], got "
            f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    return x if x.dim() == 4 else x[None]


def explanation_energy(
    model: nn.Module,
    x: Tensor,
    target: int,
    box: Sequence[float] | Sequence[Sequence[float]],
    *,
    method: str = "gradcam",
    target_layers: LayerSpec | Sequence[LayerSpec],
    **options,
) -> float:
    """Share of the explanation's energy inside ``box`` (x0, y0, x1, y1 in input pixels; several
    boxes count as their union).

    Args:
        model: the classifier to explain.
        x: one image, ``[C, H, W]`` or ``[1, C, H, W]``, as the model takes it.
        target: the class index to explain.
        box: one box ``(x0, y0, x1, y1)`` in input pixels (x1 and y1 exclusive), or a sequence of boxes.
        method: a name in :data:`torchcam_ops.methods.METHODS` (default ``"gradcam"``).
        target_layers: a module of ``model`` or its dotted name, or a list of them (see
            :func:`torchcam_ops.methods.explain`).
        **options: keyword arguments of the explainer (see :func:`torchcam_ops.methods.explain`).

    Returns:
        The share, a float in [0, 1] (0 for an all-zero map).

    Raises:
        ValueError: ``x`` is not one image, or a box has ``x1 <= x0`` or ``y1 <= y0``; and the errors of
            :func:`torchcam_ops.methods.explain` for a bad method, layer, target or option.
    """
    x = _batch(x)
    maps = explain(model, x, method, target_layers=target_layers, targets=[int(target)], **options)
    mask = boxes_to_mask(box, x.shape[-2], x.shape[-1], device=maps.device)
    return float(energy_pointing_game(maps, mask[None].expand_as(maps))[0])


def assert_explanation_in_region(
    model: nn.Module,
    x: Tensor,
    target: int,
    box: Sequence[float] | Sequence[Sequence[float]],
    *,
    method: str = "gradcam",
    target_layers: LayerSpec | Sequence[LayerSpec],
    min_energy: float = 0.5,
    **options,
) -> float:
    """Fails unless at least ``min_energy`` of the explanation of ``target`` lies inside ``box``.
    Returns the measured share.

    Args:
        model: the classifier to explain.
        x: one image, ``[C, H, W]`` or ``[1, C, H, W]``, as the model takes it.
        target: the class index to explain.
        box: one box ``(x0, y0, x1, y1)`` in input pixels (x1 and y1 exclusive), or a sequence of boxes.
        method: a name in :data:`torchcam_ops.methods.METHODS` (default ``"gradcam"``).
        target_layers: a module of ``model`` or its dotted name, or a list of them (see
            :func:`torchcam_ops.methods.explain`).
        min_energy: the least share of the explanation's energy inside ``box``, in [0, 1] (default 0.5).
        **options: keyword arguments of the explainer (see :func:`torchcam_ops.methods.explain`).

    Returns:
        The measured share (see :func:`explanation_energy`), a float of at least ``min_energy``.

    Raises:
        AssertionError: less than ``min_energy`` of the energy lies inside ``box``.
        ValueError: ``min_energy`` is not in [0, 1]; and the errors of :func:`explanation_energy`.
    """
    if not 0 <= min_energy <= 1:
        raise ValueError(f"min_energy: expected a share in [0, 1], got {min_energy!r}")
    with torch.random.fork_rng():
        energy = explanation_energy(model, x, target, box, method=method, target_layers=target_layers, **options)
    if energy < min_energy:
        raise AssertionError(
            f"{method} explanation of class {target}: {energy:.1%} of its energy lies in "
            f"{list(box)}, expected at least {min_energy:.0%}"
        )
    return energy
