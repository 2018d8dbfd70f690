"""Plain-PyTorch references of the op contracts in docs/design.md, written independently of the kernels.

Everything is computed in float64 from the (possibly half-precision) inputs, so a reference is the
exact value the kernels approximate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_cam(activations: Tensor, gradients: Tensor, method: str) -> Tensor:
    a = activations.double()
    g = gradients.double()
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


def reference_postprocess(cam: Tensor, size: tuple[int, int], relu: bool = True, normalize: bool = True) -> Tensor:
    x = cam.double()
    if relu:
        x = torch.relu(x)
    up = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if not normalize:
        return up
    return reference_normalize(up, cam.dtype)


def reference_normalize(maps: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Scale-free min-max over the last two dimensions: (x - min) / (max - min), and exact zeros
    for a map whose range is within 8 ulps (of ``dtype``'s arithmetic, float32 for half types) of
    its magnitude max(|min|, |max|)."""
    x = maps.double()
    lo = x.amin((-2, -1), keepdim=True)
    hi = x.amax((-2, -1), keepdim=True)
    arithmetic = torch.promote_types(dtype or maps.dtype, torch.float32)
    constant = (hi - lo) <= 8 * torch.finfo(arithmetic).eps * torch.maximum(lo.abs(), hi.abs())
    out = (x - lo) / torch.where(constant, torch.ones_like(hi), hi - lo)
    return torch.where(constant, torch.zeros_like(out), out)


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


def assert_matches(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    """actual (computed in `dtype`) against a float64 reference, with an error budget scaled to
    the magnitude of the reference (sums of many terms lose absolute, not relative, precision)."""
    tol = tolerance(dtype)
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * max(scale, 1e-3), equal_nan=True)


def reference_gig_cam(guide_of, x, target, steps=30, fraction=0.25, max_dist=0.02):
    """One image, written the straightforward way: host-side control flow, one pixel set at a time.
    ``guide_of(z, target)`` gives C_t; the pixel selection is discontinuous in it, so comparisons
    of whole paths use the explainer's own guide, which test_guide_is_upsampled_raw_gradcam checks."""
    distance = x.abs().sum(0)  # baseline 0
    total = float(distance.sum())
    alpha = torch.zeros_like(distance)
    phi = torch.zeros_like(distance)
    for t in range(1, steps + 1):
        position = t / steps
        lower, upper = max(position - max_dist, 0.0), min(position + max_dist, 1.0)
        target_l1 = total * (1 - position)
        guide = guide_of(alpha[None] * x, target)
        while True:
            alpha = torch.where(alpha < lower, torch.full_like(alpha, lower), alpha)
            remaining = float((distance * (1 - alpha)).sum())
            phi += guide.relu()
            if abs(remaining - target_l1) <= 1e-5 * total + 1e-12:
                break
            candidates = torch.where(alpha >= upper, torch.full_like(guide, math.inf), guide.abs())
            threshold = torch.quantile(candidates.flatten().double(), fraction, interpolation="lower").float()
            selected = (candidates <= threshold) & torch.isfinite(candidates)
            movable = float((distance * (upper - alpha) * selected).sum())
            gamma = (remaining - target_l1) / movable if movable > 0 else math.inf
            if gamma > 1:
                alpha = torch.where(selected, torch.full_like(alpha, upper), alpha)
            else:
                alpha = torch.where(selected, alpha + gamma * (upper - alpha), alpha)
                break
    return phi, alpha
