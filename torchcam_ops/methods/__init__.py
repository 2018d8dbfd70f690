"""Explainers on top of the ops: one small file per method on a shared base (``base.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from torchcam_ops.methods.abscam import AbsCAM
from torchcam_ops.methods.base import BaseCAM, LayerSpec, Targets
from torchcam_ops.methods.gig_cam import GIGCAM, multiscale_fusion
from torchcam_ops.methods.gradcam import GradCAM
from torchcam_ops.methods.gradcam_elementwise import GradCAMElementWise
from torchcam_ops.methods.gradcam_plusplus import GradCAMPlusPlus
from torchcam_ops.methods.hirescam import HiResCAM
from torchcam_ops.methods.input_gradients import TSGB, GuidedBackprop, GuidedGradCAM
from torchcam_ops.methods.integrated_gradcam import IntegratedGradCAM
from torchcam_ops.methods.layercam import LayerCAM
from torchcam_ops.methods.xgradcam import XGradCAM

#: Explainers by the name ``explain`` accepts.
METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam_elementwise": GradCAMElementWise,
    "abscam": AbsCAM,
    "integrated_gradcam": IntegratedGradCAM,
    "gig_cam": GIGCAM,
}


def explain(model: nn.Module, x: Tensor, method: str = "gradcam", *,
            target_layers: LayerSpec | Sequence[LayerSpec], targets: Targets = None, raw: bool = False,
            output_size: int | tuple[int, int] | None = None, **options: Any) -> Tensor | list[Tensor]:
    """Functional form: ``explain(model, x, "hirescam", target_layers=["layer4"], targets=...)``.

    ``options`` go to the explainer (e.g. ``steps`` for integrated_gradcam, ``phase`` for abscam,
    ``batch_size``).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; expected one of {sorted(METHODS)}")
    with METHODS[method](model, target_layers, **options) as explainer:
        return explainer(x, targets, raw=raw, output_size=output_size)


__all__ = ["METHODS", "TSGB", "GuidedBackprop", "GuidedGradCAM", "GIGCAM", "AbsCAM", "BaseCAM", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus",
           "HiResCAM", "IntegratedGradCAM", "LayerCAM", "XGradCAM", "explain", "multiscale_fusion"]
