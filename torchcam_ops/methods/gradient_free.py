"""The shared base of the CAMs whose channel weights come from forward passes only: Score-CAM,
Ablation-CAM, Eigen-CAM and CAM."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.capture import capture_outputs, check_aliases
from torchcam_ops.methods.layers import TargetLayer
from torchcam_ops.methods.targeting import Targets, model_logits, resolve_targets, slice_targets
from torchcam_ops.ops import cam_postprocess


class LayerActivations(NamedTuple):
    """A target layer's activations in one forward pass of a chunk of images."""

    layer: TargetLayer
    maps: Tensor  # the channel maps [n, K, h, w] (after ``reshape``), in the maps' dtype
    calls: int  # how many times the layer's module ran in the forward pass


class GradientFreeCAM(BaseCAM):
    """A CAM explainer whose raw map of a layer is ``sum_k w_k A_k`` with weights that need no
    gradient; subclasses implement :meth:`_layer_maps_of`. Maps are then post-processed as every
    CAM's (ReLU, Up, norm; mean of the layers, norm), with ReLU at the layer's resolution, or at the
    input's when :meth:`_relu_at_input_size` says so. ``create_graph=True`` is refused: the weights
    carry no gradient."""

    reduces_gradients: ClassVar[bool] = False

    def _compiles_with_model(self) -> bool:
        return False  # forward passes without gradients; the masked ones run the model's own (compiled) forward

    def _relu_at_input_size(self) -> bool:
        return False

    def _needs_classes(self) -> bool:
        return True

    def _layer_maps_of(self, x: Tensor, activations: LayerActivations, indices: Tensor, logits: Tensor) -> Tensor:
        """The raw maps ``[n, T, h, w]`` of one layer of a chunk of images ``x``, from its activations,
        the class indices ``[n, T]`` and the model's logits ``[n, classes]`` on ``x``."""
        raise NotImplementedError

    def _explain(
        self, x: Tensor, targets: Targets, raw: bool, size: tuple[int, int], create_graph: bool
    ) -> Tensor | list[Tensor]:
        if create_graph:
            raise ValueError(
                f"create_graph: {type(self).__name__} weights the channels by forward passes without "
                "gradients; its maps carry none"
            )
        with torch.no_grad():
            chunks = [
                self._chunk_maps(x[start:stop], slice_targets(targets, start, stop, x.shape[0]))
                for start, stop in self._chunks(x.shape[0])
            ]
        per_layer, multi = self._joined(chunks)
        if raw:
            return self._raw_output(per_layer, multi)
        if self._relu_at_input_size():
            input_size = tuple(x.shape[-2:])
            per_layer = [
                cam_postprocess(m.flatten(0, 1), input_size, relu=False, normalize=False).reshape(
                    *m.shape[:2], *input_size
                )
                for m in per_layer
            ]
        return self._fuse(per_layer, size, multi)

    def _classes(self, output: Any, targets: Targets, batch: int) -> tuple[Tensor, bool]:
        """The class indices ``[n, T]`` the maps are for, and whether T classes per image were asked
        for, from the model's output on the chunk."""
        logits = model_logits(output)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            described = f"shape {list(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
            raise TypeError(
                f"the model output ({described}) is not [N, classes] logits; {type(self).__name__} weighs "
                "channels by class scores, so it explains classifiers"
            )
        _, multi, indices = resolve_targets(output, targets, batch)
        return indices, multi

    def _chunk_maps(self, x: Tensor, targets: Targets) -> tuple[list[Tensor], bool]:
        if callable(targets) and not isinstance(targets, Tensor) and self._needs_classes():
            raise ValueError(f"targets: {type(self).__name__} needs class indices, not a callable")
        with capture_outputs(self.layers) as captured:
            output = self.model(x)
            check_aliases()
            outputs = [self._layer_output(layer, captured[id(layer.module)]) for layer in self.layers]
        indices, multi = self._classes(output, targets, x.shape[0])
        dtype = map_dtype(x.dtype)
        maps = []
        for layer, out in zip(self.layers, outputs):
            activations = LayerActivations(
                layer, self._channel_maps(out, layer.name).to(dtype), len(captured[id(layer.module)])
            )
            maps.append(self._layer_maps_of(x, activations, indices, model_logits(output)).to(dtype))
        return maps, multi
