"""The CAM ops' contracts (docs/design.md) as plain PyTorch: what ``cam_reduce`` and
``cam_postprocess`` compute, written independently of the kernels.

By default everything is computed in float64 from the (possibly half-precision) inputs, so a
reference is the exact value the kernels approximate; ``dtype=`` computes the same formulas in
another dtype (the eager baseline the demo and the benchmarks time the fused ops against).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_cam(activations: Tensor, gradients: Tensor, method: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """The raw map ``[N, h, w]`` of :func:`torchcam_ops.cam_reduce`, computed in ``dtype``."""
    a = activations.to(dtype)
    g = gradients.to(dtype)
    hw = (2, 3)
    if method == "gradcam":
        weights = g.mean(hw, keepdim=True)
    elif method == "abscam":
        weights = g.abs().mean(hw, keepdim=True)
    elif method == "xgradcam":
        weights = (a * g).sum(hw, keepdim=True) / (a.sum(hw, keepdim=True) + 1e-7)
    elif method == "gradcam++":
        g2 = g.pow(2)
        g3 = g.pow(3)
        alpha = g2 / (2 * g2 + a.sum(hw, keepdim=True) * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * torch.relu(g)).sum(hw, keepdim=True)
    elif method == "layercam":
        return (torch.relu(g) * a).sum(1)
    elif method == "hirescam":
        return (g * a).sum(1)
    elif method == "gradcam_elementwise":
        return torch.relu(g * a).sum(1)
    else:
        raise ValueError(method)
    return (weights * a).sum(1)


def reference_postprocess(
    cam: Tensor, size: tuple[int, int], relu: bool = True, normalize: bool = True, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The maps of :func:`torchcam_ops.cam_postprocess`, computed in ``dtype``."""
    x = cam.to(dtype)
    if relu:
        x = torch.relu(x)
    up = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if not normalize:
        return up
    return reference_normalize(up, cam.dtype, compute_dtype=dtype)


def reference_normalize(
    maps: Tensor, dtype: torch.dtype | None = None, compute_dtype: torch.dtype = torch.float64
) -> Tensor:
    """Scale-free min-max over the last two dimensions: (x - min) / (max - min), and exact zeros
    for a map whose range is within 8 ulps (of ``dtype``'s arithmetic, float32 for half types) of
    its magnitude max(|min|, |max|). Computed in ``compute_dtype``."""
    x = maps.to(compute_dtype)
    lo = x.amin((-2, -1), keepdim=True)
    hi = x.amax((-2, -1), keepdim=True)
    arithmetic = torch.promote_types(dtype or maps.dtype, torch.float32)
    constant = (hi - lo) <= 8 * torch.finfo(arithmetic).eps * torch.maximum(lo.abs(), hi.abs())
    out = (x - lo) / torch.where(constant, torch.ones_like(hi), hi - lo)
    return torch.where(constant, torch.zeros_like(out), out)
