"""Finer-CAM (Zhang et al. 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM, ChunkMaps
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ForwardPlan
from torchcam_ops.methods.targeting import Targets
from torchcam_ops.ops import CAM_METHODS
from torchcam_ops.targets import FinerTarget


class FinerCAM(BaseCAM):
    r"""Finer-CAM: a CAM of the class against the classes the model finds most like it.

    The score explained for class c of each image is :class:`~torchcam_ops.targets.FinerTarget`'s,

    .. math:: s = \frac{\sum_{j \in S} p_j (y_c - \alpha\, y_j)}{\sum_{j \in S} p_j + 10^{-9}}

    over the look-alikes S at positions ``comparisons`` of the ranking by :math:`|y_j - y_c|`, and the
    map is the ``base`` formula's (a ``cam_reduce`` method: ``"gradcam"`` by default, ``"hirescam"``,
    ``"layercam"``...) for that score. Class indices as for every method (None: each image's top
    class); a callable target is refused (it would replace the score). Any other gradient method
    takes the same score as its target: ``GradCAMPlusPlus(...)(x, FinerTarget(classes))``.
    """

    reduction = "gradcam"
    needs_class_indices = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        base: str = "gradcam",
        alpha: float = 1.0,
        comparisons: Sequence[int] = (1, 2, 3),
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if base not in CAM_METHODS:
            raise ValueError(f"base: expected a cam_reduce method, one of {sorted(CAM_METHODS)}, got {base!r}")
        FinerTarget(None, alpha, comparisons)  # the same checks, at construction
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.reduction, self.alpha, self.comparisons = base, float(alpha), tuple(comparisons)

    def _chunk_maps(
        self,
        x: Tensor,
        targets: Targets,
        create_graph: bool = False,
        plan: ForwardPlan | None = None,
        *,
        eigen_smooth: bool = False,
    ) -> ChunkMaps:
        """A chunk's class indices become its Finer score."""
        if isinstance(targets, Sequence) and not isinstance(targets, Tensor):
            targets = x.new_tensor(list(targets), dtype=torch.long)
        finer = FinerTarget(targets, self.alpha, self.comparisons)
        return super()._chunk_maps(x, finer, create_graph, plan, eigen_smooth=eigen_smooth)
