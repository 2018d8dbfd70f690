"""SS-CAM (Wang et al. 2020): Score-CAM with noisy masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ChannelsLast, ImagesPerForward
from torchcam_ops.methods.sampled_scores import SampledScoreCAM, SampledScoreVariant


class SSCAM(SampledScoreCAM):
    r"""SS-CAM: Score-CAM whose channel scores are averaged over masks with Gaussian noise.

    Copy s of channel k's mask is :math:`M_k + \delta_k^{(s)}`, :math:`\delta \sim \mathcal{N}(0,
    \sigma^2)` per pixel at the input's resolution (``std`` :math:`\sigma` = 2, ``num_samples`` S = 35,
    torchcam's defaults), and the weights average the S copies' scores
    (:class:`~torchcam_ops.methods.sampled_scores.SampledScoreCAM` for the two variants' masks and
    scores; ``variant="torchcam"`` equals torchcam 0.5's ``SSCAM`` given the same noise). S x K masked
    forwards per image. ``generator`` (a ``torch.Generator``) makes the noise reproducible: per copy,
    per image of the chunk, ``torch.randn(K, H, W, generator=generator) * std`` on the generator's
    device (torch's global generator when None: torchcam's draws in its order, layer by layer).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        num_samples: int = 35,
        std: float = 2.0,
        variant: SampledScoreVariant = "original",
        generator: torch.Generator | None = None,
        masks_per_forward: ImagesPerForward = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"std: expected a finite number >= 0, got {std!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        super().__init__(
            model,
            target_layers,
            num_samples=num_samples,
            variant=variant,
            masks_per_forward=masks_per_forward,
            cpu_channels_last=cpu_channels_last,
            batch_size=batch_size,
            reshape=reshape,
            grid=grid,
        )
        self.std, self.generator = float(std), generator

    def _copies(self, masks: Tensor, sample: int) -> Tensor:
        device = self.generator.device if self.generator is not None else masks.device
        noise = torch.randn(masks.shape, generator=self.generator, device=device, dtype=masks.dtype) * self.std
        return masks + noise.to(masks.device)
