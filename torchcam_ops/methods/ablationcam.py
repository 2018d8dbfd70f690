"""Ablation-CAM (Desai and Ramaswamy 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.calls import check_on_device
from torchcam_ops.methods.capture import capture_outputs
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import (
    CPU_IMAGES_PER_FORWARD,
    LAYOUT_ERRORS,
    ImagesPerForward,
    agree_to_rounding,
    check_images_per_forward,
)
from torchcam_ops.methods.targeting import model_logits

# Elements of the ablated copies of the layer's output per forward when the layers before it run once
# (16 MB of float32: ResNet-50's layer4 at 224 px, 2048 x 7 x 7 per copy, gives 41 copies). The layers
# after the target hold more per copy than its output (a ViT's attention and MLP), hence the margin.
PREFIX_ONCE_ELEMENTS = 1 << 22


class AblationCAM(GradientFreeCAM):
    r"""Ablation-CAM: each channel weighted by the drop of the class score when it is zeroed.

    With :math:`y_c` the class logit and :math:`y_c^k` the logit with channel k of the target layer's
    output set to zero (the layers before it run as usual; the layers after it receive the ablated
    output):

    .. math:: w_k = \frac{y_c - y_c^k}{y_c}, \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    All K ablations of an image run as forwards of ``ablations_per_forward`` copies of it
    (``"auto"``: as Score-CAM's masked images; None: all at once), without
    gradients; on the CPU a channel that is already all zeros is not forwarded (zeroing it changes
    nothing: :math:`w_k = 0`). On the CPU the layers before the target layer then run once per forward,
    on the image alone, and only the layers after it run on the ablated copies (``"auto"``: as many
    as 2^22 elements of the layer's output hold): ResNet-50's layer4 at 224 px takes seconds instead of
    4 minutes. The call checks this shortcut once per target layer, at the batch size it uses, on its
    first image: its first ablations are scored both ways, and where they differ beyond rounding
    (layers that depend on the batch) or the model fails on it (a layer after the target
    concatenating an earlier tensor of the batch, or a forward that reshapes to its input's batch
    size, as the shipped EfficientNet-Lite0's ``x.view(bs, -1)``), every forward of the call runs on
    copies (the call's :class:`~torchcam_ops.methods.layout.ForwardPlan` keeps the decision).

    pytorch-grad-cam zeroes a channel only when the layer's minimum is 0 and otherwise sets it to that
    minimum minus 1e7; here it is always zeroed, as in the paper, so the two
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
        ablations_per_forward: ImagesPerForward = "auto",
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if callable(reshape) and not isinstance(reshape, str):
            raise ValueError(
                "reshape: AblationCAM zeroes channels of the layer's own output, so it needs None, 'tokens' "
                "or 'channels_last', not a callable"
            )
        check_images_per_forward(ablations_per_forward, "ablations_per_forward")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.images_per_forward = ablations_per_forward

    @property
    def ablations_per_forward(self) -> ImagesPerForward:
        """Ablated copies per forward (the call's forward plan resolves "auto")."""
        return self.images_per_forward

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        activations = evidence.activations
        scores = evidence.logits.to(activations.dtype).gather(1, evidence.indices)  # [n, T]
        check_on_device(
            (scores != 0).all(),
            "targets: a class logit is 0, so Ablation-CAM's relative drop (y - y_k) / y is undefined",
        )
        per_image = []
        for n in range(activations.shape[0]):
            ablated = self._ablated_scores(evidence, n, scores[n])  # [K, T]
            per_image.append((scores[n] - ablated) / scores[n])
        return torch.stack(per_image).transpose(1, 2)

    def _channel_dim(self, output: Tensor) -> int:
        return 1 if self.reshape is None else output.dim() - 1

    def _ablated_scores(self, evidence: LayerEvidence, n: int, original: Tensor) -> Tensor:
        """The class logits ``[K, T]`` of image ``n`` with each channel k of the layer zeroed in turn
        (``original``: its logits ``[T]`` without ablation). Whether the layers before the target run
        once (the shortcut) is checked on the call's first image with enough channels to ablate, and
        kept in the call's plan for the rest of the call."""
        image, classes, plan = evidence.x[n], evidence.indices[n], evidence.plan
        activations = evidence.activations[n]
        channels = activations.shape[0]
        eager_cpu = image.device.type == "cpu" and not torch.compiler.is_compiling()
        if eager_cpu:
            # zeroing an all-zero channel changes nothing: its logits are y, its weight 0
            candidates = activations.flatten(1).ne(0).any(1).nonzero()[:, 0]
        else:
            candidates = torch.arange(channels, device=image.device)
        step = plan.per_forward(image.device, max(1, candidates.shape[0]), image[0].numel())
        full = original[None].expand(channels, -1).clone()
        if candidates.numel() == 0:
            return full
        auto = self.images_per_forward == "auto"
        # the shortcut forwards hold as many copies of the layer's output as PREFIX_ONCE_ELEMENTS allow
        shortcut_step = max(step, PREFIX_ONCE_ELEMENTS // max(1, activations.numel())) if auto else step
        layer = evidence.layer.name if evidence.layer.call is None else f"{evidence.layer.name}@{evidence.layer.call}"
        scored, rest = [], candidates
        if eager_cpu and layer not in plan.prefix_once:
            # where the shortcut may take over, the first copies only serve as its check's reference: a few do
            first = candidates[: min(step, CPU_IMAGES_PER_FORWARD) if auto else step]
            scored.append(self._forward_ablating(image, evidence, classes, first, prefix_once=False))
            rest = candidates[first.shape[0] :]
            if rest.numel():
                # the check runs the shortcut at the batch size it will use: layers after the target
                # that depend on the batch (batch statistics) then differ from the copies' scores;
                # it compares on the host, so it runs on the CPU only (on a device it would stall)
                trial = self._shortcut_scores(image, evidence, classes, candidates[:shortcut_step], scored[0])
                plan.prefix_once[layer] = trial is not None
                if trial is not None:
                    scored.append(trial[first.shape[0] :])
                    rest = candidates[shortcut_step:]
        prefix_once = eager_cpu and plan.prefix_once.get(layer, False)
        if rest.numel():  # an empty tensor splits into one empty chunk, whose forward would hold no copy
            scored += [
                self._forward_ablating(image, evidence, classes, chunk, prefix_once=prefix_once)
                for chunk in rest.split(shortcut_step if prefix_once else step)
            ]
        full[candidates] = torch.cat(scored)
        return full

    def _forward_ablating(
        self, image: Tensor, evidence: LayerEvidence, classes: Tensor, chunk: Tensor, *, prefix_once: bool
    ) -> Tensor:
        """The class logits ``[len(chunk), T]`` of ``image`` with channel ``chunk[i]`` of the layer
        zeroed in copy i. With ``prefix_once`` the model runs on the image alone and the copies start
        at the layer's output (the layers after it run on the batch of copies); otherwise on a batch of
        copies of the image."""
        layer = evidence.layer
        call = 0 if layer.call is None else layer.call % evidence.calls

        def ablate(output: Tensor, index: int) -> Tensor:
            if index != call:
                return output.clone()
            dim = self._channel_dim(output)
            keep = torch.ones(chunk.shape[0], output.shape[dim], dtype=torch.bool, device=output.device)
            keep[torch.arange(chunk.shape[0], device=output.device), chunk] = False
            shape = [1] * output.dim()
            shape[0], shape[dim] = chunk.shape[0], output.shape[dim]
            # a batch of one output broadcasts to the copies
            return torch.where(keep.view(shape), output, torch.zeros_like(output))

        inputs = image[None] if prefix_once else image[None].expand(chunk.shape[0], *image.shape)
        with capture_outputs([layer], {id(layer.module): ablate}):
            # the eager module: the substitute must run as a forward hook, outside any compiled graph
            out = self.model(inputs)
        return model_logits(out).to(evidence.activations.dtype).index_select(1, classes)

    def _shortcut_scores(
        self, image: Tensor, evidence: LayerEvidence, classes: Tensor, chunk: Tensor, expected: Tensor
    ) -> Tensor | None:
        """The ablations of ``chunk`` scored with the layers before the target layer run once, on the
        image alone, when its first rows score the same (to rounding) as the batch of copies did
        (``expected``); None otherwise: when a later layer combines the layer's output with an earlier
        tensor of the batch (a concatenation raises on the mismatched batch), when the forward reshapes
        to its input's batch size, or when layers depend on the batch (dropout in training mode draws
        one mask per copy; batch statistics differ between batch sizes)."""
        try:
            scores = self._forward_ablating(image, evidence, classes, chunk, prefix_once=True)
        except LAYOUT_ERRORS:  # a mismatched concatenation or reshape: the batch of copies then
            return None
        if scores.shape[0] != chunk.shape[0]:  # agree_to_rounding compares the rest of the shape
            return None
        return scores if agree_to_rounding(scores[: expected.shape[0]], expected, image.dtype) else None
