"""What every explainer call starts with: the input's checks, checks of device data that never stall
the host, the dtype of the maps, and the model's buffers shielded from writes."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops.nn.rules import refuse_inference_mode, shield_buffers


@contextlib.contextmanager
def preserve_buffers(model: nn.Module) -> Iterator[None]:
    """The model's buffers are never written while the block runs (BatchNorm running statistics of
    modules in training mode update copies; :class:`~torchcam_ops.nn.rules.BufferShield`): explaining a
    model that is being trained moves none of its statistics and leaves a pending training step valid."""
    with shield_buffers(model):
        yield


def map_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are float32 for half-precision inputs and keep float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def expanded_baseline(baseline: Tensor | float, x: Tensor) -> Tensor:
    """The baseline as a tensor like x: a number is filled on x's device (no host-to-device copy)."""
    if isinstance(baseline, Tensor):
        return baseline.to(dtype=x.dtype, device=x.device).expand_as(x)
    return torch.full_like(x, float(baseline))


def check_on_device(ok: Tensor, message: str) -> None:
    """Raises ``ValueError(message)`` unless the boolean tensor ``ok`` is True. CPU tensors are
    checked at once; tensors on other devices, and any tensor while ``torch.compile`` traces, are
    checked asynchronously (a ``RuntimeError`` with the same message, at the
    latest when the result is next read), so the check never stalls the host on device data."""
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(message)
    else:
        _compat.assert_async(ok, message)


def check_finite(values: Tensor, message: str) -> None:
    """Raises ``ValueError(message)`` when the floating-point ``values`` hold a NaN or an infinity, as
    :func:`check_on_device` does (asynchronously off the CPU). On the CPU one sum decides in the common
    case: a NaN or an infinity anywhere makes it non-finite, so a finite sum clears every element
    (half an eager call's cost of the elementwise test); only a non-finite sum, which an overflow of
    finite values may also give, takes the elementwise test."""
    if values.device.type == "cpu" and not torch.compiler.is_compiling():
        total = values.detach().sum(dtype=torch.promote_types(values.dtype, torch.float32))
        if math.isfinite(float(total)):
            return
    check_on_device(torch.isfinite(values.detach()).all(), message)


def check_positive_or_none(name: str, value: Any) -> None:
    """A count such as a batch size: a positive int, or None for no bound."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive int or None, got {value!r}")


def check_input(x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor batch [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D batch [N, C, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x: the batch is empty")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    refuse_inference_mode("explainer")
    check_finite(x, "x: the input contains NaN or infinite values")
    return x
