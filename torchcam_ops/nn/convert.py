"""Context managers that swap a model's layers for their TSGB or rectified counterparts and always
put the originals back (also when the body raises)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchcam_ops.nn.modules import RectifiedReLU, TSGBAvgPool2d, TSGBBatchNorm2d, TSGBConv2d, TSGBLinear
from torchcam_ops.nn.rules import _CONV2D_ARGUMENTS, tsgb_conv2d_call


def find_classifier(model: nn.Module, classifier: str | nn.Module | None = None) -> tuple[str, nn.Linear] | None:
    """The classifier layer: the given module or dotted name, else the last ``nn.Linear`` in the
    model's module order (``model.fc``, ``model.classifier[6]``, ``model.head``...), else None.

    Args:
        model: the model to search.
        classifier: the classifier, an ``nn.Linear`` module of ``model`` or its dotted name; None
            (default) for the last ``nn.Linear``.

    Returns:
        ``(dotted name, module)`` of the classifier, or None when ``classifier`` is None and the model
        has no ``nn.Linear``.

    Raises:
        ValueError: the model has no submodule of the given name, the given module is not part of the
            model, or the classifier is not an ``nn.Linear``.
    """
    if isinstance(classifier, str):
        try:
            module = model.get_submodule(classifier)
        except AttributeError:
            raise ValueError(f"classifier: the model has no submodule {classifier!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"classifier: {classifier!r} is a {type(module).__name__}, expected nn.Linear")
        return classifier, module
    if isinstance(classifier, nn.Module):
        for name, module in model.named_modules():
            if module is classifier:
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"classifier: expected nn.Linear, got {type(module).__name__}")
                return name, module
        raise ValueError("classifier: the module is not part of the model")
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@contextlib.contextmanager
def swap_modules(model: nn.Module, replacement: Callable[[str, nn.Module], nn.Module | None]) -> Iterator[nn.Module]:
    """Replaces every submodule for which ``replacement(name, module)`` returns a module; restores
    the originals on exit. Replacements are all built before the first swap, so a refused layer
    leaves the model untouched.

    Args:
        model: the model whose submodules are swapped (in place, for the duration of the block).
        replacement: called with the dotted name and the module of every submodule (not the model
            itself), in ``model.named_modules()`` order, on entering the block; returns the module to put
            in its place, or None to keep it.

    Returns:
        A context manager whose ``with`` block sees the replacements in place; ``as`` gives ``model``.

    Raises:
        Exception: whatever ``replacement`` raises (a refused layer), on entering the block and before
            any module is swapped.
    """
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if not name:
            continue
        new = replacement(name, module)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            swaps.append((model.get_submodule(parent_name) if parent_name else model, child, module, new))
    try:
        for parent, child, _, new in swaps:
            setattr(parent, child, new)
        yield model
    finally:
        for parent, child, original, _ in reversed(swaps):
            setattr(parent, child, original)


def _plain_relu(module: nn.Module) -> nn.Module | None:
    # In-place ReLUs would overwrite outputs the TSGB backward needs; an out-of-place ReLU computes
    # the same values and gradients.
    if isinstance(module, nn.ReLU) and module.inplace:
        return nn.ReLU(inplace=False)
    return None


class _TSGBConvCalls(TorchFunctionMode):
    """Gives the TSGB-Conv backward to the ``F.conv2d`` calls made with the weight of one of ``convs``.

    For ``nn.Conv2d`` subclasses, which may do more in ``forward`` than a convolution (TensorFlow
    'SAME' padding before it, a padding mode): they keep their forward and only their convolution
    changes. Asymmetric padding becomes an explicit zero pad, whose zeros take no relevance, as
    implicit padding does."""

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        self._weights = {id(conv.weight): conv.weight for conv in convs}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = dict(zip(_CONV2D_ARGUMENTS, args), **kwargs)
            weight = call.get("weight")
            if weight is not None and self._weights.get(id(weight)) is weight:
                return tsgb_conv2d_call(call)
        return func(*args, **kwargs)


@contextlib.contextmanager
def tsgb(model: nn.Module, classifier: str | nn.Module | None = None, beta: float = 1.0) -> Iterator[nn.Module]:
    """Converts every Conv2d (TSGB-Conv), BatchNorm2d (relevance pass-through), AvgPool2d (equal
    split) and the classifier (TSGB-FC, see :func:`find_classifier`) for the duration of the block.
    ``nn.Conv2d`` subclasses (e.g. EfficientNet's TensorFlow 'SAME' padding), ``padding='same'`` and
    other padding modes keep their own ``forward``; the ``F.conv2d`` call it makes with the layer's
    weight takes the TSGB-Conv backward.
    In-place ``nn.ReLU`` modules run out of place meanwhile. ReLU, max pooling, adaptive pooling,
    dropout, gates and residual additions keep their ordinary gradients. Not covered: in-place
    operations written in ``forward`` on the output of a converted conv (``F.relu(x, inplace=True)``
    right after a Conv2d makes autograd raise; functional ``F.relu`` out of place is fine).

    ``with tsgb(model): ...``; the model's modules, parameters and flags are restored on exit.

    Args:
        model: the model to convert (in place, for the duration of the block).
        classifier: the classifier that takes TSGB-FC, an ``nn.Linear`` module of ``model`` or its dotted
            name; None (default) for the last ``nn.Linear`` (none converted when the model has none).
        beta: TSGB-FC's beta, the weight of the negative part (default 1.0; see
            :func:`torchcam_ops.ops.tsgb_linear`).

    Returns:
        A context manager whose ``with`` block sees the converted layers; ``as`` gives ``model``.

    Raises:
        ValueError: on entering the block, before any module is swapped: the classifier is not found or
            not an ``nn.Linear`` (:func:`find_classifier`), a BatchNorm2d has no running statistics, or
            an AvgPool2d uses ``ceil_mode``, ``count_include_pad=False`` or ``divisor_override``.
    """
    found = find_classifier(model, classifier)
    classifier_module = found[1] if found else None

    def replacement(name: str, module: nn.Module) -> nn.Module | None:
        if module is classifier_module:
            return TSGBLinear(module, beta)
        if id(module) in swapped_ids:
            return TSGBConv2d(module)
        if type(module) is nn.BatchNorm2d:
            return TSGBBatchNorm2d(module)
        if type(module) is nn.AvgPool2d:
            return TSGBAvgPool2d(module)
        return _plain_relu(module)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    swapped_convs = [m for m in convs if type(m) is nn.Conv2d and m.padding_mode == "zeros" and m.padding != "same"]
    # subclasses, 'same' padding and padding modes run their own forward
    swapped_ids = {id(m) for m in swapped_convs}
    routed_convs = [m for m in convs if id(m) not in swapped_ids]
    with swap_modules(model, replacement) as converted:
        if not routed_convs:
            yield converted
            return
        with _TSGBConvCalls(routed_convs):
            yield converted


def guided(model: nn.Module, mode: str = "guided"):
    """Swaps every ``nn.ReLU`` module for a :class:`RectifiedReLU` (``guided`` or ``deconvnet``) for the
    duration of the block. Functional ``F.relu`` calls in ``forward`` cannot be swapped and keep
    ordinary gradients.

    Args:
        model: the model whose ReLU modules are swapped (in place, for the duration of the block).
        mode: the backward rule, ``"guided"`` (default) or ``"deconvnet"``; ``"plain"`` (the ordinary
            ReLU gradient) is accepted too.

    Returns:
        A context manager whose ``with`` block sees the rectified ReLUs; ``as`` gives ``model``.

    Raises:
        ValueError: on entering the block, ``mode`` is not one of ``torchcam_ops.ops.RELU_MODES`` (checked
            when the model has an ``nn.ReLU`` module).
    """
    return swap_modules(model, lambda name, m: RectifiedReLU(mode) if isinstance(m, nn.ReLU) else None)
