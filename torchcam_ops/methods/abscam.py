"""Abs-CAM (Zeng et al. 2022), both phases."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM, LayerEvidence
from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import (
    ChannelsLast,
    ForwardPlan,
    ImagesPerForward,
    check_channels_last,
    check_images_per_forward,
)
from torchcam_ops.methods.masking import channel_chunks, masked_scores
from torchcam_ops.ops import cam_postprocess


class AbsCAM(BaseCAM):
    r"""Abs-CAM: absolute-value gradient weights, then (phase 2) a score-weighted refinement.

    Phase 1 (the initial map), with :math:`w_k = \frac{1}{hw}\sum_{ij} |G_k^{ij}|`:

    .. math:: M_0 = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    Phase 2 (our reading of "linearly combines the initial saliency map with the original image"):
    each channel's weighted map :math:`M_k = \operatorname{norm}(\operatorname{Up}(w_k A_k))` masks
    the input, the model scores the masked image, :math:`s_k = \operatorname{softmax}(f(x \odot M_k))_c`,
    and :math:`L = \operatorname{norm}(\mathrm{ReLU}(\sum_k s_k M_k))`. The masked forwards per image
    and class run in forwards of ``masks_per_forward`` masked images (``"auto"``: as Score-CAM's;
    None: all at once), without gradients; channels whose :math:`M_k` is all zeros (a constant
    :math:`w_k A_k`, e.g. a dead channel) add nothing to the sum and, on the CPU, are not scored; there
    an eager model in eval mode gets the masked images channels-last as ``cpu_channels_last`` says (True,
    False, or ``"auto"``: where the call takes 16 forwards or more and a trial on its first forward
    computes the same; :class:`~torchcam_ops.methods.layout.ForwardPlan`).
    ``batch_size`` bounds the images explained at once, as for every CAM explainer (64 here). With
    ``raw=True``, phase 1 gives the layer-resolution maps before ReLU, phase 2
    :math:`\sum_k s_k M_k` at the input's resolution.
    """

    reduction = "abscam"

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        phase: int = 2,
        masks_per_forward: ImagesPerForward = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        batch_size: int | None = 64,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if phase not in (1, 2):
            raise ValueError(f"phase: expected 1 or 2, got {phase!r}")
        check_images_per_forward(masks_per_forward, "masks_per_forward")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.phase = phase
        self.images_per_forward = masks_per_forward
        check_channels_last(cpu_channels_last)
        self.cpu_channels_last = cpu_channels_last
        if phase == 2:
            self.needs_class_indices = True
            self.no_create_graph = (
                "Abs-CAM phase 2 weights channels by the scores of masked images, computed without gradients; "
                "use phase=1 for maps that carry gradients"
            )
            # K masked forward passes per image and class: compiled one by one
            self.compiles_whole_call = False

    @property
    def masks_per_forward(self) -> ImagesPerForward:
        """Masked images per forward in phase 2 (the call's forward plan resolves "auto")."""
        return self.images_per_forward

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        if self.phase == 1:
            return super().layer_maps(evidence)
        x, plan = evidence.x, evidence.plan
        dtype = map_dtype(x.dtype)
        channels, pixels = evidence.activations.shape[1], x[0, 0].numel()
        per_forward = plan.per_forward(x.device, channels, pixels)
        plan.expect(x.shape[0] * evidence.targets * -(-channels // per_forward))
        with torch.no_grad():
            maps = torch.empty(x.shape[0], evidence.targets, *x.shape[-2:], device=x.device, dtype=dtype)
            for t, g in enumerate(evidence.gradients):
                weights = g.to(dtype).abs().mean((2, 3))  # [n, K]
                for n in range(x.shape[0]):
                    weighted = evidence.activations[n].to(dtype) * weights[n, :, None, None]
                    maps[n, t] = self._refine(x[n], weighted, evidence.indices[n, t : t + 1], per_forward, plan)
        return maps

    def _refine(self, image: Tensor, weighted: Tensor, target: Tensor, per_forward: int, plan: ForwardPlan) -> Tensor:
        r""":math:`\sum_k s_k M_k` ``[H, W]`` (before ReLU) for one image ``[C, H, W]`` and class (a
        LongTensor ``[1]`` on the image's device, never read on the host) from its weighted activations
        ``[K, h, w]``, forwarded as ``plan`` says."""
        pixels = image[0].numel()
        combined = None
        for start, stop in channel_chunks(weighted.shape[0], pixels, per_forward):
            # M_k at the input size
            masks = cam_postprocess(weighted[start:stop], tuple(image.shape[-2:]), relu=False)
            # A dead post-ReLU channel (30-60% of EfficientNet-Lite0's last layer on a photo) gives an
            # all-zero M_k, which adds s_k * 0 to L: on the CPU it is not forwarded.
            scores = masked_scores(
                self._model_forward(),
                image,
                masks,
                lambda logits, dtype=masks.dtype: torch.softmax(logits.to(dtype), dim=1).index_select(1, target)[:, 0],
                per_forward,
                plan=plan,
            )
            part = torch.einsum("k,khw->hw", scores, masks)
            combined = part if combined is None else combined + part
        return combined
