"""CAM (Zhou et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.nn.convert import find_classifier


class CAM(GradientFreeCAM):
    r"""CAM, for models whose head is global average pooling followed by a linear classifier: the
    channel weights are the classifier's row of the class, :math:`w_k = W_{c,k}`,

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k W_{c,k} A_k)))

    (the bias shifts every pixel alike and is left out). On such a model this is Grad-CAM exactly:
    Grad-CAM's weights are :math:`W_{c,k} / hw`. ``fc`` is the classifier (a module of the model or
    its dotted name; None: the model's last ``nn.Linear``); its input features must be the target
    layer's channels.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        fc: str | nn.Linear | None = None,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.fc = _classifier(self.model, fc)

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        activations = evidence.activations
        weight = self.fc.weight
        if weight.shape[1] != activations.shape[1]:
            raise ValueError(
                f"fc: the classifier takes {weight.shape[1]} features, but the target layer has "
                f"{activations.shape[1]} channels (CAM needs the layer that is pooled into the classifier)"
            )
        return weight.detach().to(device=activations.device, dtype=activations.dtype)[evidence.indices]


def _classifier(model: nn.Module, fc: str | nn.Linear | None) -> nn.Linear:
    found = find_classifier(model, fc, argument="fc")
    if found is None:
        raise ValueError("fc: the model has no nn.Linear; CAM needs a global-average-pooling + linear head")
    return found[1]
