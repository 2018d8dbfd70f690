"""ROAD: remove and debias (Rong et al. 2022), with noisy linear imputation solved on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.metrics._common import check_maps, check_targets, class_scores

#: The percentiles of the map at which pixels are removed (ROAD's and pytorch-grad-cam's defaults).
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

# The weights of the 8 neighbours in the imputation: 1/6 along the axes, 1/12 along the diagonals.
_NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


Solver = Literal["auto", "direct", "cg"]


def noisy_linear_imputation(
    x: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    solver: Solver = "auto",
    tolerance: float = 1e-7,
    max_iterations: int | None = None,
) -> Tensor:
    r"""``x`` with its removed pixels imputed from their neighbours, as ROAD's noisy linear imputation.

    Each removed pixel's value is the weighted mean of its (up to 8) neighbours inside the image,
    weights 1/6 along the axes and 1/12 along the diagonals, removed neighbours included as unknowns:
    one sparse symmetric positive definite system per image, with one right-hand side per channel,
    :math:`s_i x_i - \sum_{j \in N(i)\ \text{removed}} w_{ij} x_j = \sum_{j \in N(i)\ \text{kept}} w_{ij} x_j`
    with :math:`s_i` the sum of the weights of the neighbours inside the image. Then ``noise`` times
    standard normal noise is added to the imputed pixels (``generator`` draws it, on its device).

    ``solver``: ``"direct"`` factorises each system (SciPy's sparse LU, on the CPU); ``"cg"`` runs
    Jacobi-preconditioned conjugate gradients with a 3x3 stencil on x's device, batched over images
    and channels, until every residual is within ``tolerance`` of its
    right-hand side (checked on the host every 16 iterations) or ``max_iterations`` (default
    ``4 (H + W)``) are done: a few hundred stencil passes over the whole batch at 224 px, cheap on a
    GPU and slow on a CPU; ``"auto"`` (default) is ``"direct"`` on the CPU and ``"cg"`` elsewhere.

    Args:
        x: images ``[B, C, H, W]``.
        removed: boolean ``[B, H, W]``, True where a pixel is removed; every image keeps one pixel.
        noise: the noise's standard deviation (default 0.01; 0 for none).
        generator: the random generator of the noise (default: torch's global one).
        solver: ``"auto"``, ``"direct"`` or ``"cg"`` (see above).
        tolerance: the relative residual at which conjugate gradients stop (default 1e-7).
        max_iterations: a bound on the conjugate gradient iterations (default ``4 (H + W)``).

    Returns:
        The imputed images, ``[B, C, H, W]`` like ``x``.

    Raises:
        ValueError: ``removed`` is not boolean ``[B, H, W]`` for ``x``, removes every pixel of an image,
            or ``solver`` is not one of the three.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D batch [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(removed, Tensor) or removed.dtype != torch.bool or removed.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"removed: expected a boolean [B, H, W] = {[x.shape[0], *x.shape[2:]]} tensor")
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver: expected 'auto', 'direct' or 'cg', got {solver!r}")
    if bool(removed.flatten(1).all(1).any()):
        raise ValueError("removed: every pixel of an image is removed; imputation needs at least one kept pixel")
    dtype = torch.promote_types(x.dtype, torch.float32)
    unknown = removed[:, None].to(dtype)  # [B, 1, H, W]
    if solver == "direct" or (solver == "auto" and x.device.type == "cpu"):
        solution = _direct_solution(x.to(dtype), removed)
    else:
        solution = _conjugate_gradient_solution(x.to(dtype), unknown, tolerance, max_iterations)
    if noise:
        device = solution.device if generator is None else generator.device
        draws = torch.randn(solution.shape, generator=generator, device=device, dtype=dtype).to(solution.device)
        solution = solution + noise * draws
    return torch.where(removed[:, None], solution, x.to(dtype)).to(x.dtype)


def _direct_solution(x: Tensor, removed: Tensor) -> Tensor:
    """The imputed values ``[B, C, H, W]`` (meaningful at removed pixels) by a sparse LU per image, the
    images shared among torch's intra-op threads (SciPy's factorisation releases the GIL, so the
    threads overlap)."""
    solution = torch.zeros_like(x, dtype=torch.float64, device="cpu")
    images, masks = x.double().cpu().numpy(), removed.cpu().numpy()
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for b, values in enumerate(pool.map(_solve_one, images, masks)):
            if values is not None:
                solution[b, :, torch.from_numpy(masks[b])] = torch.from_numpy(values.T.copy())
    return solution.to(device=x.device, dtype=x.dtype)


def _solve_one(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The values ``[count, C]`` of the removed pixels of one image ``[C, H, W]`` (row-major order),
    or None when none is removed."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    channels, height, width = image.shape
    image = image.reshape(channels, -1)
    weights = _NEIGHBOURS.double().numpy()
    rows, cols = np.nonzero(mask)
    count = rows.size
    if count == 0:
        return None
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(count)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, channels))
    entries_row, entries_col, entries_value = [], [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            weight = weights[dy + 1, dx + 1]
            if weight == 0:
                continue
            ny, nx = rows + dy, cols + dx
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            diagonal[inside] += weight
            neighbour = np.where(inside, index[ny.clip(0, height - 1), nx.clip(0, width - 1)], -1)
            to_unknown = inside & (neighbour >= 0)
            entries_row.append(np.nonzero(to_unknown)[0])
            entries_col.append(neighbour[to_unknown])
            entries_value.append(np.full(int(to_unknown.sum()), -weight))
            to_known = inside & (neighbour < 0)
            flat = ny[to_known] * width + nx[to_known]
            rhs[to_known] += weight * image[:, flat].T
    matrix = csc_matrix(
        (
            np.concatenate([*entries_value, diagonal]),
            (np.concatenate([*entries_row, np.arange(count)]), np.concatenate([*entries_col, np.arange(count)])),
        ),
        shape=(count, count),
    )
    return splu(matrix).solve(rhs)  # [count, C]


def _conjugate_gradient_solution(x: Tensor, unknown: Tensor, tolerance: float, max_iterations: int | None) -> Tensor:
    """The imputed values ``[B, C, H, W]`` (meaningful where ``unknown`` is 1) by Jacobi-preconditioned
    conjugate gradients, batched over images and channels on x's device."""
    channels, height, width = x.shape[1:]
    dtype = x.dtype
    kernel = _NEIGHBOURS.to(device=x.device, dtype=dtype).expand(channels, 1, 3, 3)

    def neighbour_sum(values: Tensor) -> Tensor:
        return F.conv2d(values, kernel, padding=1, groups=channels)

    weights = neighbour_sum(torch.ones(1, channels, height, width, device=x.device, dtype=dtype))  # s_i
    rhs = neighbour_sum(x * (1 - unknown)) * unknown

    def matrix(values: Tensor) -> Tensor:  # M v on the removed pixels (v is 0 elsewhere)
        return (weights * values - neighbour_sum(values)) * unknown

    tiny = torch.finfo(dtype).tiny
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    inverse = unknown / weights
    direction = residual * inverse
    rho = (residual * direction).sum((2, 3), keepdim=True)
    limit = tolerance * rhs.norm(dim=(2, 3), keepdim=True)
    for iteration in range(max_iterations or 4 * (height + width)):
        product = matrix(direction)
        curvature = (direction * product).sum((2, 3), keepdim=True)
        step = torch.where(curvature > 0, rho / curvature.clamp_min(tiny), 0.0)
        solution = solution + step * direction
        residual = residual - step * product
        if iteration % 16 == 15 and bool((residual.norm(dim=(2, 3), keepdim=True) <= limit).all()):
            break
        preconditioned = residual * inverse
        new_rho = (residual * preconditioned).sum((2, 3), keepdim=True)
        direction = preconditioned + torch.where(rho > 0, new_rho / rho.clamp_min(tiny), 0.0) * direction
        rho = new_rho
    return solution


def removal_masks(maps: Tensor, percentiles: Sequence[float], order: Literal["most", "least"]) -> Tensor:
    """Which pixels ROAD removes at each percentile, ``[N, P, H, W]`` booleans: of the ``H W`` pixels
    ranked by the map (``"most"``: most relevant first; ``"least"``: least relevant first), the first
    ``H W - ceil(p / 100 (H W - 1))``, that is, where the map has no ties, exactly the pixels at or
    above its p-th percentile (with ``np.percentile``'s interpolation) for ``"most"`` and at or above
    the p-th percentile of ``1 - map`` for ``"least"``. Ties are ranked by position (row-major), so a
    map that ties over many pixels still removes that many: pytorch-grad-cam's threshold removes
    every tied pixel instead, all of them where a map is 0 on p% of the image or more (its imputation
    then has no kept pixel)."""
    flat = maps.flatten(1)
    pixels = flat.shape[1]
    ranked = torch.argsort(flat, dim=1, descending=order == "most", stable=True)
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(pixels, device=maps.device).expand_as(ranked))
    counts = torch.tensor(
        [pixels - math.ceil(p / 100 * (pixels - 1)) for p in percentiles], device=maps.device, dtype=rank.dtype
    )
    return (rank[:, None, :] < counts[None, :, None]).view(maps.shape[0], len(percentiles), *maps.shape[1:])


class ROADResult(NamedTuple):
    """ROAD's scores: the change of the target's logit when pixels are removed and imputed."""

    #: the percentiles, ``[P]``
    percentiles: tuple[float, ...]
    #: removing the most relevant pixels first: logit after minus before, ``[N, P]`` (lower is better)
    most_relevant_first: Tensor
    #: removing the least relevant pixels first, ``[N, P]`` (higher is better)
    least_relevant_first: Tensor

    @property
    def combined(self) -> Tensor:
        """(mean LeRF - mean MoRF) / 2 per image, ``[N]`` (higher is better), pytorch-grad-cam's
        ``ROADCombined``."""
        return (self.least_relevant_first.mean(1) - self.most_relevant_first.mean(1)) / 2


@torch.no_grad()
def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor | list[int] | int,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    solver: Solver = "auto",
    batch_size: int = 64,
) -> ROADResult:
    r"""ROAD (remove and debias): at each percentile p of each map, the pixels at or above it (most
    relevant first, MoRF) or at or above the p-th percentile of ``1 - map`` (least relevant first,
    LeRF) are removed (:func:`removal_masks`: ties ranked by position) and imputed from their
    neighbours (:func:`noisy_linear_imputation`), and the change of the target's logit is recorded:
    :math:`f_c(\tilde x) - f_c(x)`.

    All images and percentiles are imputed together (one system per image and percentile) and
    forwarded in batches of ``batch_size``. pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=p)`` and
    ``ROADLeastRelevantFirst(percentile=p)`` remove the same pixels from a map without ties (their
    masks keep ``map < percentile_p(map)``), and its ``ROADCombined`` is :attr:`ROADResult.combined`.

    Args:
        model: the classifier, mapping a batch ``[n, C, H, W]`` to logits ``[n, classes]``.
        x: the images ``[N, C, H, W]``, as the model takes them.
        maps: saliency maps ``[N, h, w]``, resized bilinearly to ``H x W`` when their size differs.
        targets: the class of each image: one int, or N class indices.
        percentiles: where to threshold the maps, each in (0, 100) (default 10, 20, ..., 90).
        noise: the imputation noise's standard deviation (default 0.01; 0 for none).
        generator: the random generator of the noise (default: torch's global one).
        solver: how the imputation is solved (:func:`noisy_linear_imputation`; default ``"auto"``).
        batch_size: images per forward pass (default 64).

    Returns:
        A :class:`ROADResult`.

    Raises:
        ValueError: ``x`` is not a 4-D batch, ``maps`` is not ``[N, h, w]``, ``targets`` is not one
            int or N class indices, or a percentile is not in (0, 100).
    """
    if not percentiles or any(isinstance(p, bool) or not 0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles: expected numbers in (0, 100), got {list(percentiles)}")
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0], x.device)
    before = class_scores(model, x, targets, batch_size)
    count = len(percentiles)
    results = []
    for order in ("most", "least"):
        removed = removal_masks(maps, percentiles, order).flatten(0, 1)  # [N * P, H, W]
        images = x.repeat_interleave(count, 0)
        imputed = noisy_linear_imputation(images, removed, noise=noise, generator=generator, solver=solver)
        after = class_scores(model, imputed, targets.repeat_interleave(count), batch_size).view(-1, count)
        results.append(after - before[:, None])
    return ROADResult(tuple(float(p) for p in percentiles), results[0], results[1])
