"""Sobel-CAM: an edge map, a baseline for the metrics that ignores the model."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.methods.calls import check_input, map_dtype
from torchcam_ops.methods.targeting import Targets
from torchcam_ops.ops import cam_postprocess, check_output_size

SobelVariant = Literal["float", "pytorch-grad-cam"]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


class SobelCAM:
    r"""Sobel-CAM: the image's edges, :math:`L = \operatorname{norm}(\tfrac12 |S_x * Y| + \tfrac12 |S_y * Y|)`
    with :math:`Y` the luminance (:math:`0.299 R + 0.587 G + 0.114 B` for three channels, the channels'
    mean otherwise) and :math:`S_x, S_y` the 3x3 Sobel kernels, borders reflected (``cv2``'s
    ``BORDER_REFLECT_101``); resized to the output size, then normalised. The model is never run: a map
    that any explanation of the model should beat on the faithfulness metrics. Targets only set how
    many maps per image are returned.

    ``variant="pytorch-grad-cam"`` computes pytorch-grad-cam's ``sobel_cam`` on images in [0, 1]: the
    image as 8-bit RGB, OpenCV's fixed-point luminance, the absolute gradients rounded and saturated to
    8 bits, their mean rounded to 8 bits.
    """

    def __init__(self, model: nn.Module | None = None, target_layers: Any = None, *, variant: SobelVariant = "float"):
        if variant not in ("float", "pytorch-grad-cam"):
            raise ValueError(f"variant: expected 'float' or 'pytorch-grad-cam', got {variant!r}")
        self.variant = variant

    def __enter__(self) -> SobelCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""

    def __call__(
        self, x: Tensor, targets: Targets = None, *, raw: bool = False, output_size: int | tuple[int, int] | None = None
    ) -> Tensor:
        """Edge maps of ``x`` ``[N, C, H, W]``: ``[N, H, W]`` in [0, 1] (``[N, T, H, W]`` for class indices
        ``[N, T]``); with ``raw=True`` before the normalisation."""
        x = check_input(x)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        size = tuple(x.shape[-2:]) if output_size is None else tuple(output_size)
        check_output_size("output_size", x.shape[0], *size)
        dtype = map_dtype(x.dtype)
        edges = self._edges(x.to(dtype))  # [N, H, W]
        count = targets.shape[1] if isinstance(targets, Tensor) and targets.dim() == 2 else None
        maps = edges if raw else cam_postprocess(edges, size, relu=False)
        return maps if count is None else maps[:, None].expand(-1, count, -1, -1)

    def _edges(self, x: Tensor) -> Tensor:
        if self.variant == "pytorch-grad-cam":
            if x.shape[1] != 3:
                raise ValueError(
                    f"x: the pytorch-grad-cam variant takes RGB images [N, 3, H, W], got {x.shape[1]} channels"
                )
            rgb = (x.clamp(0, 1) * 255).round().to(torch.int64)
            # OpenCV's 8-bit RGB2GRAY: 15-bit fixed-point coefficients, rounded
            gray = (rgb[:, 0] * 9798 + rgb[:, 1] * 19235 + rgb[:, 2] * 3735 + (1 << 14)) >> 15
            luminance = gray.to(x.dtype)[:, None]
        elif x.shape[1] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
            luminance = (x * weights[:, None, None]).sum(1, keepdim=True)
        else:
            luminance = x.mean(1, keepdim=True)
        padded = F.pad(luminance, (1, 1, 1, 1), mode="reflect")  # reflect without the edge: BORDER_REFLECT_101
        kernel_x = _SOBEL_X.to(device=x.device, dtype=x.dtype)[None, None]
        gx = F.conv2d(padded, kernel_x)[:, 0].abs()
        gy = F.conv2d(padded, kernel_x.transpose(2, 3))[:, 0].abs()
        if self.variant == "pytorch-grad-cam":  # cv2.convertScaleAbs, then cv2.addWeighted, each to 8 bits
            gx, gy = torch.round(gx).clamp_max(255), torch.round(gy).clamp_max(255)
            return torch.round(0.5 * gx + 0.5 * gy).clamp_max(255)
        return 0.5 * gx + 0.5 * gy
