"""``nmf_sweep``: one coordinate-descent sweep of non-negative matrix factorisation, with its fake kernel.

Deep Feature Factorization (:mod:`torchcam_ops.methods.feature_factorization`) alternates it over its
two factors. The fake kernel repeats the C++ checks (``csrc/ops/nmf_sweep.cpp``) with their messages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcam_ops.ops._registration import (
    check_floating,
    check_same_dtype_device,
    ops,
    register_fake,
    require_tensors,
)

__all__ = ["nmf_sweep"]


def nmf_sweep(factor: Tensor, gram: Tensor, products: Tensor) -> tuple[Tensor, Tensor]:
    r"""One sweep of scikit-learn's coordinate-descent NMF solver over the rows of one factor.

    For :math:`X \approx F S` with :math:`F \ge 0` ``[rows, components]`` the factor updated here and
    :math:`S` the other, fixed through ``gram`` :math:`= S S^\top` ``[components, components]`` and
    ``products`` :math:`= X S^\top` ``[rows, components]``: for each row :math:`i` and each component
    :math:`t` in order,

    .. math::
        g = \sum_r (S S^\top)_{tr} F_{ir} - (X S^\top)_{it}, \qquad
        F_{it} \leftarrow \max\bigl(0,\ F_{it} - g / (S S^\top)_{tt}\bigr)

    (no move where :math:`(S S^\top)_{tt} = 0`), each :math:`g` seeing the components already updated.
    Returns the updated factor (a new tensor, dtype of ``factor``) and the violation
    :math:`\sum |g^{proj}|` of the projected gradients taken before each update (0 for a positive
    :math:`g` at :math:`F_{it} = 0`), a 0-d tensor in the op math type (float32 for half and bfloat16),
    on the device: the solver stops when it falls to a fraction of the first sweep's.
    Rows are independent (a thread each on the GPU); not differentiable.
    """
    require_tensors("nmf_sweep", optional=(), factor=factor, gram=gram, products=products)
    return ops.nmf_sweep.default(factor, gram, products)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@register_fake("torchcam_ops::nmf_sweep")
def _nmf_sweep_fake(factor: Tensor, gram: Tensor, products: Tensor) -> tuple[Tensor, Tensor]:
    op = "nmf_sweep"
    check_floating(op, "factor", factor)
    torch._check_value(
        factor.dim() == 2,
        lambda: f"{op}: factor must be a 2-D [rows, components] tensor, got shape {list(factor.shape)}",
    )
    torch._check_value(
        gram.dim() == 2,
        lambda: f"{op}: gram must be a 2-D [components, components] tensor, got shape {list(gram.shape)}",
    )
    torch._check_value(
        products.shape == factor.shape,
        lambda: f"{op}: products must have the shape of factor {list(factor.shape)}, got {list(products.shape)}",
    )
    components = factor.shape[1]
    torch._check_value(
        gram.shape[0] == components and gram.shape[1] == components,
        lambda: (
            f"{op}: gram must be [components, components] = [{components}, {components}], got shape {list(gram.shape)}"
        ),
    )
    check_same_dtype_device(op, "gram", gram, "factor", factor)
    check_same_dtype_device(op, "products", products, "factor", factor)
    return factor.new_empty(factor.shape), factor.new_empty((), dtype=_opmath(factor.dtype))
