"""IS-CAM (Naidu et al. 2020): Score-CAM integrated along scaled masks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ChannelsLast, ImagesPerForward
from torchcam_ops.methods.sampled_scores import SampledScoreCAM, SampledScoreVariant


class ISCAM(SampledScoreCAM):
    r"""IS-CAM: Score-CAM whose channel scores are averaged along masks scaled from 0 towards the mask.

    Copy s = 1..S (``num_samples`` S = 10) of channel k's mask is :math:`c_s M_k`;
    ``variant="original"``: :math:`c_s = s / S`, the Riemann sum of the straight path from the empty
    mask to :math:`M_k` that the integration stands for; ``variant="torchcam"``: torchcam 0.5's
    cumulative :math:`c_s = \sum_{j=1}^{s} j / S` (up to :math:`(S + 1)/2`, which scales the masked
    image beyond the input; equal to its ``ISCAM``). The weights average the S copies' scores
    (:class:`~torchcam_ops.methods.sampled_scores.SampledScoreCAM` for the two variants' masks and
    scores). S x K masked forwards per image.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        num_samples: int = 10,
        variant: SampledScoreVariant = "original",
        masks_per_forward: ImagesPerForward = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
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

    def _coefficient(self, sample: int) -> float:
        s, total = sample + 1, self.num_samples
        return s / total if self.variant == "original" else s * (s + 1) / (2 * total)

    def _copies(self, masks: Tensor, sample: int) -> Tensor:
        return masks * self._coefficient(sample)
