"""Score-CAM (Wang et al. 2020)."""

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
from torchcam_ops.methods.masking import channel_chunks, masked_scores
from torchcam_ops.methods.targeting import check_finite_scores
from torchcam_ops.ops import cam_postprocess

ScoreCAMVariant = Literal["original", "pytorch-grad-cam"]


class ScoreCAM(GradientFreeCAM):
    r"""Score-CAM: each channel weighted by the class score of the input masked with it.

    ``variant="original"``, as the authors' public code computes it: with the channel's upsampled
    activation normalised to [0, 1], :math:`M_k = \operatorname{norm}(\operatorname{Up}(A_k))`,

    .. math:: s_k = \operatorname{softmax}(f(x \odot M_k))_c, \qquad
              L = \operatorname{norm}(\mathrm{ReLU}(\textstyle\sum_k s_k \operatorname{Up}(A_k)))

    with ReLU at the input's resolution; a channel whose upsampled activation is constant is skipped
    (:math:`s_k = 0`). Constant means within 8 ulps of its magnitude (``cam_postprocess``'s rule, which
    makes such a mask all zeros), where the authors' code skips only an exactly constant map: a channel
    that varies by rounding noise only is scored there, and skipped here.

    ``variant="pytorch-grad-cam"``, as pytorch-grad-cam computes it: masks from an align-corners
    upsampling, :math:`M_k = (U_k - \min U_k) / (\max U_k - \min U_k + 10^{-8})`, and a softmax over
    the channels of the masked logits, :math:`w = \operatorname{softmax}_k(f(x \odot M_k)_c)`;
    :math:`L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\sum_k w_k A_k)))`.

    The masked images of one image run in forwards of ``masks_per_forward`` (``"auto"``: on the CPU
    about 2^17 pixels, 4 images of 224 px or more, 8 of 128 px, at most 64; 64 on a GPU; None: all at
    once), without gradients, every requested class scored by the same
    forwards. On the CPU, all-zero masks are not forwarded (their score is known: 0 in the original,
    the zero image's logit, forwarded once, in pytorch-grad-cam's variant), and an eager model in eval
    mode gets them channels-last (oneDNN's convolutions run them faster) as ``cpu_channels_last`` says:
    True always, False never, ``"auto"`` (default) where the call takes 16 forwards or more and a trial
    on its first forward computes the same (:class:`~torchcam_ops.methods.layout.ForwardPlan`). A model in training mode
    scores each forward's masked images with their batch statistics, so its maps depend on
    ``masks_per_forward``: explain models in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        variant: ScoreCAMVariant = "original",
        masks_per_forward: ImagesPerForward = "auto",
        cpu_channels_last: ChannelsLast = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if variant not in ("original", "pytorch-grad-cam"):
            raise ValueError(f"variant: expected 'original' or 'pytorch-grad-cam', got {variant!r}")
        check_images_per_forward(masks_per_forward, "masks_per_forward")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.variant = variant
        self.relu_at_input_size = variant == "original"
        self.images_per_forward = masks_per_forward
        check_channels_last(cpu_channels_last)
        self.cpu_channels_last = cpu_channels_last

    @property
    def masks_per_forward(self) -> ImagesPerForward:
        """Masked images per forward (the call's forward plan resolves "auto")."""
        return self.images_per_forward

    def _masks(self, activations: Tensor, size: tuple[int, int]) -> Tensor:
        if self.variant == "original":
            return cam_postprocess(activations, size, relu=False)
        upsampled = F.interpolate(activations[None], size=size, mode="bilinear", align_corners=True)[0]
        low = upsampled.flatten(1).min(1).values[:, None, None]
        high = upsampled.flatten(1).max(1).values[:, None, None]
        return (upsampled - low) / (high - low + 1e-8)

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        # the scores are softmax probabilities over every class: one NaN logit makes all of them NaN
        check_finite_scores(evidence.logits)
        x, plan, forward = evidence.x, evidence.plan, self._model_forward()
        channels, size = evidence.activations.shape[1], tuple(x.shape[-2:])
        per_forward = plan.per_forward(x.device, channels, x[0, 0].numel())
        plan.expect(x.shape[0] * -(-channels // per_forward))
        per_image = []
        for image, a, classes in zip(x, evidence.activations, evidence.indices):

            def score(logits: Tensor, classes: Tensor = classes, dtype: torch.dtype = a.dtype) -> Tensor:
                if self.variant == "original":
                    return torch.softmax(logits.to(dtype), dim=1).index_select(1, classes)
                return logits.to(dtype).index_select(1, classes)

            scores = torch.cat(
                [
                    masked_scores(
                        forward,
                        image,
                        self._masks(a[start:stop], size),
                        score,
                        per_forward,
                        score_empty=self.variant != "original",
                        plan=plan,
                    )
                    for start, stop in channel_chunks(a.shape[0], image[0].numel(), per_forward)
                ]
            )
            per_image.append(scores if self.variant == "original" else torch.softmax(scores, dim=0))  # [K, T]
        return torch.stack(per_image).transpose(1, 2)
