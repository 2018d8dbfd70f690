"""Smooth Grad-CAM++ (Omeiza et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM, ChunkMaps
from torchcam_ops.methods.calls import map_dtype
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.layout import ForwardPlan
from torchcam_ops.methods.targeting import Targets

SmoothGradCAMPlusPlusVariant = Literal["original", "torchcam"]


class SmoothGradCAMPlusPlus(BaseCAM):
    r"""Smooth Grad-CAM++: Grad-CAM++ with the gradients averaged over noisy copies of the input.

    With :math:`x_s = x + \delta_s`, :math:`\delta_s \sim \mathcal{N}(0, \sigma^2)` per pixel and
    channel (``std`` :math:`\sigma` = 0.3, ``num_samples`` S = 4), :math:`G^{(s)}` the gradient of the
    class score to the layer's output on :math:`x_s`, the moments
    :math:`D_p = \frac{1}{S}\sum_s (G^{(s)})^p` and the activations A of x itself,
    ``variant="original"`` (default) is the paper's Grad-CAM++ on those moments:

    .. math:: \alpha_k^{ij} = \frac{D_{2,k}^{ij}}{2 D_{2,k}^{ij} + \sum_{ab} A_k^{ab}\, D_{3,k}^{ij} + 10^{-6}}
              \ (0 \text{ where } D_2 = 0), \qquad
              w_k = \sum_{ij} \alpha_k^{ij}\, \mathrm{ReLU}(D_{1,k}^{ij}), \qquad
              L = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(\textstyle\sum_k w_k A_k)))

    (the numerator of :math:`\alpha` is :math:`D_2`, which Grad-CAM++'s derivation gives; the paper
    prints :math:`D_1`). ``variant="torchcam"`` is torchcam 0.5's ``SmoothGradCAMpp``: the
    denominator's sum is :math:`\sum_{ab} A_k^{ab} D_{3,k}^{ab}` (one number per channel, not the
    activation's sum times the pixel's :math:`D_3`), :math:`\varepsilon = 10^{-8}` with no zeroing,
    the weights take the ReLU of the *last* sample's gradient instead of the mean, and the map sums
    the last noisy copy's activations; given the same noise, its maps equal torchcam's.

    The class of each image is fixed on x (its top class when ``targets`` is None; a callable target
    scores the copies' output, x then its S noisy copies, copy-major). x and its S copies go through
    the model in one forward of :math:`(S + 1) n` images per chunk of ``batch_size`` images (8 by
    default). ``generator`` (a ``torch.Generator``) makes the noise reproducible: the noise of copy s
    is ``torch.randn(x.shape, generator=generator) * std`` on the generator's device, drawn copy
    after copy and chunk after chunk (torch's global generator when None: torchcam's draws, in its
    order, for one chunk).
    """

    reduction = "gradcam++"
    # its noise is drawn eagerly, chunk by chunk: a torch.compile'd model is explained with its eager module
    compiles_whole_call = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        num_samples: int = 4,
        std: float = 0.3,
        variant: SmoothGradCAMPlusPlusVariant = "original",
        generator: torch.Generator | None = None,
        batch_size: int | None = 8,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"std: expected a finite number >= 0, got {std!r}")
        if variant not in ("original", "torchcam"):
            raise ValueError(f"variant: expected 'original' or 'torchcam', got {variant!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        super().__init__(model, target_layers, batch_size=batch_size, reshape=reshape, grid=grid)
        self.num_samples, self.std, self.variant, self.generator = num_samples, float(std), variant, generator

    def has_channel_terms(self) -> bool:
        return False  # the weights come from S + 1 forward passes, not one layer's evidence

    def _noisy_copies(self, x: Tensor) -> Tensor:
        """x and its ``num_samples`` noisy copies, copy-major: ``[(S + 1) n, C, H, W]``."""
        device = self.generator.device if self.generator is not None else x.device
        dtype = map_dtype(x.dtype)
        noise = [
            torch.randn(x.shape, generator=self.generator, device=device, dtype=dtype) * self.std
            for _ in range(self.num_samples)
        ]
        return torch.cat([x, *((x + n.to(x.device)).to(x.dtype) for n in noise)])

    def _chunk_maps(
        self,
        x: Tensor,
        targets: Targets,
        create_graph: bool = False,
        plan: ForwardPlan | None = None,
        *,
        eigen_smooth: bool = False,
    ) -> ChunkMaps:
        fixed, multi = self._fixed_targets(x, targets)
        copies = self.num_samples + 1
        if isinstance(fixed, Tensor):
            fixed = fixed.repeat(copies, 1) if multi else fixed[:, 0].repeat(copies)
        evidence, asked_for_several = self._evidence(self._noisy_copies(x), fixed, create_graph, plan)
        n, dtype = x.shape[0], map_dtype(x.dtype)
        maps = []
        for layer in evidence:
            activations = layer.activations.to(dtype).unflatten(0, (copies, n))  # [S + 1, n, K, h, w]
            per_target = [
                self._smoothed_map(activations, g.to(dtype).unflatten(0, (copies, n))[1:]) for g in layer.gradients
            ]
            maps.append(torch.stack(per_target, dim=1))
        return ChunkMaps(maps, bool(asked_for_several if multi is None else multi))

    def _smoothed_map(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """The raw map ``[n, h, w]`` from the activations ``[S + 1, n, K, h, w]`` (x's first) and the
        noisy copies' gradients ``[S, n, K, h, w]``."""
        clean, hw = activations[0], (2, 3)
        squared = gradients.square().mean(0)
        cubed = gradients.pow(3).mean(0)
        if self.variant == "original":
            alpha = squared / (2 * squared + clean.sum(hw, keepdim=True) * cubed + 1e-6)
            alpha = torch.where(squared != 0, alpha, torch.zeros_like(alpha))
            weights = (alpha * torch.relu(gradients.mean(0))).sum(hw)
            return torch.einsum("nk,nkhw->nhw", weights, clean)
        alpha = squared / (2 * squared + (cubed * clean).sum(hw, keepdim=True) + 1e-8)
        weights = (alpha * torch.relu(gradients[-1])).sum(hw)
        return torch.einsum("nk,nkhw->nhw", weights, activations[-1])
