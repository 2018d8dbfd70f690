"""Attention with second derivatives, for explainers that differentiate a model twice.

Torch's fused attention kernels (flash, memory-efficient, cuDNN) have no second derivative, so the
Hessian-vector products of Shapley-CAM would fail on every transformer (torchvision's ViT: "derivative
for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). The forward pass
of such a call selects the math backend of ``F.scaled_dot_product_attention``, whose ops have
derivatives of any order. Torch's switches (``torch.backends.cuda.enable_flash_sdp``...) are
process-wide: while such forward passes run, attention in other threads takes the math kernel too
(the same values to rounding, more slowly). Overlapping calls share one switch: the first to start selects the math
kernel, the last to end gives back the choice that was in place before the first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

_lock = threading.Lock()
_holders = 0
_previous: tuple[bool, bool, bool, bool] | None = None  # the backends enabled before the first holder

# torch's process-wide switches of the attention backends (torch.nn.attention.sdpa_kernel keeps its own
# state in a context variable, which another thread cannot give back: these are the flags it sets)
_BACKENDS = (
    (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.enable_flash_sdp),
    (torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.enable_mem_efficient_sdp),
    (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp),
    (torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.enable_math_sdp),
)


@contextlib.contextmanager
def twice_differentiable_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` by its math backend while the block runs (in every thread)."""
    global _holders, _previous
    if torch.compiler.is_compiling():  # traced code: torch.compile traces torch's own context manager
        with sdpa_kernel(SDPBackend.MATH):
            yield
        return
    with _lock:
        if _holders == 0:
            _previous = tuple(enabled() for enabled, _ in _BACKENDS)
            for (_, enable), value in zip(_BACKENDS, (False, False, False, True)):
                enable(value)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for (_, enable), value in zip(_BACKENDS, _previous):
                    enable(value)
                _previous = None
