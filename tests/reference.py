"""Plain-PyTorch references of the op contracts in DESIGN.md, written independently of the kernels.

Everything is computed in float64 from the (possibly half-precision) inputs, so a reference is the
exact value the kernels approximate.
"""

from __future__ import annotations

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
    lo = up.amin((1, 2), keepdim=True)
    hi = up.amax((1, 2), keepdim=True)
    out = (up - lo) / (hi - lo + 1e-7)
    # The contract: a constant map normalises to zeros. Interpolating a constant in floating point
    # wobbles by a rounding error, which the 1e-7 guard would blow up; such maps are constant.
    constant = (hi - lo) <= 1e-12 * hi.abs().clamp_min(1.0)
    return torch.where(constant, torch.zeros_like(out), out)


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


def assert_matches(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    """actual (computed in `dtype`) against a float64 reference, with an error budget scaled to
    the magnitude of the reference (sums of many terms lose absolute, not relative, precision)."""
    tol = tolerance(dtype)
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected, rtol=tol, atol=tol * max(scale, 1e-3), equal_nan=True
    )
