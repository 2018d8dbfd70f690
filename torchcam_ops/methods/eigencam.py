"""Eigen-CAM (Muhammad and Yeasin 2020)."""

from __future__ import annotations

from torch import Tensor

from torchcam_ops.methods.base import LayerEvidence
from torchcam_ops.methods.gradient_free import GradientFreeCAM
from torchcam_ops.methods.principal_component import first_component


class EigenCAM(GradientFreeCAM):
    r"""Eigen-CAM: the layer's activations projected on their first principal component.

    With the activations of one image as a matrix :math:`X \in \mathbb{R}^{hw \times K}` (a row per
    pixel), centred per channel, :math:`\bar X = X - \mathbf{1}\mu^\top`, and :math:`v_1` the first
    right singular vector of :math:`\bar X`:

    .. math:: L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\bar X v_1)))

    A singular vector's sign is arbitrary, and ReLU keeps one side of the projection, so the sign is
    fixed by a rule: the projection :math:`p = \bar X v_1` correlates positively with the channels'
    mean activation :math:`m = X\mathbf{1}/K` (:math:`\langle p, m - \bar m\rangle > 0`); when that
    correlation is 0, the entry of ``p`` with the largest magnitude (the first, on ties) is positive.
    The map does not depend on the class or on the model's output, which may be anything (detection
    and segmentation models too): ``targets`` only sets how many maps per image are returned (T for
    ``[N, T]`` indices, else one), and a callable target is not called. On a GPU the SVD waits for the
    device (cuSOLVER reports its status to the host): Eigen-CAM is the one explainer whose call
    synchronises, and it cannot be captured in a CUDA graph.
    """

    needs_class_indices = False
    class_specific = False

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        maps = first_component(evidence.activations)[:, None]
        return maps.expand(-1, evidence.targets, -1, -1)
