"""The shared traits of the CAMs whose channel weights need no gradient: Score-CAM, Ablation-CAM,
Eigen-CAM and CAM."""

from __future__ import annotations

from typing import ClassVar

from torchcam_ops.methods.base import BaseCAM


class GradientFreeCAM(BaseCAM):
    """A CAM explainer whose raw map of a layer is ``sum_k w_k A_k`` with weights that need no
    gradient: one forward pass without gradients gives its :class:`~torchcam_ops.methods.base.LayerEvidence`
    (activations in the maps' dtype, class indices, logits); the method's :meth:`layer_maps` may run
    more forwards (masked images, ablated copies). ``create_graph=True`` is refused: the weights carry
    no gradient."""

    needs_gradients: ClassVar[bool] = False
    needs_class_indices = True
    no_create_graph = "{name} weights the channels by forward passes without gradients; its maps carry none"
    # forward passes without gradients; the masked ones run the model's own (compiled) forward
    compiles_whole_call = False
