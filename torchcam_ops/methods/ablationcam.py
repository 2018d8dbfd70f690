"""Ablation-CAM (Desai and Ramaswamy 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerSpec, Reshape, check_on_device
from torchcam_ops.methods.capture import capture_outputs
from torchcam_ops.methods.gradient_free import GradientFreeCAM, LayerActivations
from torchcam_ops.methods.masking import MasksPerForward, check_masks_per_forward, resolve_masks_per_forward


class AblationCAM(GradientFreeCAM):
    r"""Ablation-CAM: each channel weighted by the drop of the class score when it is zeroed.

    With :math:`y_c` the class logit and :math:`y_c^k` the logit with channel k of the target layer's
    output set to zero (the layers before it run as usual; the layers after it receive the ablated
    output):

    .. math:: w_k = \frac{y_c - y_c^k}{y_c}, \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    All K ablations of an image run as forwards of ``ablations_per_forward`` copies of it
    (``"auto"``: 4 on the CPU, 64 on a GPU, as Score-CAM's masked images; None: all at once), without
    gradients; on the CPU a channel that is already all zeros is not forwarded (zeroing it changes
    nothing: :math:`w_k = 0`). pytorch-grad-cam zeroes a channel only when the layer's minimum is 0 and
    otherwise sets it to that minimum minus 1e7; here it is always zeroed, as in the paper, so the two
    agree on layers after a ReLU. ``reshape`` may be None, ``"tokens"`` (the channel is zeroed in every
    token, the class token too) or ``"channels_last"``; a callable layout cannot be ablated. A class
    logit of 0 has no relative drop: it raises. A model in training mode scores each forward's copies
    with their own batch statistics, so its maps depend on ``ablations_per_forward``: explain models in
    eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        ablations_per_forward: MasksPerForward = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if callable(reshape) and not isinstance(reshape, str):
            raise ValueError(
                "reshape: AblationCAM zeroes channels of the layer's own output, so it needs None, 'tokens' "
                "or 'channels_last', not a callable"
            )
        check_masks_per_forward(ablations_per_forward, "ablations_per_forward")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.ablations_per_forward = ablations_per_forward

    def _layer_maps_of(self, x: Tensor, activations: LayerActivations, indices: Tensor, logits: Tensor) -> Tensor:
        scores = logits.to(activations.maps.dtype).gather(1, indices)  # [n, T]
        check_on_device(
            (scores != 0).all(),
            "targets: a class logit is 0, so Ablation-CAM's relative drop (y - y_k) / y is undefined",
        )
        maps = []
        for n in range(x.shape[0]):
            ablated = self._ablated_scores(x[n], activations, indices[n], n, scores[n])  # [K, T]
            weights = (scores[n] - ablated) / scores[n]
            maps.append(torch.einsum("kt,khw->thw", weights, activations.maps[n]))
        return torch.stack(maps)

    def _channel_dim(self, output: Tensor) -> int:
        return 1 if self.reshape is None else output.dim() - 1

    def _ablated_scores(
        self, image: Tensor, activations: LayerActivations, classes: Tensor, n: int, original: Tensor
    ) -> Tensor:
        """The class logits ``[K, T]`` of image ``n`` with each channel k of the layer zeroed in turn
        (``original``: its logits ``[T]`` without ablation)."""
        layer, channels = activations.layer, activations.maps.shape[1]
        call = 0 if layer.call is None else layer.call % activations.calls
        live = activations.maps[n].flatten(1).ne(0).any(1)
        if image.device.type == "cpu" and not torch.compiler.is_compiling():
            # zeroing an all-zero channel changes nothing: its logits are y, its weight 0
            candidates = live.nonzero()[:, 0]
        else:
            candidates = torch.arange(channels, device=image.device)
        step = resolve_masks_per_forward(self.ablations_per_forward, image.device, max(1, candidates.shape[0]))
        scored = []
        for start in range(0, candidates.shape[0], step):
            chunk = candidates[start : start + step]

            def ablate(output: Tensor, index: int, chunk: Tensor = chunk) -> Tensor:
                if index != call:
                    return output.clone()
                dim = self._channel_dim(output)
                keep = torch.ones(chunk.shape[0], output.shape[dim], dtype=torch.bool, device=output.device)
                keep[torch.arange(chunk.shape[0], device=output.device), chunk] = False
                shape = [1] * output.dim()
                shape[0], shape[dim] = chunk.shape[0], output.shape[dim]
                return torch.where(keep.view(shape), output, torch.zeros_like(output))

            with capture_outputs([layer], {id(layer.module): ablate}):
                # the eager module: the substitute must run as a forward hook, outside any compiled graph
                out = self.model(image[None].expand(chunk.shape[0], *image.shape))
            scored.append(out.to(activations.maps.dtype).index_select(1, classes))
        full = original[None].expand(channels, -1).clone()
        if scored:
            full[candidates] = torch.cat(scored)
        return full
