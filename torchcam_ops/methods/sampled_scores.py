"""The shared base of SS-CAM and IS-CAM: Score-CAM whose channel scores are averaged over several
masked copies per channel (noisy masks, or masks scaled along a path)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ChannelsLast, ImagesPerForward, check_channels_last, check_images_per_forward
from torchcam_ops.methods.masking import masked_scores
from torchcam_ops.methods.targeting import check_finite_scores
from torchcam_ops.ops import cam_postprocess

SampledScoreVariant = Literal["original", "torchcam"]


class SampledScoreCAM(GradientFreeCAM):
    r"""Score-CAM with S masked copies per channel, their scores averaged.

    ``variant="original"`` builds on the original Score-CAM (:class:`~torchcam_ops.methods.ScoreCAM`):
    masks :math:`M_k = \operatorname{norm}(\operatorname{Up}(A_k))`, each copy scored by the class's
    softmax probability, :math:`w_k = \frac{1}{S}\sum_s \operatorname{softmax}(f(x \odot M_k^{(s)}))_c`,
    ReLU at the input's resolution, channels whose :math:`M_k` is all zeros skipped.
    ``variant="torchcam"`` is torchcam 0.5's: masks normalised per channel before the upsampling,
    :math:`M_k = \operatorname{Up}((A_k - \min A_k) / (\max A_k - \min A_k + 10^{-8}))`, each copy
    scored by its class logit minus x's, and :math:`w = \operatorname{softmax}_k(\frac{1}{S}\sum_s
    (f(x \odot M_k^{(s)})_c - f(x)_c))`, ReLU at the layer's resolution. In both,
    :math:`L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\sum_k w_k A_k)))` (ReLU before Up in
    torchcam's). The copies :math:`M_k^{(s)}` are each method's.

    The masked images of one image run in forwards of ``masks_per_forward`` (as Score-CAM's:
    ``"auto"``, an int, or None for all at once), without gradients; ``cpu_channels_last`` as
    Score-CAM's.
    """

    needs_class_indices = True
    # S x K masked forwards per image: compiled one forward at a time
    compiles_whole_call = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        num_samples: int,
        variant: SampledScoreVariant = "original",
        masks_per_forward: ImagesPerForward = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        if variant not in ("original", "torchcam"):
            raise ValueError(f"variant: expected 'original' or 'torchcam', got {variant!r}")
        check_images_per_forward(masks_per_forward, "masks_per_forward")
        check_channels_last(cpu_channels_last)
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.num_samples, self.variant = num_samples, variant
        self.relu_at_input_size = variant == "original"
        self.images_per_forward, self.cpu_channels_last = masks_per_forward, cpu_channels_last

    def _copies(self, masks: Tensor, sample: int) -> Tensor:
        """Copy ``sample`` (0-based) of one image's masks ``[K, H, W]``."""
        raise NotImplementedError

    def _base_masks(self, activations: Tensor, size: tuple[int, int]) -> Tensor:
        """The masks ``[K, H, W]`` of one image's channels ``[K, h, w]``, before the copies."""
        if self.variant == "original":
            return cam_postprocess(activations, size, relu=False)
        low = activations.amin((1, 2), keepdim=True)
        shifted = activations - low
        normalised = shifted / (shifted.amax((1, 2), keepdim=True) + 1e-8)
        return F.interpolate(normalised[None], size=size, mode="bilinear", align_corners=False)[0]

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        # the scores are softmax probabilities or logit differences: one NaN logit spoils them all
        check_finite_scores(evidence.logits)
        x, plan, forward = evidence.x, evidence.plan, self._model_forward()
        activations = evidence.activations
        n, channels = activations.shape[:2]
        size = tuple(x.shape[-2:])
        per_forward = plan.per_forward(x.device, channels, x[0, 0].numel())
        plan.expect(n * self.num_samples * -(-channels // per_forward))
        base = [self._base_masks(a, size) for a in activations]
        totals = activations.new_zeros(n, channels, evidence.targets)
        for sample in range(self.num_samples):  # samples outer, images inner: torchcam's order of draws
            for i in range(n):
                classes = evidence.indices[i]

                def score(logits: Tensor, classes: Tensor = classes, i: int = i) -> Tensor:
                    logits = logits.to(activations.dtype)
                    if self.variant == "original":
                        return torch.softmax(logits, dim=1).index_select(1, classes)
                    reference = evidence.logits[i].to(activations.dtype).index_select(0, classes)
                    return logits.index_select(1, classes) - reference

                copies = self._copies(base[i], sample)
                totals[i] += masked_scores(forward, x[i], copies, score, per_forward, score_empty=True, plan=plan)
        mean = totals / self.num_samples
        if self.variant == "torchcam":
            return torch.softmax(mean, dim=1).transpose(1, 2)
        live = torch.stack([(m != 0).flatten(1).any(1) for m in base])  # [n, K]
        return torch.where(live[..., None], mean, torch.zeros_like(mean)).transpose(1, 2)
