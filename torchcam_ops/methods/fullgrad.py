"""FullGrad (Srinivas and Fleuret 2019): the input gradient and the bias gradients of every layer."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops._extension import assert_has_ops
from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.calls import check_input, check_positive_or_none, map_dtype, preserve_buffers
from torchcam_ops.methods.capture import capture_outputs, check_aliases
from torchcam_ops.methods.graphs import Graphable, explainer_call
from torchcam_ops.methods.layers import TargetLayer
from torchcam_ops.methods.targeting import Targets, resolve_targets, slice_targets
from torchcam_ops.ops import cam_postprocess, check_output_size

FullGradVariant = Literal["original", "pytorch-grad-cam"]


class FullGrad(Graphable):
    r"""FullGrad: the input-gradient term plus the bias-gradient term of every convolution and
    batch normalisation, each post-processed and summed.

    With :math:`f` the class score, :math:`z_l` the output of layer l and :math:`b_l` its bias (a
    convolution's; a batch normalisation's :math:`\beta - \mu \gamma / \sqrt{\sigma^2 + \epsilon}`,
    from its running statistics, which is its bias in eval mode):

    .. math:: S = \psi\big(|\nabla_x f \odot x|\big) + \sum_l \psi\big(|\nabla_{z_l} f \odot b_l|\big),
              \qquad L = \operatorname{norm}(S)

    where :math:`\psi` rescales to [0, 1], upsamples bilinearly to the input's size and sums over the
    channels. ``variant="original"`` (default) is the authors' code: one min-max per image over all
    channels (:math:`+10^{-6}`), corner-aligned upsampling. ``variant="pytorch-grad-cam"`` is
    pytorch-grad-cam's ``FullGrad``: a min-max per channel (:math:`+10^{-7}`), half-pixel upsampling.

    The layers are every ``nn.Conv2d`` and ``nn.BatchNorm2d`` of the model with a bias (a batch
    normalisation without an affine bias has none; it is left out, as in both codes), every call of
    each (a layer that runs twice adds two terms). One forward pass and one backward pass per target.
    ``target_layers`` is ignored: the method takes all of them. Explain models in eval mode (a batch
    normalisation in training mode normalises with batch statistics, which the bias term does not
    describe). The maps carry no gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        *,
        variant: FullGradVariant = "original",
        batch_size: int | None = None,
    ) -> None:
        assert_has_ops()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if variant not in ("original", "pytorch-grad-cam"):
            raise ValueError(f"variant: expected 'original' or 'pytorch-grad-cam', got {variant!r}")
        check_positive_or_none("batch_size", batch_size)
        self._bind_model(model)
        self.layers = bias_layers(self.model)
        if not self.layers:
            raise ValueError(
                "model: FullGrad sums the bias gradients of nn.Conv2d and nn.BatchNorm2d layers, and the model "
                "has none with a bias"
            )
        self.variant, self.batch_size = variant, batch_size
        self._closed = False

    def __enter__(self) -> FullGrad:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends this explainer: later calls raise. (It holds nothing between calls.)"""
        self._closed = True

    @explainer_call
    def __call__(
        self,
        x: Tensor,
        targets: Targets = None,
        *,
        raw: bool = False,
        output_size: int | tuple[int, int] | None = None,
    ) -> Tensor:
        """FullGrad maps of ``x``.

        Args:
            x: the images ``[N, C, H, W]``: a non-empty, floating-point batch without NaN or infinite values.
            targets: the classes to explain, as for every explainer (``Targets``): None (each image's top
                class), a class index, one per image, a LongTensor ``[N]`` or ``[N, T]``, or a callable
                that maps the model output to scores ``[N]`` or ``[N, T]``.
            raw: whether to return S, before the final normalisation, at the input's size (default False).
            output_size: the maps' size, a positive int or ``(height, width)``; None (default) for the
                input's.

        Returns:
            ``[N, out_h, out_w]`` maps in [0, 1] (``[N, T, out_h, out_w]`` for T targets per image), float32
            (float64 for float64 inputs); with ``raw=True``, S ``[N, H, W]`` (``[N, T, H, W]``).

        Raises:
            TypeError, ValueError: bad ``x``, ``targets`` or ``output_size``, as for every explainer.
            RuntimeError: the explainer was closed.
        """
        x = check_input(x)
        size = BaseCAM._output_size(x, output_size)
        check_output_size("output_size", x.shape[0], *size)
        if self._closed:
            raise RuntimeError("FullGrad: the explainer was closed")
        step = self.batch_size or x.shape[0]
        with preserve_buffers(self.model):
            chunks = [
                self._saliency(x[start : start + step], slice_targets(targets, start, start + step, x.shape[0]))
                for start in range(0, x.shape[0], step)
            ]
        saliency = torch.cat([maps for maps, _ in chunks])  # [N, T, H, W]
        multi = chunks[0][1]
        if not raw:
            batch, count = saliency.shape[:2]
            saliency = cam_postprocess(saliency.flatten(0, 1), tuple(size), relu=False).reshape(batch, count, *size)
        return saliency if multi else saliency[:, 0]

    def _saliency(self, x: Tensor, targets: Targets) -> tuple[Tensor, bool]:
        """S ``[n, T, H, W]`` of a chunk, and whether T targets per image were asked for."""
        if torch.compiler.is_compiling() and not _compat.autograd_is_traced():
            raise RuntimeError(
                "FullGrad: its gradients to every layer cannot be traced inside your own torch.compile; use "
                "explainer.compiled() (or call it outside the compiled region)"
            )
        dtype = map_dtype(x.dtype)
        size = tuple(x.shape[-2:])
        with capture_outputs(self.layers) as captured, torch.enable_grad():
            inputs = x.detach().requires_grad_(True)
            output = self.model(inputs)
            check_aliases()
            scores, multi, _ = resolve_targets(output, targets, x.shape[0])
            terms = [(layer, out) for layer in self.layers for out in captured[id(layer.module)]]
            maps = []
            for t in range(scores.shape[1]):
                grads = torch.autograd.grad(
                    scores[:, t].sum(),
                    [inputs, *(out for _, out in terms)],
                    retain_graph=t + 1 < scores.shape[1],
                    allow_unused=True,
                )
                if grads[0] is None:
                    raise ValueError("x: the model output has no gradient to the input (is the input detached?)")
                saliency = self._postprocessed((grads[0] * inputs.detach()).to(dtype).abs(), size)
                by_resolution: dict[tuple[int, int], Tensor] = {}
                for (layer, _), grad in zip(terms, grads[1:]):
                    if grad is None:  # a layer whose output does not reach the score adds nothing
                        continue
                    bias = layer_bias(layer.module).to(device=grad.device, dtype=dtype)
                    term = self._rescaled((grad.to(dtype) * bias[:, None, None]).abs()).sum(1)
                    resolution = tuple(term.shape[-2:])
                    by_resolution[resolution] = by_resolution.get(resolution, 0) + term
                for term in by_resolution.values():  # bilinear is linear: one upsampling per resolution
                    saliency = saliency + self._upsampled(term, size)
                maps.append(saliency)
        return torch.stack(maps, dim=1), multi

    def _rescaled(self, term: Tensor) -> Tensor:
        """A term ``[n, K, h, w]`` rescaled to [0, 1]: per image (original) or per channel."""
        dims = (1, 2, 3) if self.variant == "original" else (2, 3)
        shifted = term - term.amin(dims, keepdim=True)
        eps = 1e-6 if self.variant == "original" else 1e-7
        return shifted / (shifted.amax(dims, keepdim=True) + eps)

    def _upsampled(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        """Maps ``[n, h, w]`` at ``size``: corner-aligned (original) or half-pixel bilinear."""
        if tuple(maps.shape[-2:]) == size:
            return maps
        corners = self.variant == "original"
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=corners)[:, 0]

    def _postprocessed(self, term: Tensor, size: tuple[int, int]) -> Tensor:
        return self._upsampled(self._rescaled(term).sum(1), size)


def bias_layers(model: nn.Module) -> list[TargetLayer]:
    """Every ``nn.Conv2d`` and ``nn.BatchNorm2d`` of ``model`` with a bias, as target layers (every
    call of each is recorded)."""
    return [
        TargetLayer(name, module, None)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and module.bias is not None
    ]


def layer_bias(module: nn.Module) -> Tensor:
    """The bias ``[K]`` that a convolution or an eval-mode batch normalisation adds to its output."""
    bias = module.bias.detach()
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None:
            return bias  # no running statistics: it normalises with the batch's, and adds beta
        scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
        return bias - module.running_mean * scale
    return bias
