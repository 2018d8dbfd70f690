"""SESS (Tursun et al. 2022): saliency enhancing with scaling and sliding, on any CAM."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.calls import check_input, map_dtype, preserve_buffers
from torchcam_ops.methods.gig_cam import GIGCAM
from torchcam_ops.methods.graphs import GraphableWrapper
from torchcam_ops.methods.layers import LayerSpec
from torchcam_ops.methods.targeting import Targets, class_indices, model_logits
from torchcam_ops.ops import cam_postprocess, check_output_size


class SESS(GraphableWrapper):
    r"""SESS: a base CAM of patches cut from the image at several scales, weighted by their class
    score, pasted back and fused.

    Each image is resized so that its shorter side is each of ``scales`` (default ``num_scales`` = 12
    sizes from the window's, growing by ``scale_step_ratio`` = 2/7 of it: 224, 288, ..., 928 for a
    224-px image), and a square window of ``window_size`` (default the shorter side) slides over it
    with ``step_size`` (default the window: windows at the right and bottom borders are shifted back
    in). Each patch P gets the class's score :math:`s_P` (its softmax probability with
    ``use_softmax_scores``, else its logit; clipped at 0); the lowest ``pre_filter_ratio`` of them
    are dropped; the others' maps :math:`L_P` (the ``base`` CAM, ``"gradcam"`` by default) are weighted
    by :math:`w_P = s_P / \max s`, pasted where the patch was taken and resized back to the image
    (:math:`\tilde L_P`), and fused per pixel: with ``pool="mean"`` the mean of :math:`\tilde L_P`
    over the patches where it exceeds ``theta``, with ``pool="max"`` their maximum; then an 11x11
    Gaussian blur (:math:`\sigma = 5`, with ``smooth``) and the final normalisation. As
    pytorch-grad-cam's ``SESS`` computes it (its maps are ours within 1e-4).

    Each image's patches are scored and explained in forwards of ``patches_per_forward`` (32); the
    base explainer gets ``options`` (its ``batch_size`` defaults to ``patches_per_forward``). Targets
    are class indices (None: each image's top class; ``[N, T]`` for T classes per image), not a
    callable.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        base: str = "gradcam",
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: Literal["mean", "max"] = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        patches_per_forward: int = 32,
        **options: Any,
    ) -> None:
        from torchcam_ops.methods import METHODS  # the registry imports this module

        if pool not in ("mean", "max"):
            raise ValueError(f"pool: expected 'mean' or 'max', got {pool!r}")
        if not isinstance(pre_filter_ratio, (int, float)) or not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(f"pre_filter_ratio: expected a number in [0, 1), got {pre_filter_ratio!r}")
        for name, value in (("num_scales", num_scales), ("patches_per_forward", patches_per_forward)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value in (("window_size", window_size), ("step_size", step_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        if scales is not None and (
            len(scales) == 0 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales)
        ):
            raise ValueError(f"scales: expected a non-empty sequence of positive ints, got {scales!r}")
        if (
            not isinstance(scale_step_ratio, (int, float))
            or not math.isfinite(scale_step_ratio)
            or scale_step_ratio < 0
        ):
            raise ValueError(f"scale_step_ratio: expected a finite number >= 0, got {scale_step_ratio!r}")
        if not isinstance(base, str) or base not in METHODS:
            raise ValueError(f"base: expected a method name, one of {sorted(METHODS)}, got {base!r}")
        explainer = METHODS[base](model, target_layers, **options)
        if not isinstance(explainer, BaseCAM) or isinstance(explainer, GIGCAM):
            explainer.close()
            raise ValueError(f"base: {base!r} is not a CAM explained patch by patch; choose one such as 'gradcam'")
        if "batch_size" not in options:
            explainer.batch_size = patches_per_forward
        self.base = explainer
        self.scales = tuple(scales) if scales is not None else None
        self.num_scales, self.scale_step_ratio = num_scales, float(scale_step_ratio)
        self.window_size, self.step_size = window_size, step_size
        self.pre_filter_ratio, self.theta, self.pool = float(pre_filter_ratio), float(theta), pool
        self.smooth, self.use_softmax_scores, self.patches_per_forward = smooth, use_softmax_scores, patches_per_forward

    #: ``eigen_smooth`` goes to the base's calls; the patches already vary the scale, so no ``aug_smooth``
    smoothing_options = ("eigen_smooth",)

    @property
    def model(self) -> nn.Module:
        return self.base.model

    def has_channel_terms(self) -> bool:
        """Whether the base's maps are sums of per-channel terms (``eigen_smooth``)."""
        return self.base.has_channel_terms()

    def __enter__(self) -> SESS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the explainer (and its base)."""
        self.base.close()

    def __call__(
        self,
        x: Tensor,
        targets: Targets = None,
        *,
        raw: bool = False,
        output_size: int | tuple[int, int] | None = None,
        eigen_smooth: bool = False,
    ) -> Tensor:
        """SESS maps of ``x``.

        Args:
            x: the images ``[N, C, H, W]``: a non-empty, floating-point batch without NaN or infinite values.
            targets: class indices: None (each image's top class), an int, one per image, or a LongTensor
                ``[N]`` or ``[N, T]``.
            raw: whether to return the fused maps before the final normalisation, at the input's size.
            output_size: the maps' size, a positive int or ``(height, width)``; None for the input's.
            eigen_smooth: passed to the base explainer's calls.

        Returns:
            ``[N, out_h, out_w]`` maps in [0, 1] (``[N, T, out_h, out_w]`` for ``[N, T]`` targets).

        Raises:
            TypeError, ValueError: bad ``x``, ``targets``, ``output_size``, or a scale below the window.
        """
        x = check_input(x)
        size = self.base._output_size(x, output_size)
        check_output_size("output_size", x.shape[0], *size)
        if callable(targets) and not isinstance(targets, Tensor):
            raise ValueError("targets: SESS weighs patches by class scores, so it needs class indices, not a callable")
        with preserve_buffers(self.model), torch.no_grad():
            logits = model_logits(self.model(x)) if targets is None else None
        with preserve_buffers(self.model), torch.no_grad():
            classes = model_logits(self.model(x[:1])).shape[-1] if logits is None else logits.shape[1]
        indices, multi = class_indices(targets, x.shape[0], classes, logits)  # checks the range too
        indices = indices.to(x.device)
        with preserve_buffers(self.model):
            fused = torch.stack(
                [
                    torch.stack(
                        [self._image_map(x[n : n + 1], indices[n, t], eigen_smooth) for t in range(indices.shape[1])]
                    )
                    for n in range(x.shape[0])
                ]
            )  # [N, T, H, W]
        if not raw:
            batch, count = fused.shape[:2]
            fused = cam_postprocess(fused.flatten(0, 1), size, relu=False).reshape(batch, count, *size)
        return fused if multi else fused[:, 0]

    def _scales(self, window: int) -> list[int]:
        if self.scales is not None:
            return list(self.scales)
        step = round(window * self.scale_step_ratio)
        return [window + step * i for i in range(self.num_scales)]

    def _patches(self, image: Tensor, window: int, step: int) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
        """The patches ``[P, C, window, window]`` of every scale, and where each was cut: (x1, y1,
        scaled width, scaled height)."""
        height, width = image.shape[-2:]
        patches, places = [], []
        for scale in self._scales(window):
            if scale < window:
                raise ValueError(f"scales: every scale must be at least the window size {window}, got {scale}")
            short, long = min(height, width), max(height, width)
            resized_long = int(scale * long / short)
            new_size = (scale, resized_long) if height <= width else (resized_long, scale)
            scaled = (
                image
                if new_size == (height, width)
                else F.interpolate(image, size=new_size, mode="bilinear", align_corners=False, antialias=True)
            )
            for y1 in _window_starts(new_size[0], step, window):
                for x1 in _window_starts(new_size[1], step, window):
                    patches.append(scaled[:, :, y1 : y1 + window, x1 : x1 + window])
                    places.append((x1, y1, new_size[1], new_size[0]))
        return torch.cat(patches), places

    def _image_map(self, image: Tensor, target: Tensor, eigen_smooth: bool) -> Tensor:
        """The fused map ``[H, W]`` of one image ``[1, C, H, W]`` for one class (a 0-d LongTensor)."""
        height, width = image.shape[-2:]
        window = self.window_size or min(height, width)
        patches, places = self._patches(image, window, self.step_size or window)
        with torch.no_grad():
            scores = torch.cat(
                [
                    self._scores(self.model(patches[start : start + self.patches_per_forward]), target)
                    for start in range(0, patches.shape[0], self.patches_per_forward)
                ]
            ).clamp(min=0)
        # the patches kept after the pre-filter: a fixed count, chosen on the device
        kept = torch.sort(scores, stable=True).indices[int(scores.shape[0] * self.pre_filter_ratio) :]
        best = scores.amax()  # the last kept
        weights = torch.where(best > 0, scores[kept] / torch.where(best > 0, best, 1), torch.ones_like(scores[kept]))
        call = {"eigen_smooth": True} if eigen_smooth else {}
        maps = self.base(patches[kept], target.expand(kept.shape[0]), **call)  # [kept, window, window]
        # back in patch order, so that each is pasted where it was cut without reading `kept` on the host;
        # the filtered ones are 0 and, whatever theta, counted nowhere (`pasted`)
        dtype = map_dtype(image.dtype)
        weighted = maps.new_zeros(len(places), window, window, dtype=dtype)
        weighted = weighted.index_copy(0, kept, (maps * weights[:, None, None].to(maps.dtype)).to(dtype))
        pasted = torch.zeros(len(places), dtype=torch.bool, device=image.device).index_fill(0, kept, True)
        total = torch.zeros(height, width, dtype=dtype, device=image.device)
        counts = torch.zeros_like(total)
        for start, stop in _runs_of_one_size(places):  # slices: no index tensor to copy to the device
            scaled_width, scaled_height = places[start][2:]
            canvases = torch.zeros(stop - start, scaled_height, scaled_width, dtype=dtype, device=image.device)
            for canvas, (x1, y1, _, _), patch_map in zip(canvases, places[start:stop], weighted[start:stop]):
                canvas[y1 : y1 + window, x1 : x1 + window] = patch_map
            back = F.interpolate(canvases[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
            if self.pool == "max":
                total = torch.maximum(total, back.amax(0))
            else:
                above = (back > self.theta) & pasted[start:stop, None, None]
                total = total + torch.where(above, back, torch.zeros_like(back)).sum(0)
                counts = counts + above.sum(0)
        if self.pool == "mean":
            total = torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(total))
        return _gaussian_blur(total) if self.smooth else total

    def _scores(self, output: Any, target: Tensor) -> Tensor:
        logits = model_logits(output)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise TypeError("the model output is not [N, classes] logits; SESS weighs patches by class scores")
        scores = torch.softmax(logits.float(), dim=1) if self.use_softmax_scores else logits.float()
        return scores.index_select(1, target.reshape(1))[:, 0]  # a 0-d index would be read on the host


def _runs_of_one_size(places: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of consecutive patches cut from the image at one size."""
    runs = []
    for i, place in enumerate(places):
        if runs and places[runs[-1][0]][2:] == place[2:]:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _window_starts(length: int, step: int, window: int) -> list[int]:
    """Where windows start along one side; one that would cross the end is shifted back in."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _gaussian_blur(image: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """An ``[H, W]`` map blurred by a separable Gaussian, borders reflected without the edge
    (OpenCV's default ``BORDER_REFLECT_101``)."""
    offsets = torch.arange(size, dtype=torch.float64, device=image.device) - (size - 1) / 2  # made there: no copy
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image.dtype)
    half = size // 2
    padded = F.pad(image[None, None], (half, half, half, half), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, size))
    return F.conv2d(blurred, kernel.view(1, 1, size, 1))[0, 0]
