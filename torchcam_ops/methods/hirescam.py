"""HiResCAM."""

from __future__ import annotations

from torchcam_ops.methods.base import BaseCAM


class HiResCAM(BaseCAM):
    r"""HiResCAM (Draelos and Carin 2020): element-wise gradient times activation.

    .. math:: M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k G_k \odot A_k)))
    """

    reduction = "hirescam"
