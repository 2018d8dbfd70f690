"""What the op modules share: the op namespace, fake-kernel registration and argument checks.

The ops are defined and implemented in C++ (``csrc/``), autograd included (each forward op's
backward is an op of its own, called from a C++ autograd kernel: ``csrc/ops/autograd_support.h``
says why not from Python). Without a loadable extension, ``ops`` raises its build error at the first
op call and no fake kernel is registered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcam_ops import _extension

#: Whether the native extension loaded; without it the wrappers raise its build error when called.
HAS_OPS = _extension.try_load()


class _MissingOps:
    """Stands in for ``torch.ops.torchcam_ops`` when the extension did not load: any op raises why."""

    def __getattr__(self, name: str):
        _extension.assert_has_ops()
        return getattr(torch.ops.torchcam_ops, name)


def _skip_registration(*args, **kwargs):
    return lambda fn: fn


ops = torch.ops.torchcam_ops if HAS_OPS else _MissingOps()
# Fake kernels attach to the ops the extension defines.
register_fake = torch.library.register_fake if HAS_OPS else _skip_registration


def require_tensor(op: str, name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def require_tensors(op: str, optional: tuple[str, ...] = ("bias",), **values: object) -> None:
    """Every named value is a tensor; the ``optional`` ones may also be None."""
    for name, value in values.items():
        if value is not None or name not in optional:
            require_tensor(op, name, value)


_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_floating(op: str, name: str, t: Tensor) -> None:
    """The C++ ``check_floating`` (``csrc/ops/checks.h``) for the fake kernels: same condition, same message."""
    torch._check_type(
        t.dtype in _FLOATING, lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}"
    )


def check_same_dtype_device(op: str, name: str, t: Tensor, other_name: str, other: Tensor) -> None:
    """The C++ ``check_same_dtype_device`` for the fake kernels."""
    torch._check_type(
        t.dtype == other.dtype,
        lambda: f"{op}: {name} must have the dtype of {other_name} ({other.dtype}), got {t.dtype}",
    )
    torch._check_value(
        t.device == other.device,
        lambda: f"{op}: {name} must be on the device of {other_name} ({other.device}), got {t.device}",
    )
