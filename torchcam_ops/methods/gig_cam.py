"""GIG-CAM (Gao, Miao and Zhang 2025): Grad-CAM along a Guided Integrated Gradients path, with
optional multi-scale fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.calls import expanded_baseline, map_dtype, preserve_buffers
from torchcam_ops.methods.graphs import explainer_call
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ChannelsLast, check_channels_last, check_images_per_forward
from torchcam_ops.methods.smoothing import augment, average_of_copies
from torchcam_ops.methods.targeting import Targets, slice_targets
from torchcam_ops.ops import cam_postprocess


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (half-pixel centres) of ``[N, h, w]`` maps, without ReLU or normalisation."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return cam_postprocess(maps, size, relu=False, normalize=False)


def multiscale_fusion(maps: Sequence[Tensor]) -> Tensor:
    r"""Fuses GIG-CAM maps ``G_s`` ``[N, s, s]`` computed at increasing input sizes s0 < s1 < ...

    .. math:: F = \operatorname{Up}_{s_1}(G_{s_0}),\ R = F;\ \text{for each next scale } s:\
              D_s = \frac{G_s}{\operatorname{Up}_s(\operatorname{AvgPool}_{2\times 2}(G_s))}\ (0 \text{ where the
              denominator is } 0),\ F = D_s \odot \operatorname{Up}_s(F),\ R = \operatorname{Up}_s(R) + F

    Returns R at the largest scale, un-normalised (the explainer normalises the output once); a
    single scale is returned as it is.

    Args:
        maps: the un-normalised maps of each scale, ``[N, h_s, w_s]`` each, ordered by increasing size
            (at least one).

    Returns:
        R, ``[N, h, w]`` at the size of the last (largest) map; ``maps[0]`` itself for a single map.
    """
    if len(maps) == 1:
        return maps[0]
    fused = upsample(maps[0], tuple(maps[1].shape[-2:]))
    total = fused
    for g in maps[1:]:
        size = tuple(g.shape[-2:])
        smooth = upsample(F.avg_pool2d(g[:, None], 2)[:, 0], size)
        detail = torch.where(
            smooth != 0, g / torch.where(smooth != 0, smooth, torch.ones_like(smooth)), torch.zeros_like(g)
        )
        fused = detail * upsample(fused, size)
        total = upsample(total, size) + fused
    return total


class PathDiagnostics(NamedTuple):
    """How GIG-CAM's paths went, returned by ``GIGCAM(...)(x, targets, diagnostics=True)``.

    ``path_ends``: per input scale (one entry without ``scales``), each pixel's final position as a
    fraction of the way from the baseline to x, shaped like the maps at that scale (``[N, H, W]``, or
    ``[N, T, H, W]`` for T targets per image); all ones when every path reached x.
    ``unfinished_steps``: how many (path, step) pairs missed their L1 target, over all paths and
    scales (a device tensor: reading it is the caller's choice of synchronisation; expected 0).
    """

    path_ends: tuple[Tensor, ...]
    unfinished_steps: Tensor


class _PathWalk(NamedTuple):
    """The walk of one input scale: Phi ``[N, T, h, w]``, the paths' final positions ``[N, T, H, W]``,
    and the count of unfinished steps."""

    phi: Tensor
    ends: Tensor
    unfinished: Tensor


class _ChunkWalk(NamedTuple):
    """The walks of a chunk of images: Phi fused over the scales ``[n, T, h, w]``, whether T targets
    per image were asked for, the path ends per scale, and the unfinished steps."""

    maps: Tensor
    multi: bool
    path_ends: list[Tensor]
    unfinished: Tensor


class GIGCAM(BaseCAM):
    r"""GIG-CAM: Grad-CAM maps accumulated along the adaptive path of Guided Integrated Gradients.

    The path (Kapishnikov et al. 2021) moves every pixel (all its channels together) from the
    baseline :math:`x'` to :math:`x` in ``steps`` = T steps. At step t the guide is the Grad-CAM
    map without ReLU at the current point z, :math:`C_t = \operatorname{Up}(\sum_k A_k(z)\,
    \operatorname{mean}_{hw} G_k(z))`, computed once per step; :math:`\alpha = t/T`, pixels stay in
    the band :math:`[\alpha - d, \alpha + d]` (``max_dist`` d, as fractions of the way from x' to x) and
    the step ends when the L1 distance to x is :math:`\|x - x'\|_1 (1 - t/T)`. Inner iterations:
    pixels behind the band snap to its lower edge; if the distance meets the target the step
    ends; else, with pixels at the upper edge counted as :math:`+\infty`, the pixels at or below the
    lower ``fraction``-quantile of :math:`|C_t|` move to the upper edge, or the fraction
    :math:`\gamma` of the way that meets the target exactly (which ends the step).
    :math:`\Phi \mathrel{+}= \mathrm{ReLU}(C_t)` at every inner iteration; the map is
    :math:`\operatorname{norm}(\Phi)`.

    A chunk of ``batch_size`` images (``"auto"``: one at a time on the CPU, the whole batch on a GPU)
    walks its paths together, T classes per image; the inner iterations are
    masked tensor operations, a fixed ``ceil(1 / fraction) + 2`` of them per step (each full move
    takes at least a ``fraction`` of all pixels to the upper edge, so that always ends a step),
    with no host synchronisation. Deviation from the published Guided IG: the attribution
    accumulated is the guide itself (GIG-CAM), and pixels, not input features, are the units. On the
    CPU an eager model in eval mode walks channels-last images as ``cpu_channels_last`` says (True, False,
    or ``"auto"``: where a trial forward computes the same on them), faster; the rounding may move a few
    pixels' steps (maps within 3e-3 on EfficientNet-Lite0).

    ``scales`` (e.g. ``(224, 324, 424, 524, 624, 724, 824)``) computes GIG-CAM with the input resized
    to each size and fuses the maps with :func:`multiscale_fusion` (GIG-CAM+M); None explains at
    the input size only.
    """

    #: the guide at each path point is Grad-CAM's map
    reduction = "gradcam"
    # steps (x scales) forward and backward passes per call: compiled one by one
    compiles_whole_call = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        steps: int = 30,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        baseline: Tensor | float = 0.0,
        scales: Sequence[int] | None = None,
        batch_size: int | Literal["auto"] | None = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: expected a value in (0, 1], got {fraction!r}")
        if not 0 <= max_dist <= 1:
            raise ValueError(f"max_dist: expected a value in [0, 1], got {max_dist!r}")
        if scales is not None and (
            len(scales) == 0 or any(not isinstance(s, int) or s < 2 for s in scales) or list(scales) != sorted(scales)
        ):
            raise ValueError(f"scales: expected increasing sizes >= 2, got {scales!r}")
        if scales is not None and len(scales) > 1 and grid is not None:
            raise ValueError(
                f"grid: a fixed token grid {tuple(grid)} cannot follow the input through scales {tuple(scales)}; "
                "leave grid=None (square grids are inferred at each scale) or explain at one scale"
            )
        check_images_per_forward(batch_size, "batch_size")  # a positive int, "auto" or None
        fixed_batch = None if batch_size == "auto" else batch_size
        super().__init__(model, target_layers, batch_size=fixed_batch, reshape=reshape, grid=grid)
        self.batch_size: int | Literal["auto"] | None = batch_size
        self.steps, self.fraction, self.max_dist = steps, fraction, max_dist
        check_channels_last(cpu_channels_last)
        self.cpu_channels_last = cpu_channels_last
        self.baseline = baseline
        self.scales = tuple(scales) if scales is not None else None

    @explainer_call
    def __call__(
        self,
        x: Tensor,
        targets: Targets = None,
        *,
        raw: bool = False,
        output_size: int | tuple[int, int] | None = None,
        create_graph: bool = False,
        diagnostics: bool = False,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> Tensor | tuple[Tensor, PathDiagnostics]:
        """Maps as :meth:`BaseCAM.__call__` returns them; with ``diagnostics=True``, a pair
        ``(maps, PathDiagnostics)`` that says how the paths went.

        Args:
            x: the images ``[N, C, H, W]``: a non-empty, floating-point batch without NaN or infinite values.
            targets: the classes to explain: None (default: each image's top class on ``x``), a class
                index, one index per image, or a LongTensor ``[N]`` or ``[N, T]``; not a callable.
            raw: whether to return the un-normalised accumulated map Phi instead (default False).
            output_size: the maps' size, a positive int or ``(height, width)``; None (default) for the
                input's ``(H, W)``.
            create_graph: whether the maps carry the gradients of the guides to the model's parameters
                (default False); the path itself is not differentiated.
            diagnostics: whether to return :class:`PathDiagnostics` with the maps (default False).
            eigen_smooth: refused: a path's map sums the maps of many forward passes, not channel terms.
            aug_smooth: whether the maps are averaged over flipped and rescaled copies of each image, as
                :meth:`BaseCAM.__call__` does (default False; not with ``raw=True``); the diagnostics
                then describe the copies' paths (6N, copy-major).

        Returns:
            The maps, ``[N, out_h, out_w]`` in [0, 1] (``[N, T, out_h, out_w]`` for T targets per image)
            on x's device, float32 (float64 for float64 inputs); with ``raw=True``, Phi at the
            input's resolution (the largest scale's with ``scales``). With ``diagnostics=True``, the
            pair ``(maps, PathDiagnostics)``.

        Raises:
            TypeError: ``x`` is not a tensor or not floating point, ``targets`` is of an unsupported type,
                or the model output is not ``[N, classes]`` logits.
            ValueError: ``targets`` is a callable or does not fit the batch or the model's classes, and
                the other bad input :meth:`BaseCAM.__call__` refuses (``x``, ``output_size``, target
                layers).
            RuntimeError: as for :meth:`BaseCAM.__call__` (a closed explainer, ``torch.inference_mode()``,
                asynchronous checks of device data).
        """
        x, size = self._checked_call(x, output_size)
        self._check_smoothing(eigen_smooth, aug_smooth, raw, create_graph, targets)
        with preserve_buffers(self.model):
            if aug_smooth:
                copies = self._targets_of_copies(x, targets)
                maps, path_diagnostics = self._walk(augment(x), copies, False, size, create_graph)
                maps = average_of_copies(maps)
            else:
                maps, path_diagnostics = self._walk(x, targets, raw, size, create_graph)
        return (maps, path_diagnostics) if diagnostics else maps

    def has_channel_terms(self) -> bool:
        return False

    def _walk(
        self, x: Tensor, targets: Targets, raw: bool, size: tuple[int, int], create_graph: bool
    ) -> tuple[Tensor, PathDiagnostics]:
        channels_last = self._computes_same_channels_last(x)
        chunks = [
            self._explain_chunk(
                x[start:stop], slice_targets(targets, start, stop, x.shape[0]), create_graph, channels_last
            )
            for start, stop in self._chunks(x.shape[0], x.device)
        ]
        multi = chunks[0].multi
        maps = torch.cat([chunk.maps for chunk in chunks])  # [N, T, h, w]
        batch, count = maps.shape[:2]
        if not raw:
            maps = cam_postprocess(maps.flatten(0, 1), size, relu=False).reshape(batch, count, *size)
        path_ends = tuple(torch.cat(per_chunk) for per_chunk in zip(*(chunk.path_ends for chunk in chunks)))
        unfinished = torch.stack([chunk.unfinished for chunk in chunks]).sum()
        if not multi:
            maps, path_ends = maps[:, 0], tuple(end[:, 0] for end in path_ends)
        return maps, PathDiagnostics(path_ends, unfinished)

    def _computes_same_channels_last(self, x: Tensor) -> bool:
        """Whether the paths walk channels-last images (the call's :class:`ForwardPlan`): on the CPU,
        where oneDNN's convolutions run channels-last activations faster (GIG-CAM on two
        EfficientNet-Lite0 photos: 4.05 -> 3.54 s, maps within 3e-3: rounding moves a few pixels'
        steps), for an eager model in eval mode; with ``cpu_channels_last="auto"`` where its forward
        computes the same on them (tried on the first image; a model that flattens with ``.view`` raises
        on them). The guides' gradients are not tried: a backward that depends on the layout but a
        forward that does not would take a custom autograd function."""
        plan = self._forward_plan(x.device, forwards=self.steps, min_forwards=1)
        if not plan.applies:
            return False
        first = x[:1].contiguous()
        with torch.no_grad():
            expected = self.model(first) if plan.choice == "auto" else None
        return plan.channels_last(self.model, first, expected)

    def _explain_chunk(
        self, x: Tensor, targets: Targets, create_graph: bool, channels_last: bool = False
    ) -> _ChunkWalk:
        """Phi ``[n, T, h, w]`` of a chunk of images (fused over the scales), whether T targets per
        image were asked for, the path ends per scale ``[n, T, h_s, w_s]`` and the unfinished steps."""
        indices, multi = self._fixed_targets(x, targets)
        if not isinstance(indices, Tensor):
            raise ValueError(
                "targets: GIG-CAM walks one path per image and class, so it needs class indices, not a callable"
            )
        batch, count = indices.shape
        inputs = [x] if self.scales is None else [self._resized(x, s) for s in self.scales]
        walks = [self._path_maps(z, indices, create_graph, channels_last) for z in inputs]
        if self.scales is None:
            maps = walks[0].phi
        else:
            fused = multiscale_fusion([walk.phi.flatten(0, 1) for walk in walks])
            maps = fused.reshape(batch, count, *fused.shape[-2:])
        unfinished = torch.stack([walk.unfinished for walk in walks]).sum()
        return _ChunkWalk(maps, bool(multi), [walk.ends for walk in walks], unfinished)

    def _chunks(self, batch: int, device: torch.device | None = None) -> list[tuple[int, int]]:
        if self.batch_size != "auto":
            return super()._chunks(batch)
        # On the CPU one image at a time: EfficientNet-Lite0's paths of 4 photos take 15 s per image
        # walked one by one against 21 s walked together on 2 cores (activations that stay in cache);
        # a GPU walks the whole batch at once.
        step = 1 if device is not None and device.type == "cpu" else batch
        return [(start, min(start + step, batch)) for start in range(0, batch, step)]

    @staticmethod
    def _resized(x: Tensor, size: int) -> Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def _guide(self, z: Tensor, targets: Tensor, create_graph: bool = False) -> Tensor:
        """C_t: the Grad-CAM map without ReLU at z, resized to z's size (mean over target layers)."""
        raws, _ = self._forward_maps(z, targets[:, None], create_graph)
        size = tuple(z.shape[-2:])
        return torch.stack([upsample(r[:, 0], size) for r in raws]).mean(0)

    def _path_maps(
        self, x: Tensor, indices: Tensor, create_graph: bool = False, channels_last: bool = False
    ) -> _PathWalk:
        """Phi ``[N, T, H, W]`` (un-normalised) for images x and class indices ``[N, T]``, the
        paths' final positions ``[N, T, H, W]`` and the count of unfinished steps. With
        ``create_graph``, Phi carries the gradients of the guides; the path itself (which pixels move
        when) is a discrete choice and is not differentiated. ``channels_last``: the path's images
        are forwarded channels-last."""
        image_format = torch.channels_last if channels_last else torch.contiguous_format
        batch, count = indices.shape
        x = x.repeat_interleave(count, 0)  # path of (image n, class t) at row n * T + t
        targets = indices.reshape(-1)
        baseline = expanded_baseline(self.baseline, x)
        distance = (x - baseline).abs().sum(1).to(map_dtype(x.dtype))  # per-pixel L1 weight of the way to go
        total = distance.sum((1, 2))
        alpha = torch.zeros_like(distance)  # each pixel's position, as a fraction of the way
        phi = torch.zeros_like(distance)
        unfinished = torch.zeros((), dtype=torch.long, device=x.device)
        pixels = distance[0].numel()
        rank = int(math.floor(self.fraction * (pixels - 1))) + 1  # the lower quantile, as a 1-based rank
        inner_iterations = math.ceil(1 / self.fraction) + 2
        tolerance = 1e-5 * total + 1e-12
        for t in range(1, self.steps + 1):
            position = t / self.steps
            lower, upper = max(position - self.max_dist, 0.0), min(position + self.max_dist, 1.0)
            target = total * (1 - position)
            z = (baseline + alpha[:, None].to(x.dtype) * (x - baseline)).contiguous(memory_format=image_format)
            guide = self._guide(z, targets, create_graph).to(distance.dtype)
            magnitude, gain = guide.detach().abs(), guide.relu()
            active = torch.ones(alpha.shape[0], dtype=torch.bool, device=x.device)
            for _ in range(inner_iterations):
                alpha = torch.where(active[:, None, None] & (alpha < lower), lower, alpha)
                remaining = (distance * (1 - alpha)).sum((1, 2))
                phi = phi + gain * active[:, None, None]
                active = active & ((remaining - target).abs() > tolerance)
                candidates = torch.where(alpha >= upper, float("inf"), magnitude)
                threshold = candidates.flatten(1).kthvalue(rank, dim=1).values
                selected = (candidates <= threshold[:, None, None]) & candidates.isfinite() & active[:, None, None]
                movable = (distance * (upper - alpha) * selected).sum((1, 2))
                gamma = torch.where(movable > 0, (remaining - target) / movable.clamp_min(1e-30), float("inf"))
                full_move = gamma > 1
                moved = torch.where(full_move[:, None, None], upper, alpha + gamma[:, None, None] * (upper - alpha))
                alpha = torch.where(selected, moved, alpha)
                active = active & full_move  # a partial move meets the target: the step ends
            unfinished += active.sum()
        per_path = (batch, count, *phi.shape[-2:])
        return _PathWalk(phi.reshape(per_path), alpha.detach().reshape(per_path), unfinished)
