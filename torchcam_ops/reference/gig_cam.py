"""GIG-CAM's path written the straightforward way, for one image: host-side control flow, one pixel
set at a time (the batched explainer walks every path together with masked tensor operations)."""

from __future__ import annotations

import math

import torch


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
