"""Channels-last images for CPU forwards, taken only where the model computes the same with them.

oneDNN's CPU convolutions run channels-last activations 7-20% faster, but a model may depend on its
input's memory format: one that flattens with ``.view`` raises on a channels-last tensor, and a
custom kernel that reads raw memory would silently compute something else. So the layout is tried
on one batch of the real images and kept only where the outputs agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchcam_ops import _compat


def agree_to_rounding(actual: Tensor, expected: Tensor, computed_in: torch.dtype | None = None) -> bool:
    """Whether two computations of the same values differ by rounding only: the same shape, and every
    element within ``max(1e-4, 4 eps)`` of ``expected``'s, relative to itself or to ``expected``'s
    largest magnitude (the sums of a convolution round differently in another order; a model that
    depends on the batch or the layout differs by far more). ``eps`` is that of ``computed_in``, the
    dtype the values were computed in (default: ``expected``'s). NaN or infinite values never agree."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if expected.numel() == 0:
        return True
    if not expected.is_floating_point():
        return bool(torch.equal(actual, expected))
    if not bool(torch.isfinite(expected).all()):  # an infinite scale would accept anything
        return False
    tolerance = max(1e-4, 4 * torch.finfo(computed_in or expected.dtype).eps)
    scale = float(expected.abs().max())
    return bool(torch.allclose(actual, expected, rtol=tolerance, atol=tolerance * scale))


def outputs_agree(actual: Any, expected: Any, computed_in: torch.dtype | None = None) -> bool:
    """:func:`agree_to_rounding` for model outputs of any structure (tensors, dicts, lists of them);
    leaves that are not tensors must be equal numbers, strings or None (anything else disagrees)."""
    actual_leaves, actual_structure = _compat.flatten_tree(actual)
    expected_leaves, expected_structure = _compat.flatten_tree(expected)
    if actual_structure != expected_structure:
        return False
    for a, e in zip(actual_leaves, expected_leaves):
        if isinstance(e, Tensor):
            if not isinstance(a, Tensor) or not agree_to_rounding(a, e, computed_in):
                return False
        elif not isinstance(e, (bool, int, float, str, type(None))) or type(a) is not type(e) or a != e:
            return False
    return True


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out channels-last and not also contiguous (as a one-pixel map would be)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def may_try_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether a forward on ``device`` may try channels-last images: eagerly on the CPU, for a model in
    eval mode (in training mode dropout makes the trial differ anyway, and the trial would move the
    running statistics of batch normalisation once more)."""
    return (
        device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not any(module.training for module in model.modules())
    )


#: What a forward that depends on its input's memory format or batch raises (``.view`` of a channels-last
#: tensor, a concatenation or reshape to the input's batch size, a custom kernel's contiguity check, a
#: model's own assertion): a trial that meets one of them is refused. Other errors propagate (pass
#: ``cpu_channels_last=False`` to skip the layout trial).
LAYOUT_ERRORS = (RuntimeError, ValueError, AssertionError, NotImplementedError)


def computes_same_channels_last(forward: Callable[[Tensor], Any], batch: Tensor, expected: Any) -> bool:
    """Whether ``forward`` gives ``expected`` (its output on the 4-D contiguous ``batch``), to
    rounding, on a channels-last copy of ``batch``; False when that forward raises one of
    :data:`LAYOUT_ERRORS` (the model's own error, which the contiguous forward did not meet). The trial
    draws nothing from the user's random stream (a stochastic model then disagrees with itself); the
    model's forward hooks see it."""
    if batch.dim() != 4:
        return False
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            trial = forward(batch.contiguous(memory_format=torch.channels_last))
    except LAYOUT_ERRORS:  # what a model that depends on its input's layout raises; the contiguous one ran
        return False
    return outputs_agree(trial, expected, batch.dtype)


#: How a call lays out the images of its many forwards on the CPU: True (channels-last), False
#: (contiguous), or "auto" (channels-last where a trial on the call's first batch agrees to rounding).
ChannelsLast = bool | Literal["auto"]


def check_channels_last(value: object) -> None:
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"cpu_channels_last: expected True, False or 'auto', got {value!r}")


#: Images per forward of a call's many forwards: a positive int, "auto" (by device and image size) or
#: None (all at once).
ImagesPerForward = int | Literal["auto"] | None

# On a 2-core CPU, EfficientNet-Lite0 scores the masked images of a photo in 14-16 s in forwards of 4,
# 17-18 s of 8, 27-29 s of 16 (the activations of a small batch stay in cache). Smaller images want more
# per forward, to fill the matrix products of the last layers: at 128 px, channels-last, EfficientNet-Lite0
# runs 94 images/s in forwards of 4 and 122 of 8, ResNet-50 23 and 28. So the CPU's forwards hold about
# 2^17 pixels (4 images of 224 px or more, 8 of 128 px), at most 64 images; a GPU needs large batches to
# fill.
CPU_IMAGES_PER_FORWARD = 4
CPU_MAX_IMAGES_PER_FORWARD = 64
CPU_PIXELS_PER_FORWARD = 1 << 17
GPU_IMAGES_PER_FORWARD = 64


def check_images_per_forward(value: object, name: str) -> None:
    """A count of images per forward: a positive int, "auto" (by device) or None (all at once)."""
    if value == "auto" or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, 'auto' or None, got {value!r}")


def resolve_images_per_forward(value: ImagesPerForward, device: torch.device, images: int, pixels: int) -> int:
    """Images per forward: ``value``, all ``images`` for None, and for "auto" a size chosen by device
    type (the GPU's while ``torch.compile`` traces: a traced graph holds every forward, and K / 4 of
    them would make its compile time and size grow accordingly) and, on the CPU, by the images'
    ``pixels`` (H * W)."""
    if value == "auto":
        if device.type != "cpu" or torch.compiler.is_compiling():
            return GPU_IMAGES_PER_FORWARD
        return max(CPU_IMAGES_PER_FORWARD, min(CPU_MAX_IMAGES_PER_FORWARD, CPU_PIXELS_PER_FORWARD // max(1, pixels)))
    return value or max(1, images)


class ForwardPlan:
    """How the many forwards of one explainer call (masked images, ablated copies, path points) run:
    made once per call, its choices taken on the call's first forwards and kept for the rest of it.

    - **Images per forward** (:meth:`per_forward`): ``images_per_forward`` resolved by device and image
      size (:func:`resolve_images_per_forward`).
    - **Memory format** (:meth:`channels_last`): channels-last images apply on the CPU only, for an eager
      model in eval mode (a compiled model would recompile for the new strides; in training mode
      dropout makes a trial disagree, and it would move batch statistics once more). There ``choice``
      True forces it, False never takes it, and "auto" tries it where the call expects at least
      ``min_forwards`` forwards (:meth:`expect`; the trial costs one forward and saves 7-20% of each
      later one): kept only where the trial's output agrees to rounding with the contiguous one.
    - **Prefix once** (:attr:`prefix_once`): per target layer, whether the layers before it may run
      once per image while only the layers after it run on its copies (Ablation-CAM), decided by the
      call's first check and kept.
    """

    def __init__(
        self,
        choice: ChannelsLast,
        applies: bool | Callable[[], bool],
        forwards: int = 0,
        min_forwards: int = 1,
        images_per_forward: ImagesPerForward = "auto",
    ) -> None:
        check_channels_last(choice)
        self.choice = choice
        self.images_per_forward = images_per_forward
        self.min_forwards = min_forwards
        # ``applies`` may be a function, asked only when a forward first needs it: a call that runs
        # no further forward (Grad-CAM) pays nothing for the walk over the model it may take.
        self._applies_to_model = applies
        self.forwards = 0
        self._decided: bool | None = False if choice is False else None
        #: Per target layer (its name, with ``@k`` for a call), whether Ablation-CAM's shortcut holds
        #: for this call: absent until its first check.
        self.prefix_once: dict[str, bool] = {}
        self.expect(forwards)

    def expect(self, forwards: int) -> None:
        """Counts ``forwards`` more forwards that the call will run (before the layout is decided)."""
        self.forwards += forwards

    @property
    def applies(self) -> bool:
        """Whether channels-last images may be taken (tried, with "auto") for this call's forwards."""
        if self.choice is False or (self.choice == "auto" and self.forwards < self.min_forwards):
            return False
        if callable(self._applies_to_model):
            self._applies_to_model = bool(self._applies_to_model())
        return self._applies_to_model

    @property
    def decided(self) -> bool | None:
        """The layout decided for the call so far: True, False, or None before its first forward."""
        if self._decided is None and not self.applies:
            return False
        return self._decided

    def per_forward(self, device: torch.device, images: int, pixels: int) -> int:
        """How many of ``images`` images of ``pixels`` pixels each go in one forward on ``device``."""
        return resolve_images_per_forward(self.images_per_forward, device, images, pixels)

    def channels_last(self, forward: Callable[[Tensor], Any], batch: Tensor, expected: Any) -> bool:
        """Whether the call's forwards take channels-last images, decided on its first ``batch`` (whose
        contiguous forward gave ``expected``) and kept for the rest of the call."""
        if self._decided is None:
            self._decided = self.applies and (
                self.choice is True or is_channels_last(batch) or computes_same_channels_last(forward, batch, expected)
            )
        return self._decided
