"""Random-CAM: a baseline for the metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape


class RandomCAM(GradientFreeCAM):
    r"""Random-CAM: the layer's channels weighted at random, a baseline that a method must beat.

    .. math:: w_k \sim \mathcal{U}(-1, 1), \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    drawn independently per image, target and layer. ``generator`` (a ``torch.Generator``) makes the
    draws reproducible: the weights of a layer are ``torch.rand(n, T, K, generator=generator) * 2 - 1``
    in the maps' dtype (float32, float64 for float64 inputs) on the generator's device, drawn chunk
    after chunk of ``batch_size`` images and, within a chunk, layer after layer; None draws from
    torch's global generator. The weights do not depend on the class:
    ``targets`` only sets how many maps per image are returned, and the model's output may be anything.
    """

    needs_class_indices = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.generator = generator

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        activations = evidence.activations
        n, channels = activations.shape[:2]
        device = self.generator.device if self.generator is not None else activations.device
        shape = (n, evidence.targets, channels)
        weights = torch.rand(shape, generator=self.generator, device=device, dtype=activations.dtype) * 2 - 1
        return weights.to(activations.device)
