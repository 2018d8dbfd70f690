"""Attention with second derivatives, for explainers that differentiate a model twice.

Torch's fused attention kernels (flash, memory-efficient, cuDNN) have no second derivative, so the
Hessian-vector products of Shapley-CAM would fail on every transformer (torchvision's ViT: "derivative
for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). The forward pass
of such a call selects the math backend of ``F.scaled_dot_product_attention``, whose ops have
derivatives of any order. Torch's switch (``torch.nn.attention.sdpa_kernel``) is process-wide: while
that forward pass runs, attention in other threads takes the math kernel too (the same values to
rounding, more slowly); the previous choice comes back when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def twice_differentiable_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` by its math backend while the block runs."""
    with sdpa_kernel(SDPBackend.MATH):
        yield
