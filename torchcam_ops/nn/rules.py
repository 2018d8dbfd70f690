"""Backward rules as thread-local modes: the layers' own functional calls are routed to the TSGB or
rectified-ReLU ops while the block runs, in the calling thread only, and the model is never touched.

This is the one way the rules reach a model: the explainers enter these modes for each call (an
explainer call is a pure function of the model, the input and the targets), and so do
:func:`torchcam_ops.nn.tsgb` and :func:`torchcam_ops.nn.guided` for a user's own code.

A :class:`~torch.overrides.TorchFunctionMode` lives on the calling thread's mode stack, so another
thread running the same model meanwhile keeps the ordinary gradients. Calls are matched by the
identity of the layer's parameters or buffers (a convolution by its weight, the classifier by its
weight, a batch norm by its running mean), so functional calls written in a module's ``forward``
(EfficientNet's 'SAME'-padding convolutions, ``padding_mode='reflect'``) take the rule as well.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList
from torch.overrides import TorchFunctionMode

from torchcam_ops import _compat, ops

_CONV2D_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGUMENTS = ("input", "weight", "bias")
_INSTANCE_NORM_ARGUMENTS = (
    "input",
    "running_mean",
    "running_var",
    "weight",
    "bias",
    "use_input_stats",
    "momentum",
    "eps",
)
_BATCH_NORM_ARGUMENTS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_AVG_POOL2D_ARGUMENTS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)
_RELU_CALLS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

# Elementwise activations whose gradient is not Y / X, so that the plain gradient loses or creates
# relevance (ReLU6 passes none where X > 6, the strongest evidence): TSGB passes relevance through
# them. ReLU keeps its gradient, which is already Y / X (the paper's networks are built of it).
_PASS_THROUGH_ACTIVATIONS = frozenset(
    {
        F.relu6,
        F.hardtanh,
        F.hardtanh_,
        F.silu,
        F.gelu,
        F.hardswish,
        F.hardsigmoid,
        F.mish,
        F.elu,
        F.elu_,
        F.selu,
        F.celu,
        F.leaky_relu,
        F.leaky_relu_,
        F.softplus,
        F.sigmoid,
        F.tanh,
        torch.sigmoid,
        torch.sigmoid_,
        torch.tanh,
        torch.tanh_,
        torch.Tensor.sigmoid,
        torch.Tensor.sigmoid_,
        torch.Tensor.tanh,
        torch.Tensor.tanh_,
    }
)
# Normalisations other than a batch norm with running statistics (which has its own op): they pass
# relevance through as well.
_PASS_THROUGH_NORMS = frozenset({F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm})
# Products: in x * s with s broadcast over x (a squeeze-excitation gate, a layer scale), relevance
# goes to the signal x, not to the gate s.
_PRODUCTS = frozenset({torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__})
_IN_PLACE_PRODUCTS = frozenset({torch.Tensor.mul_, torch.Tensor.__imul__})


def _backward_keeping(mode: TorchFunctionMode, func, args, kwargs):
    """An autograd call handed to ``mode`` (with ``mode`` switched off, as every call a mode handles):
    run with the mode active again, so that layers recomputed during the backward (non-reentrant
    activation checkpointing) take the same rules as in the forward pass. While torch.compile traces,
    the call as it is (the compiled graph holds no recomputation)."""
    if torch.compiler.is_compiling():
        return func(*args, **(kwargs or {}))
    with mode:
        return _compat.run_autograd_in_modes(func, args, kwargs)


def submodules(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module below it, once each: ``model.modules()`` without the dotted names
    it builds, which cost a millisecond per call of a ResNet-50 explainer."""
    seen: set[int] = set()
    found: list[nn.Module] = []
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append(module)
        stack.extend(child for child in module._modules.values() if child is not None)
    return found


def _call_arguments(names: tuple[str, ...], args: tuple, kwargs: dict | None) -> dict:
    return dict(zip(names, args), **(kwargs or {}))


def _padding_pairs(
    padding: object, weight: Tensor, stride: object, dilation: object
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``F.conv2d``'s padding argument as (before, after) per spatial dimension."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if ops.int_pair("stride", stride) != [1, 1]:
            raise ValueError(f"padding='same' needs stride 1, got stride {stride!r}")
        totals = [d * (k - 1) for d, k in zip(ops.int_pair("dilation", dilation), weight.shape[-2:])]
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    return tuple((p, p) for p in ops.int_pair("padding", padding))  # type: ignore[return-value]


def tsgb_conv2d_call(call: dict) -> Tensor:
    """An ``F.conv2d`` call (its arguments by name) through :func:`torchcam_ops.ops.tsgb_conv2d`.
    Asymmetric padding becomes an explicit zero pad, whose zeros take no relevance, as implicit
    padding does."""
    weight = call["weight"]
    stride, dilation = call.get("stride", 1), call.get("dilation", 1)
    (top, bottom), (left, right) = _padding_pairs(call.get("padding", 0), weight, stride, dilation)
    x = call["input"]
    if (top, left) != (bottom, right):
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    return ops.tsgb_conv2d(x, weight, call.get("bias"), stride, (top, left), dilation, call.get("groups", 1))


def _pass_through(func, args: tuple, kwargs: dict | None) -> Tensor:
    """``func``'s value, out of place, computed without a graph, behind the pass-through rule."""
    kwargs = dict(kwargs or {})
    x = args[0] if args else kwargs.pop("input")
    rest = args[1:]
    if "inplace" in kwargs:
        kwargs["inplace"] = False
    # an in-place form (or inplace=True given by position) writes into a copy, never into x
    in_place = getattr(func, "__name__", "").endswith("_") or any(a is True for a in rest)
    with torch.no_grad():
        y = func(x.detach().clone() if in_place else x.detach(), *rest, **kwargs)
    return ops.tsgb_pass_through(x, y)


def _gated_product(func, args: tuple, kwargs: dict | None) -> Tensor | None:
    """``a * b`` with the broadcast operand detached (the gate takes no relevance), or None when
    the product is not a gating one (same shapes, a number)."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape == b.shape:
        return None
    if a.numel() < b.numel():
        return func(a.detach(), b)
    if b.numel() < a.numel():
        return func(a, b.detach())
    return None


class TSGBRules(TorchFunctionMode):
    """Routes, while active in the calling thread: every ``F.conv2d`` call to TSGB-Conv (also with a
    weight computed per call: weight norm, spectral norm, parametrizations, weight standardisation);
    the ``F.linear`` call made with the classifier's weight (or, for a classifier whose weight is
    computed per call, with a weight of its value) to TSGB-FC (``beta``); every other ``F.linear`` call
    to the z-rule (:func:`_hidden_linear`); ``F.batch_norm`` calls with the running mean of one of
    ``batch_norms`` to the batch-norm rule; ``F.avg_pool2d`` calls (floor mode, padding counted, no
    divisor override) to the equal split; elementwise activations other than ReLU (ReLU6, SiLU, GELU,
    Hardswish...) and the other normalisations (LayerNorm, GroupNorm...) to the pass-through; products
    whose one operand is broadcast over the other (squeeze-excitation gates, layer scales) give
    relevance to the signal only; and in-place ReLUs and activations to out-of-place ones (the TSGB-Conv
    backward needs the convolution's output as it was computed). Everything else keeps its ordinary
    gradient."""

    def __init__(
        self, classifier: nn.Linear | None, batch_norms: list[nn.modules.batchnorm._BatchNorm], beta: float = 1.0
    ) -> None:
        super().__init__()
        self._classifier_weight = classifier.weight if classifier is not None else None
        # a weight computed per call (parametrizations, weight norm) is a new tensor each time: that
        # classifier's call is recognised by the value of its weight
        self._classifier_weight_is_computed = classifier is not None and not isinstance(
            classifier._parameters.get("weight"), nn.Parameter
        )
        self._running_means = {id(bn.running_mean): bn.running_mean for bn in batch_norms}
        self._beta = beta

    def _is_classifier_weight(self, weight: Tensor) -> bool:
        if weight is self._classifier_weight:
            return True
        if not self._classifier_weight_is_computed or weight.shape != self._classifier_weight.shape:
            return False
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "TSGB: a compiled call cannot recognise a classifier whose weight is computed per call "
                "(a parametrization): call the explainer eagerly"
            )
        return bool(torch.equal(weight, self._classifier_weight))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _compat.is_autograd_call(func):
            return _backward_keeping(self, func, args, kwargs)
        if func is torch.conv2d:
            # every convolution of the forward pass, also those whose weight is computed per call
            # (weight norm, spectral norm, parametrizations, weight standardisation)
            call = _call_arguments(_CONV2D_ARGUMENTS, args, kwargs)
            if call.get("weight") is not None:
                return tsgb_conv2d_call(call)
        elif func is F.linear:
            call = _call_arguments(_LINEAR_ARGUMENTS, args, kwargs)
            weight = call.get("weight")
            if weight is not None and self._is_classifier_weight(weight):
                return ops.tsgb_linear(call["input"], weight, call.get("bias"), self._beta)
            if weight is not None:
                return _hidden_linear(call["input"], weight, call.get("bias"))
        elif func in _PASS_THROUGH_ACTIVATIONS:
            return _pass_through(func, args, kwargs)
        elif func in _PRODUCTS:
            product = _gated_product(func, args, kwargs)
            if product is not None:
                return product
        elif func in _IN_PLACE_PRODUCTS:
            if len(args) == 2 and isinstance(args[1], Tensor) and args[1].numel() < args[0].numel():
                return func(args[0], args[1].detach())
        elif func is F.batch_norm:
            call = _call_arguments(_BATCH_NORM_ARGUMENTS, args, kwargs)
            mean = call.get("running_mean")
            if mean is not None and self._running_means.get(id(mean)) is mean:
                if call.get("training", False):
                    raise RuntimeError(
                        "TSGB: a BatchNorm2d is in training mode; TSGB uses running statistics, "
                        "call model.eval() before explaining"
                    )
                return ops.tsgb_batch_norm(
                    call["input"],
                    mean,
                    call["running_var"],
                    call.get("weight"),
                    call.get("bias"),
                    call.get("eps", 1e-5),
                )
            return _pass_through(func, args, kwargs)
        elif func in _PASS_THROUGH_NORMS:
            return _pass_through(func, args, kwargs)
        elif func is F.avg_pool2d:
            call = _call_arguments(_AVG_POOL2D_ARGUMENTS, args, kwargs)
            if (
                not call.get("ceil_mode", False)
                and call.get("count_include_pad", True)
                and call.get("divisor_override") is None
            ):
                return ops.tsgb_avg_pool2d(
                    call["input"], call["kernel_size"], call.get("stride") or None, call.get("padding", 0)
                )
            warnings.warn(
                "TSGB: an average pooling with ceil_mode, count_include_pad=False or divisor_override "
                "keeps its ordinary gradient (the equal-split rule covers floor mode with padding "
                "counted only)",
                stacklevel=2,
            )
        elif func is F.relu and _call_arguments(("input", "inplace"), args, kwargs).get("inplace", False):
            return torch.relu(args[0] if args else kwargs["input"])
        elif func is torch.relu_ or func is torch.Tensor.relu_:
            return torch.relu(args[0])
        return func(*args, **(kwargs or {}))


def _hidden_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A linear layer other than the classifier (ConvNeXt's pointwise layers, VGG's and MobileNet V3's
    hidden fully connected layers): each output's relevance G Y goes back to the inputs in proportion to
    their contributions x_i w_ji, the bias's share included (the z-rule of layer-wise relevance
    propagation): the gradient of ``x W^T`` seeded with G Y / (x W^T), through the pass-through.
    TSGB-Conv would see a fully connected layer as one position and spread its summed relevance by
    magnitude alone, losing the class; TSGB-FC does not conserve."""
    z = F.linear(x, weight)
    if bias is None:
        return z
    with torch.no_grad():
        y = F.linear(x, weight, bias).to(z.dtype)  # the layer's own value, bit for bit
    return ops.tsgb_pass_through(z, y)


class RectifiedReLURules(TorchFunctionMode):
    """Every ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms)
    runs as :func:`torchcam_ops.ops.rectified_relu` with ``mode`` while active in the calling thread.
    In-place calls return the rectified result out of place."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ops.RELU_MODES:
            raise ValueError(f"mode: unknown mode {mode!r}; expected one of {ops.RELU_MODES}")
        self._mode = mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _compat.is_autograd_call(func):
            return _backward_keeping(self, func, args, kwargs)
        if func in _RELU_CALLS:
            x = args[0] if args else kwargs["input"]
            return ops.rectified_relu(x, self._mode)
        return func(*args, **(kwargs or {}))


_IN_PLACE_DUNDERS = frozenset(
    {
        torch.Tensor.__iadd__,
        torch.Tensor.__isub__,
        torch.Tensor.__imul__,
        torch.Tensor.__itruediv__,
        torch.Tensor.__ifloordiv__,
        torch.Tensor.__imod__,
        torch.Tensor.__ipow__,
        torch.Tensor.__iand__,
        torch.Tensor.__ior__,
        torch.Tensor.__ixor__,
        torch.Tensor.__ilshift__,
        torch.Tensor.__irshift__,
        torch.Tensor.__setitem__,
    }
)


def _writes_in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return func in _IN_PLACE_DUNDERS or (name.endswith("_") and not name.endswith("__"))


class BufferShield(TorchFunctionMode):
    """While active in the calling thread, the model's buffers are never written: batch norms in
    training mode update copies of their running statistics, and in-place writes to a buffer
    (``num_batches_tracked += 1``, ``buffer.copy_(...)``) go to a copy, which later reads in the same
    block see. The user's buffers keep their values and their version counters, so a training step
    whose backward is still to come stays valid, and a thread training the same model meanwhile keeps
    every update of its own."""

    def __init__(self, buffers: list[Tensor]) -> None:
        super().__init__()
        self._buffers = {id(b): b for b in buffers}
        self._copies: dict[int, Tensor] = {}

    def _stand_in(self, value: object) -> object:
        if not isinstance(value, Tensor) or self._buffers.get(id(value)) is not value:
            return value
        copy = self._copies.get(id(value))
        if copy is None:
            copy = self._copies[id(value)] = value.detach().clone()
        return copy

    def _written(self, value: object) -> object:
        if isinstance(value, Tensor):
            return self._copies.get(id(value), value)
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):  # torch.cat([...])
            return type(value)(self._copies.get(id(v), v) if isinstance(v, Tensor) else v for v in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _compat.is_autograd_call(func):  # a recomputed batch norm writes the copies as well
            return _backward_keeping(self, func, args, kwargs)
        kwargs = dict(kwargs or {})
        if self._copies:
            # reads of a buffer already written in this block see the written copy
            args = tuple(self._written(a) for a in args)
            kwargs = {name: self._written(value) for name, value in kwargs.items()}
        if "out" in kwargs:  # torch.add(a, b, out=buffer), F.normalize(..., out=buffer)
            kwargs["out"] = self._stand_in(kwargs["out"])
        if func is F.batch_norm or func is F.instance_norm:
            names = _BATCH_NORM_ARGUMENTS if func is F.batch_norm else _INSTANCE_NORM_ARGUMENTS
            call = _call_arguments(names, args, kwargs)
            updates = call.get("training", False) if func is F.batch_norm else call.get("use_input_stats", True)
            if updates:
                call["running_mean"] = self._stand_in(call.get("running_mean"))
                call["running_var"] = self._stand_in(call.get("running_var"))
                return func(**call)
        elif args and _writes_in_place(func):
            return func(self._stand_in(args[0]), *args[1:], **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def shield_buffers(model: nn.Module) -> Iterator[None]:
    """:class:`BufferShield` over ``model``'s buffers while the block runs, when one of its modules is
    in training mode (a model in eval mode writes no buffer, and pays nothing)."""
    modules = submodules(model)
    if not any(module.training for module in modules):
        yield
        return
    buffers = [b for module in modules for b in module._buffers.values() if b is not None]
    if torch.compiler.is_compiling():
        # A compiled graph cannot hold the shield's copies: the values come back at the end instead
        # (which moves their version counters: explain a model in training mode eagerly to keep a
        # pending training step valid).
        saved = [(b, b.detach().clone()) for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        return
    # ``self.buffer += x`` rebinds the attribute to the result (the shield's copy): the module gets
    # its own tensor back on exit. (Values are not restored: a thread training the model meanwhile
    # keeps its updates. Writes through a view of a buffer, ``buffer[0] += 1``, are not shielded.)
    bindings = [(module, name, b) for module in modules for name, b in module._buffers.items()]
    try:
        with BufferShield(buffers):
            yield
    finally:
        for module, name, buffer in bindings:
            if module._buffers.get(name) is not buffer:
                module._buffers[name] = buffer


def refuse_inference_mode(what: str) -> None:
    """Gradients, which every explainer needs, cannot be computed under ``torch.inference_mode()``."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what}: gradients cannot be computed under torch.inference_mode(); "
            "call the explainer outside it (torch.no_grad() is fine)"
        )


@contextlib.contextmanager
def tsgb_rules(model: nn.Module, classifier: nn.Linear | None, beta: float = 1.0) -> Iterator[None]:
    """The TSGB rules for ``model``'s layers while the block runs, in the calling thread only."""
    refuse_inference_mode("TSGB")
    convs, batch_norms, unknown = [], [], set()
    computing_weights: set[int] = set()
    for module in submodules(model):  # one pass, parents first: this runs on every call
        if id(module) in computing_weights:
            continue
        if isinstance(module, ParametrizationList):  # computes a weight, is not a layer of the forward pass
            computing_weights.update(id(m) for m in submodules(module))
        elif isinstance(module, nn.Conv2d):
            convs.append(module)
        elif isinstance(module, nn.Linear):
            continue  # every linear call takes a rule (TSGBRules): nothing to collect
        elif (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.running_mean is not None
            and module.running_var is not None
        ):
            batch_norms.append(module)
        elif module._modules or isinstance(module, _CONTAINERS):  # an empty Sequential is an identity
            continue
        elif not _has_relevance_rule(type(module)):
            unknown.add(type(module).__name__)
    if not convs and classifier is None:
        raise ValueError(
            "TSGB: the model has no nn.Conv2d and no nn.Linear classifier, so no TSGB rule would "
            "apply; the map would be the plain gradient times the input"
        )
    if not convs:
        warnings.warn("TSGB: the model has no nn.Conv2d; only the classifier takes the TSGB rule", stacklevel=3)
    if classifier is None:
        warnings.warn("TSGB: the model has no nn.Linear classifier; the TSGB-FC rule is not applied", stacklevel=3)
    if unknown:
        warnings.warn(
            f"TSGB: no relevance rule for {', '.join(sorted(unknown))}: these layers keep their ordinary "
            "gradient, which may lose or create relevance (torchcam_ops.nn.relevance_budget measures it)",
            stacklevel=3,
        )
    with TSGBRules(classifier, batch_norms, beta):
        yield


def uncompilable_rule(model: nn.Module) -> str | None:
    """Why the TSGB rules of ``model`` cannot run compiled, or None: torch.compile calls F.hardswish and
    F.hardsigmoid without passing them to a TorchFunctionMode (torch 2.15), so their rule would be
    lost without a word."""
    for module in submodules(model):
        if isinstance(module, (nn.Hardswish, nn.Hardsigmoid)):
            return (
                f"TSGB: torch.compile does not route {type(module).__name__} to its relevance rule; "
                "explain this model eagerly"
            )
    return None


# Layers whose relevance the rules conserve: routed to a rule (convolutions, linear layers,
# normalisations, activations), or conserving with their ordinary gradient (ReLU, max and adaptive
# pooling, dropout in eval mode, reshaping and padding with zeros).
_LAYERS_WITH_RULES: tuple[type, ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.Softplus,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ChannelShuffle,
)
# torchvision's reshaping layers and stochastic depth (the identity in eval mode), by name: the rules
# do not import torchvision.
_TORCHVISION_LAYERS_WITH_RULES = frozenset({"Permute", "StochasticDepth"})
# identities of other packages (EfficientNet-Lite's own), by name
_rule_by_type: dict[type, bool] = {}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _has_relevance_rule(kind: type) -> bool:
    known = _rule_by_type.get(kind)
    if known is None:
        known = _rule_by_type[kind] = (
            issubclass(kind, _LAYERS_WITH_RULES)
            or (kind.__module__.startswith("torchvision.ops") and kind.__name__ in _TORCHVISION_LAYERS_WITH_RULES)
            or kind.__name__ == "Identity"
        )
    return known


@contextlib.contextmanager
def guided_rules(mode: str = "guided") -> Iterator[None]:
    """Every ReLU with the ``mode`` backward while the block runs, in the calling thread only."""
    refuse_inference_mode("GuidedBackprop")
    with RectifiedReLURules(mode):
        yield
