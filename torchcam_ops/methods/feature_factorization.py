"""Deep Feature Factorization (Collins et al. 2018): a layer's activations factorised into concepts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.calls import check_input, map_dtype, preserve_buffers
from torchcam_ops.methods.capture import capture_outputs, check_aliases
from torchcam_ops.methods.layers import LayerSpec, Reshape, channel_maps, check_reshape, resolve_layers
from torchcam_ops.ops import cam_postprocess, check_output_size, nmf_sweep


class Factorization(NamedTuple):
    """What :class:`DeepFeatureFactorization` finds in a batch."""

    #: the concepts' embeddings in the layer's channel space, ``[C, K]`` (a concept per row)
    concepts: Tensor
    #: each image's map of each concept, ``[N, C, H, W]`` in [0, 1]
    maps: Tensor
    #: the classifier's output on each concept, ``[C, classes]``; None without a classifier
    concept_scores: Tensor | None


class DeepFeatureFactorization:
    r"""Deep Feature Factorization: the layer's activations of the whole batch as a non-negative
    product of C concepts and their maps.

    With the activations as a matrix :math:`A \in \mathbb{R}^{K \times N h w}` (a row per channel),
    shifted per channel to be non-negative, :math:`\tilde A = A - \min_{\text{row}} A`, non-negative
    matrix factorisation finds :math:`W \ge 0` (:math:`K \times C`) and :math:`H \ge 0`
    (:math:`C \times N h w`) minimising :math:`\|\tilde A - W H\|_F^2`; the concepts are the columns
    of W (shifted back, :math:`W + \min_{\text{row}} A`), each image's map of concept c is its part of
    row c of H, :math:`\operatorname{norm}(\operatorname{Up}(H_c))`. A ``classifier`` (the model's
    head, taking channel vectors) scores each concept: ``concept_scores`` says what each concept
    looks like to the model.

    The factorisation is scikit-learn's coordinate descent (``NMF(init="random", random_state=seed)``:
    the same initial draws, the same updates, stopping where the projected gradient falls below
    ``tol`` of its first value or after ``max_iter`` sweeps), so the concepts are pytorch-grad-cam's;
    its sweeps are the ``nmf_sweep`` op, on the activations' device (the stopping test reads one number
    per sweep, which waits for the device). :func:`~torchcam_ops.viz.concepts` draws the maps on the image, one colour
    per concept.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        *,
        components: int = 16,
        classifier: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
        max_iter: int = 200,
        tol: float = 1e-4,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        for name, value in (("components", components), ("max_iter", max_iter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
        if classifier is not None and not callable(classifier):
            raise TypeError(f"classifier: expected a callable or None, got {type(classifier).__name__}")
        check_reshape(reshape, grid)
        layers = resolve_layers(model, target_layer)
        if len(layers) != 1:
            raise ValueError(f"target_layer: expected one layer, got {len(layers)}")
        self.model, self.layer = model, layers[0]
        self.components, self.classifier, self.seed = components, classifier, seed
        self.max_iter, self.tol = max_iter, float(tol)
        self.reshape, self.grid = reshape, (tuple(grid) if grid is not None else None)

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the explainer holds nothing between calls."""

    def __call__(self, x: Tensor, *, output_size: int | tuple[int, int] | None = None) -> Factorization:
        """The factorisation of ``x`` ``[N, C, H, W]``'s activations at the target layer.

        Args:
            x: the images: a non-empty, floating-point batch without NaN or infinite values.
            output_size: the maps' size, a positive int or ``(height, width)``; None for the input's.

        Returns:
            A :class:`Factorization`: concepts ``[C, K]``, maps ``[N, C, H, W]``, the classifier's
            concept scores ``[C, classes]`` (None without a classifier).

        Raises:
            TypeError, ValueError: bad ``x`` or ``output_size``; a target layer that did not run once.
        """
        x = check_input(x)
        size = BaseCAM._output_size(x, output_size)
        check_output_size("output_size", x.shape[0] * self.components, *size)
        with preserve_buffers(self.model), torch.no_grad(), capture_outputs([self.layer]) as captured:
            self.model(x)
            check_aliases()
            outputs = captured[id(self.layer.module)]
        output = BaseCAM._layer_output(self.layer, outputs)
        activations = channel_maps(output, self.reshape, self.grid, self.layer.name).to(map_dtype(x.dtype))
        batch, channels, height, width = activations.shape
        rows = activations.transpose(0, 1).reshape(channels, -1)
        offset = rows.amin(1, keepdim=True)
        weights, pattern, _ = nonnegative_factorization(
            rows - offset, self.components, seed=self.seed, max_iter=self.max_iter, tol=self.tol
        )
        concepts = (weights + offset).T  # [C, K]
        per_image = pattern.reshape(self.components, batch, height, width).transpose(0, 1)
        maps = cam_postprocess(per_image.reshape(-1, height, width), size, relu=False)
        scores = None
        if self.classifier is not None:
            with torch.no_grad():
                scores = self.classifier(concepts.to(x.dtype))
        return Factorization(concepts, maps.reshape(batch, self.components, *size), scores)


def nonnegative_factorization(
    x: Tensor, components: int, *, seed: int = 0, max_iter: int = 200, tol: float = 1e-4
) -> tuple[Tensor, Tensor, int]:
    """``W [n, C] >= 0`` and ``H [C, m] >= 0`` with ``W H`` close to the non-negative ``x [n, m]``,
    and the sweeps it took: scikit-learn's ``NMF(n_components=components, init="random",
    random_state=seed, solver="cd", tol=tol, max_iter=max_iter)``, its initial draws (NumPy's
    ``RandomState(seed)``) and its coordinate-descent updates (:func:`~torchcam_ops.ops.nmf_sweep`),
    on ``x``'s device. The stopping test reads one number per sweep."""
    n, m = x.shape
    draws = np.random.RandomState(seed)
    normal_h = draws.standard_normal(size=(components, m))
    normal_w = draws.standard_normal(size=(n, components))
    x = x.detach()
    scale = torch.sqrt(x.mean() / components)
    # both factors a row per sample of their side (W and H^T), as the sweep takes them
    w = (scale * torch.from_numpy(normal_w).to(x)).abs()
    ht = (scale * torch.from_numpy(normal_h).to(x)).abs().T.contiguous()
    xt = x.T
    first = None
    for sweep in range(1, max_iter + 1):
        w, w_violation = nmf_sweep(w, ht.T @ ht, x @ ht)
        ht, h_violation = nmf_sweep(ht, w.T @ w, xt @ w)
        violation = float(w_violation + h_violation)
        if first is None:
            first = violation
        if first == 0 or violation / first <= tol:
            return w, ht.T.contiguous(), sweep
    return w, ht.T.contiguous(), max_iter
