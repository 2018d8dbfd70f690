"""Refine-CAM: the product of a CAM's normalised maps across layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.gig_cam import GIGCAM
from torchcam_ops.methods.graphs import GraphableWrapper
from torchcam_ops.methods.layers import LayerSpec
from torchcam_ops.methods.targeting import Targets


class RefineCAM(GraphableWrapper):
    r"""Refine-CAM: a base CAM's maps of several target layers, multiplied.

    .. math:: L = \operatorname{norm}\Big(\prod_l \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(L_l)))\Big)

    with :math:`L_l` the ``base`` method's raw map of layer l (``"gradcam++"`` by default, any CAM
    registered in :data:`~torchcam_ops.methods.METHODS` but GIG-CAM, which fuses its own way). A region survives
    where every layer marks it, which keeps an early layer's resolution and drops its noise.
    All layers come from the same forward pass (and, for gradient methods, one backward per target).
    ``options`` go to the base explainer; the call takes the base's arguments (``eigen_smooth``,
    ``aug_smooth``...). pytorch-grad-cam's ``RefineCAM`` runs one base explainer per layer; its maps
    are ours.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        base: str = "gradcam++",
        **options: Any,
    ) -> None:
        from torchcam_ops.methods import METHODS  # the registry imports this module

        if not isinstance(base, str) or base not in METHODS:
            raise ValueError(f"base: expected a method name, one of {sorted(METHODS)}, got {base!r}")
        explainer = METHODS[base](model, target_layers, **options)
        if not isinstance(explainer, BaseCAM) or isinstance(explainer, GIGCAM):
            explainer.close()
            raise ValueError(f"base: {base!r} has no per-layer maps to multiply; choose a CAM such as 'gradcam++'")
        explainer.layer_fusion = "product"
        self.base = explainer

    @property
    def model(self) -> nn.Module:
        return self.base.model

    @property
    def smoothing_options(self) -> tuple[str, ...]:
        return self.base.smoothing_options

    def has_channel_terms(self) -> bool:
        """Whether the base's maps are sums of per-channel terms (``eigen_smooth``)."""
        return self.base.has_channel_terms()

    def __enter__(self) -> RefineCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the explainer (and its base)."""
        self.base.close()

    def __call__(self, x: Tensor, targets: Targets = None, **call: Any) -> Tensor | list[Tensor]:
        """The base explainer's call (:meth:`BaseCAM.__call__`), its layers' maps multiplied."""
        return self.base(x, targets, **call)
