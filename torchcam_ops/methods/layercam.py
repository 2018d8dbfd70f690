"""LayerCAM."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class LayerCAM(BaseCAM):
    r"""LayerCAM (Jiang et al. 2021): pixel-wise positive gradients as weights.

    .. math:: M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k \mathrm{ReLU}(G_k) \odot A_k)))
    """

    reduction = "layercam"
