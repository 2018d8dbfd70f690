"""Where TSGB's relevance goes: a budget of one explanation, layer by layer.

TSGB promises conservation: seeded with a one-hot on the target logit, the relevance entering the
rules (at the classifier's input, ``sum(h * dh)``; the logit itself for a model without a linear
classifier) reaches the input unchanged, ``sum(x * dx)``. With ``beta=0`` that is
``z+ = h . W+[c]``; with ``beta=1`` it is 0 (evidence for the class positive, against it negative).
A layer without a rule may lose or create relevance; :func:`relevance_budget` says how much, and where.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from torchcam_ops.nn.convert import find_classifier
from torchcam_ops.nn.rules import tsgb_rules


@dataclass(frozen=True)
class LayerRelevance:
    """The relevance a leaf layer received from above (``sum(y * dy)`` over its calls) and passed on
    below (``sum(x * dx)`` over its tensor inputs)."""

    name: str
    kind: str
    received: float
    passed: float

    @property
    def lost(self) -> float:
        """Relevance lost in this layer (negative: created)."""
        return self.received - self.passed


@dataclass(frozen=True)
class RelevanceBudget:
    """One explanation's relevance: what entered the rules, what reached the input, and each leaf
    layer's share of the difference (in forward order)."""

    seed: float
    input: float
    input_absolute: float
    layers: tuple[LayerRelevance, ...]

    @property
    def lost(self) -> float:
        """Relevance that did not reach the input (negative: created on the way)."""
        return self.seed - self.input

    @property
    def scale(self) -> float:
        """What losses are measured against: the larger of the seed's magnitude and the input
        relevance's absolute sum (the seed is 0 with ``beta=1``)."""
        return max(abs(self.seed), self.input_absolute)

    def conserved(self, tolerance: float = 1e-4) -> bool:
        """Whether the input relevance equals the seed within ``tolerance`` of :attr:`scale`."""
        return abs(self.lost) <= tolerance * self.scale

    def lossy_layers(self, tolerance: float = 1e-4) -> list[LayerRelevance]:
        """The leaf layers that lost or created more than ``tolerance`` of :attr:`scale`."""
        return [layer for layer in self.layers if abs(layer.lost) > tolerance * self.scale]

    @property
    def between_layers(self) -> float:
        """Relevance lost outside leaf layers: in operations written in ``forward`` (additions,
        products, functional calls)."""
        return self.lost - sum(layer.lost for layer in self.layers)


class _Tap(torch.autograd.Function):
    """An identity whose backward records the gradient of one use of a tensor. Forward returns a copy,
    so that in-place changes downstream neither reach the recorded value nor trip autograd."""

    @staticmethod
    def forward(ctx, x: Tensor, grads: list) -> Tensor:  # type: ignore[override]
        ctx.grads = grads
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.grads.append(grad)
        return grad, None


class _Ledger:
    """Values and gradients of one layer's inputs (``below``) and outputs (``above``), over its calls."""

    def __init__(self) -> None:
        self.below: list[tuple[Tensor, list[Tensor]]] = []
        self.above: list[tuple[Tensor, list[Tensor]]] = []

    def tap(self, x: Tensor, side: list) -> Tensor:
        if not isinstance(x, Tensor) or not x.requires_grad or not x.is_floating_point():
            return x
        grads: list[Tensor] = []
        side.append((x.detach(), grads))
        return _Tap.apply(x, grads)

    @staticmethod
    def total(side: list[tuple[Tensor, list[Tensor]]]) -> float:
        return sum(float((value.double() * grad.double()).sum()) for value, grads in side for grad in grads)


def _leaves(model: nn.Module, skip: nn.Module | None) -> Iterator[tuple[str, nn.Module]]:
    """The leaf layers of the forward pass, once each: not ``skip``, nor the modules that compute a
    parametrized weight."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, ParametrizationList):
            seen.update(id(m) for m in module.modules())
        if module._modules or module is skip or id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module


def relevance_budget(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor,
    *,
    beta: float = 0.0,
    classifier: str | nn.Module | None = None,
) -> RelevanceBudget:
    """TSGB's relevance for ``model`` on ``x`` and ``target``, from the seed to the input, with every
    leaf layer's loss: how far the model keeps TSGB's conservation promise, and which layers break it.

    The model runs under the TSGB rules (:func:`torchcam_ops.nn.rules.tsgb_rules`, as
    :class:`~torchcam_ops.methods.TSGB` runs it) with taps on every leaf layer's inputs and outputs;
    the model is left as it was. Call it on a model in eval mode; float64 keeps rounding out of the
    budget.

    Args:
        model: the model, with a linear classifier (else the seed is the target logit itself).
        x: the input ``[N, C, H, W]``; sums run over the batch.
        target: the class explained, an int or one class per image (``[N]`` tensor).
        beta: TSGB-FC's beta (default 0: the seed is ``z+ = h . W+[c]``; 1: the seed is 0).
        classifier: the classifier as in :class:`~torchcam_ops.methods.TSGB` (default: the last
            ``nn.Linear``).

    Returns:
        A :class:`RelevanceBudget`.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or the model does not return ``[N, classes]``
            logits.
        ValueError: ``x`` has no images, ``target`` is out of range, or the classifier is not found.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x: expected a floating-point tensor, got {got}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected a batch [N, C, ...] with N >= 1, got shape {list(x.shape)}")
    found = find_classifier(model, classifier)
    classifier_module = found[1] if found else None
    ledgers = {name: (module, _Ledger()) for name, module in _leaves(model, classifier_module)}
    seed_ledger = _Ledger()

    def before(ledger: _Ledger):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            tapped = tuple(ledger.tap(a, ledger.below) for a in args)
            return tapped, {name: ledger.tap(value, ledger.below) for name, value in kwargs.items()}

        return hook

    def after(ledger: _Ledger):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if isinstance(output, (tuple, list)):  # a layer returning several tensors
                return type(output)(ledger.tap(value, ledger.above) for value in output)
            return ledger.tap(output, ledger.above)

        return hook

    handles = []
    try:
        for module, ledger in ledgers.values():
            handles.append(module.register_forward_pre_hook(before(ledger), with_kwargs=True))
            handles.append(module.register_forward_hook(after(ledger)))
        if classifier_module is not None:
            handles.append(classifier_module.register_forward_pre_hook(before(seed_ledger), with_kwargs=True))
        with tsgb_rules(model, classifier_module, float(beta)), torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise TypeError("the model output is not [N, classes] logits")
            indices = torch.as_tensor(target, device=logits.device, dtype=torch.long).reshape(-1, 1)
            indices = indices.expand(logits.shape[0], 1) if indices.shape[0] == 1 else indices
            if indices.shape[0] != logits.shape[0] or not bool(((indices >= 0) & (indices < logits.shape[1])).all()):
                raise ValueError(f"target: expected a class in [0, {logits.shape[1]}) or one per image, got {target!r}")
            one_hot = torch.zeros_like(logits).scatter_(1, indices, 1.0)
            (grad,) = torch.autograd.grad(logits, leaf, one_hot)
    finally:
        for handle in handles:
            handle.remove()
    relevance = leaf.detach().double() * grad.double()
    seed = (
        _Ledger.total(seed_ledger.below)
        if classifier_module is not None
        else float((one_hot.double() * logits.detach().double()).sum())
    )
    layers = tuple(
        LayerRelevance(name, type(module).__name__, _Ledger.total(ledger.above), _Ledger.total(ledger.below))
        for name, (module, ledger) in ledgers.items()
        if ledger.above or ledger.below
    )
    return RelevanceBudget(
        seed=seed,
        input=float(relevance.sum()),
        input_absolute=float(relevance.abs().sum()),
        layers=layers,
    )
