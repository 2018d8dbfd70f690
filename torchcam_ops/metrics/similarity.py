"""Similarity of two batches of saliency maps, per image, as the sanity checks of Adebayo et al.
(NeurIPS 2018) measure it: Spearman rank correlation, SSIM and the correlation of HOG features.

Every function takes two batches ``[N, H, W]`` (or one map ``[H, W]``) and returns ``[N]`` float64
values, computed on the maps' device. Where a measure is undefined because a map is constant (a rank
or a feature vector without variance) the value is NaN and :func:`constant_maps` says which: the
sanity-check tables report those images as constant instead of averaging NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["constant_maps", "hog_correlation", "hog_features", "spearman", "ssim"]


def _pair(name: str, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    for label, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {label} must be a tensor of maps [N, H, W], got {type(t).__name__}")
    if a.shape != b.shape or a.dim() not in (2, 3):
        raise ValueError(
            f"{name}: expected two batches of maps of one shape [N, H, W], got {list(a.shape)} and {list(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name}: the maps are on {a.device} and {b.device}")
    if a.dim() == 2:
        a, b = a[None], b[None]
    return a.double(), b.double()


def constant_maps(maps: Tensor) -> Tensor:
    """``[N]`` bool: whether each map ``[N, H, W]`` holds one value (NaN-free maps only)."""
    flat = maps.reshape(maps.shape[0], -1)
    return (flat == flat[:, :1]).all(1)


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of the rows of x and y (NaN where a row has no variance)."""
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    denominator = (x.square().sum(1) * y.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (x * y).sum(1) / torch.where(denominator > 0, denominator, 1), math.nan)


def _average_ranks(rows: Tensor) -> Tensor:
    """Ranks of each row's values, ties sharing their average rank (as scipy.stats.rankdata)."""
    ordered = rows.sort(1).values.contiguous()
    below = torch.searchsorted(ordered, rows.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, rows.contiguous(), right=True)
    return (below + up_to + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Spearman rank correlation of each pair of maps: the Pearson correlation of their pixels' ranks
    (ties take their average rank). NaN where a map is constant.

    Args:
        a: maps ``[N, H, W]`` (or ``[H, W]``).
        b: maps of the same shape, on the same device.

    Returns:
        ``[N]`` float64 in [-1, 1].
    """
    a, b = _pair("spearman", a, b)
    return _pearson(_average_ranks(a.flatten(1)), _average_ranks(b.flatten(1)))


def _min_max(maps: Tensor) -> Tensor:
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0)


def _gaussian_window(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def ssim(a: Tensor, b: Tensor, sigma: float = 1.5) -> Tensor:
    r"""Structural similarity of each pair of maps, each first min-max normalised to [0, 1] (a constant
    map becomes zeros): the mean over the image of

    .. math:: \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},
              \quad C_1 = 0.01^2,\ C_2 = 0.03^2

    with Gaussian-weighted local statistics (``sigma``, truncated at 3.5 sigma), over the pixels whose
    window lies inside the map: ``skimage.metrics.structural_similarity(a, b, data_range=1,
    gaussian_weights=True, use_sample_covariance=False)``. Defined for constant maps too.

    Args:
        a: maps ``[N, H, W]`` (or ``[H, W]``), larger than the window (11x11 for sigma 1.5).
        b: maps of the same shape, on the same device.
        sigma: the standard deviation of the Gaussian window, in pixels.

    Returns:
        ``[N]`` float64, 1 for identical maps.
    """
    a, b = _pair("ssim", a, b)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number of pixels, got {sigma!r}")
    window = _gaussian_window(sigma, 3.5, a.dtype, a.device)
    if min(a.shape[1:]) < window.numel():
        raise ValueError(f"ssim: maps must be at least {window.numel()} pixels on each side, got {list(a.shape[1:])}")
    a, b = _min_max(a), _min_max(b)
    stacked = torch.stack([a, b, a * a, b * b, a * b], 1).reshape(-1, 1, *a.shape[1:])
    filtered = F.conv2d(F.conv2d(stacked, window.view(1, 1, -1, 1)), window.view(1, 1, 1, -1))
    mu_a, mu_b, aa, bb, ab = filtered.reshape(a.shape[0], 5, *filtered.shape[-2:]).unbind(1)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return index.mean((1, 2))


def hog_features(maps: Tensor, orientations: int = 9, cell: int = 8, block: int = 3) -> Tensor:
    """Histogram-of-oriented-gradients features of each map, as ``skimage.feature.hog(map,
    orientations, pixels_per_cell=(cell, cell), cells_per_block=(block, block), block_norm="L2-Hys")``
    computes them: central-difference gradients (zero on the border rows and columns), unsigned
    orientations in ``orientations`` equal bins, per-cell mean magnitudes, overlapping blocks L2-Hys
    normalised.

    Args:
        maps: ``[N, H, W]`` (or ``[H, W]``), at least ``block * cell`` pixels on each side.
        orientations: the orientation bins over [0, 180) degrees.
        cell: the cell side in pixels.
        block: the block side in cells.

    Returns:
        ``[N, F]`` float64 feature vectors.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps: expected a tensor of maps [N, H, W], got {type(maps).__name__}")
    for name, value in (("orientations", orientations), ("cell", cell), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    maps = (maps[None] if maps.dim() == 2 else maps).double()
    if maps.dim() != 3 or min(maps.shape[1:]) < block * cell:
        raise ValueError(
            f"maps: expected maps [N, H, W] of at least {block * cell} pixels a side, got {list(maps.shape)}"
        )
    rows = torch.zeros_like(maps)
    columns = torch.zeros_like(maps)
    rows[:, 1:-1, :] = maps[:, 2:, :] - maps[:, :-2, :]
    columns[:, :, 1:-1] = maps[:, :, 2:] - maps[:, :, :-2]
    magnitude = torch.hypot(columns, rows)
    orientation = torch.remainder(torch.rad2deg(torch.atan2(rows, columns)), 180)
    n = maps.shape[0]
    cells_h, cells_w = maps.shape[1] // cell, maps.shape[2] // cell
    width = 180.0 / orientations
    histograms = []
    for i in range(orientations):
        inside = (orientation < width * (i + 1)) & (orientation >= width * i)
        binned = (magnitude * inside)[:, : cells_h * cell, : cells_w * cell]
        histograms.append(binned.reshape(n, cells_h, cell, cells_w, cell).sum((2, 4)) / (cell * cell))
    cells = torch.stack(histograms, -1)  # [N, cells_h, cells_w, orientations]
    blocks = cells.unfold(1, block, 1).unfold(2, block, 1)  # [N, bh, bw, orientations, block, block]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(n, blocks.shape[1], blocks.shape[2], -1)
    eps = 1e-5
    blocks = blocks / (blocks.square().sum(-1, keepdim=True) + eps**2).sqrt()
    blocks = blocks.clamp_max(0.2)
    blocks = blocks / (blocks.square().sum(-1, keepdim=True) + eps**2).sqrt()
    return blocks.reshape(n, -1)


def hog_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the HOG features (:func:`hog_features`) of each pair of maps; NaN where a
    map's features have no variance (a constant map has none).

    Args:
        a: maps ``[N, H, W]`` (or ``[H, W]``), at least 24 pixels on each side.
        b: maps of the same shape, on the same device.

    Returns:
        ``[N]`` float64 in [-1, 1].
    """
    a, b = _pair("hog_correlation", a, b)
    return _pearson(hog_features(a), hog_features(b))
