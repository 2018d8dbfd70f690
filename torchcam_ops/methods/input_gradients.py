"""Explainers made of input gradients under rectified backward rules: TSGB, guided backpropagation
and Guided Grad-CAM. One forward pass, one backward pass per requested class. The rules enter through
a mode active only in the calling thread during the call (:mod:`torchcam_ops.nn.rules`): the model's
modules are never swapped, so explainers may run concurrently on one model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchcam_ops import _compat, ops
from torchcam_ops.methods.calls import check_input, map_dtype, preserve_buffers
from torchcam_ops.methods.gradcam import GradCAM
from torchcam_ops.methods.graphs import Graphable, explainer_call, graph_input
from torchcam_ops.methods.layers import LayerSpec
from torchcam_ops.methods.targeting import Targets, check_finite_scores, class_indices, model_logits
from torchcam_ops.nn.convert import find_classifier
from torchcam_ops.nn.rules import guided_rules, tsgb_rules, uncompilable_rule


class _InputGradientExplainer(Graphable):
    """Gradients of the target logits with respect to the input, under ``self._rules()``."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        self._bind_model(model)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the rules' mode lives only during a call."""

    def _rules(self):
        """The context manager that applies this explainer's backward rules."""
        raise NotImplementedError

    def _input_gradients(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor, bool]:
        """(x as a leaf, gradients [T, N, C, H, W], whether T targets per image were asked for)."""
        x = check_input(x)
        if callable(targets) and not isinstance(targets, Tensor):
            raise ValueError("targets: this explainer seeds one-hot class logits, so it needs class indices")
        if torch.compiler.is_compiling() and not _compat.autograd_is_traced():
            # A user's own torch.compile does not trace torch.autograd.grad, and the rules' ops
            # (autograd written in C++) cannot run under torch.func, which the CAMs use there.
            raise RuntimeError(
                f"{type(self).__name__}: its backward rules cannot be traced inside your own torch.compile; "
                "use explainer.compiled() (a compiled call of its own) or call it outside the compiled function"
            )
        with preserve_buffers(self.model), self._rules(), torch.enable_grad():
            leaf = graph_input(x)
            logits = model_logits(self.model(leaf))
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise TypeError("the model output is not [N, classes] logits")
            indices, multi = class_indices(targets, x.shape[0], logits.shape[1], logits)
            indices = indices.to(logits.device)
            check_finite_scores(logits.gather(1, indices))
            count = int(indices.shape[1])  # a Python int: the compiler specialises on it, no symbolic bool
            if multi:  # the gradients of every target: C maps per image and target
                ops.check_output_size(f"targets ({count} per image)", x.shape[0] * count * x.shape[1], *x.shape[2:])
            grads = []
            for t in range(count):
                seed = torch.zeros_like(logits).scatter_(1, indices[:, t : t + 1], 1.0)
                # the rules' mode keeps itself active during this backward (checkpointed layers recompute)
                (grad,) = torch.autograd.grad(logits, leaf, seed, retain_graph=t + 1 < count)
                grads.append(grad)
        return leaf.detach(), torch.stack(grads), multi


class TSGB(_InputGradientExplainer):
    r"""Target-Selective Gradient Backprop (Cheng et al., IEEE TIP 2022).

    Every Conv2d backpropagates by the TSGB-Conv rule, the classifier by TSGB-FC (``beta``), batch
    norms pass relevance through and AvgPool2d splits it equally; the layers of today's networks that
    the paper does not cover conserve relevance as well (activations and other normalisations pass it
    through, gates take none, hidden linear layers share it by contribution; see
    :func:`torchcam_ops.nn.rules.tsgb_rules` and :func:`torchcam_ops.nn.relevance_budget`).
    Seeded with a one-hot on the target logit, the map is

    .. math:: M = \frac{\max(0, \sum_c x \odot \partial x)}{\max(\ldots)}\quad (0 \text{ where the maximum is } 0)

    ``[N, H, W]`` in [0, 1] (``[N, T, H, W]`` for T targets per image; ``raw=True``: the signed
    relevance :math:`\sum_c x \odot \partial x`).
    """

    def __init__(self, model: nn.Module, classifier: str | nn.Module | None = None, beta: float = 1.0) -> None:
        super().__init__(model)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta == beta:
            raise ValueError(f"beta: expected a real number, got {beta!r}")
        found = find_classifier(self.model, classifier)
        self.classifier = found[1] if found else None
        self.beta = float(beta)

    def _rules(self):
        return tsgb_rules(self.model, self.classifier, self.beta)

    def _compile_blocker(self) -> str | None:
        return uncompilable_rule(self.model)

    @explainer_call
    def __call__(self, x: Tensor, targets: Targets = None, *, raw: bool = False, output_size: None = None) -> Tensor:
        if output_size is not None:
            raise ValueError("output_size: TSGB maps are at the input's resolution")
        leaf, grads, multi = self._input_gradients(x, targets)
        dtype = map_dtype(leaf.dtype)
        relevance = (leaf[None].to(dtype) * grads.to(dtype)).sum(2).transpose(0, 1)  # [N, T, H, W]
        if not raw:
            relevance = relevance.clamp_min(0)
            # Scale-free: a map of peak 1e-12 and the same map times 1e12 come out alike; a map
            # with no positive relevance is all zeros.
            peak = relevance.amax((2, 3), keepdim=True)
            relevance = torch.where(peak > 0, relevance / torch.where(peak > 0, peak, 1), 0)
        return relevance if multi else relevance[:, 0]


class GuidedBackprop(_InputGradientExplainer):
    r"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU
    (``nn.ReLU`` modules and functional ``F.relu``/``torch.relu`` calls) backpropagating
    :math:`G\,[X > 0]\,[G > 0]` (``mode="deconvnet"``: :math:`\mathrm{ReLU}(G)`).
    Returns the gradient image ``[N, C, H, W]`` (``[N, T, C, H, W]`` for T targets per image)."""

    def __init__(self, model: nn.Module, mode: str = "guided") -> None:
        super().__init__(model)
        if mode not in ops.RELU_MODES:
            raise ValueError(f"mode: unknown mode {mode!r}; expected one of {ops.RELU_MODES}")
        self.mode = mode

    def _rules(self):
        return guided_rules(self.mode)

    @explainer_call
    def __call__(self, x: Tensor, targets: Targets = None) -> Tensor:
        _, grads, multi = self._input_gradients(x, targets)
        grads = grads.transpose(0, 1).to(map_dtype(grads.dtype))
        return grads if multi else grads[:, 0]


class GuidedGradCAM(Graphable):
    r"""Guided Grad-CAM (Selvaraju et al. 2017): the guided-backprop image weighted by the Grad-CAM
    map, :math:`\partial x_{guided} \odot \operatorname{GradCAM}`, ``[N, C, H, W]``."""

    def __init__(self, model: nn.Module, target_layers: LayerSpec | Sequence[LayerSpec]) -> None:
        self.guided = GuidedBackprop(model)
        self.gradcam = GradCAM(model, target_layers)
        self.model = self.gradcam.model

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.gradcam.close()

    def __call__(self, x: Tensor, targets: Targets = None) -> Tensor:
        gradient = self.guided(x, targets)
        maps = self.gradcam(x, targets)
        return gradient * maps.unsqueeze(-3)
