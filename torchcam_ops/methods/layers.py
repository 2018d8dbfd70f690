"""Target layers: how they are named (a module, a dotted name, ``"name@k"`` for the k-th call of a
module that runs several times) and how their outputs become channel maps ``[N, K, h, w]`` (the
layouts of CNNs, vision transformers' tokens, channels-last blocks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from torch import Tensor, nn

LayerSpec = str | nn.Module
#: How many leading tokens (class, distillation, register tokens) ``reshape="tokens"`` drops at most.
MAX_PREFIX_TOKENS = 16
#: How a target layer's output becomes channel maps ``[N, K, h, w]``: None (it already is), ``"tokens"``
#: (``[N, L, C]`` tokens of a vision transformer, the leading class, distillation or register tokens
#: dropped), ``"channels_last"`` (``[N, h, w, C]``, Swin and ConvNeXt blocks), or a callable returning
#: ``[N, K, h, w]``.
Reshape = None | Literal["tokens", "channels_last"] | Callable[[Tensor], Tensor]


class TargetLayer(NamedTuple):
    """A target layer: its name as given (``"layer4"``, ``"_swish@-1"``), the module, and which of
    its calls in one forward pass is explained (None: it must run exactly once)."""

    name: str
    module: nn.Module
    call: int | None


def resolve_layers(model: nn.Module, target_layers: LayerSpec | Sequence[LayerSpec]) -> list[TargetLayer]:
    """Each target layer, given as a module of ``model`` or a dotted name. A name may end in ``@k``
    to explain the k-th call (0-based, negative from the end) of a module that runs several times
    in one forward pass, such as a shared activation module.

    Args:
        model: the model the layers belong to.
        target_layers: a module of ``model``, a dotted name such as ``"layer4.2"`` (optionally ending in
            ``@k``), or a non-empty sequence of them.

    Returns:
        One :class:`TargetLayer` per given layer, in the given order: the name (as given, or the
        module's dotted name in ``model``), the module, and the call index (None when not given).

    Raises:
        ValueError: ``target_layers`` is empty or not a sequence, a name has no submodule in ``model``
            or a call index after ``@`` that is not an int, or a module is not part of ``model``.
        TypeError: an element is neither a module nor a str.
    """
    if isinstance(target_layers, (str, nn.Module)):
        target_layers = [target_layers]
    if not isinstance(target_layers, Sequence) or len(target_layers) == 0:
        raise ValueError(
            "target_layers: expected a module of the model, a dotted name such as 'layer4.2', "
            f"or a non-empty list of them, got {target_layers!r}"
        )
    names = {id(module): name for name, module in model.named_modules()}
    layers = []
    for layer in target_layers:
        if isinstance(layer, str):
            path, _, call = layer.partition("@")
            try:
                call_index = int(call) if call else None
            except ValueError:
                raise ValueError(
                    f"target_layers: {layer!r}: expected a call index after '@' (e.g. '_swish@-1' for the last call)"
                ) from None
            try:
                layers.append(TargetLayer(layer, model.get_submodule(path), call_index))
            except AttributeError:
                raise ValueError(f"target_layers: the model has no submodule {path!r}") from None
        elif isinstance(layer, nn.Module):
            if id(layer) not in names:
                raise ValueError(f"target_layers: {type(layer).__name__} module is not part of the model")
            layers.append(TargetLayer(names[id(layer)], layer, None))
        else:
            raise TypeError(f"target_layers: expected modules or dotted names, got {type(layer).__name__}")
    return layers


def check_reshape(reshape: Any, grid: Any) -> None:
    """``reshape`` and ``grid`` as :class:`BaseCAM` accepts them, else ValueError or TypeError."""
    if reshape is not None and reshape not in ("tokens", "channels_last") and not callable(reshape):
        raise ValueError(
            "reshape: expected None, 'tokens' ([N, L, C] transformer tokens), 'channels_last' ([N, h, w, C]) "
            f"or a callable returning [N, K, h, w], got {reshape!r}"
        )
    if grid is not None:
        if reshape != "tokens":
            raise ValueError(f"grid: only used with reshape='tokens', got reshape={reshape!r}")
        if (
            not isinstance(grid, Sequence)
            or len(grid) != 2
            or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid)
        ):
            raise ValueError(f"grid: expected (height, width), two positive ints, got {grid!r}")


def channel_maps(out: Tensor, reshape: Reshape, grid: tuple[int, int] | None, name: str) -> Tensor:
    """A target layer's output (or its gradient) as channel maps ``[N, K, h, w]``.

    ``"tokens"``: ``[N, L, C]`` becomes ``[N, C, h, w]`` from the last h*w tokens: the leading ones
    (a class token, DeiT's distillation token, register tokens; at most ``MAX_PREFIX_TOKENS``) are
    dropped. ``grid=(h, w)`` gives the grid; without it the grid is the largest square s*s <= L,
    after fewer than s leading tokens.
    ``"channels_last"``: ``[N, h, w, C]`` becomes ``[N, C, h, w]``. A callable's result is
    used as it is. The layout change is linear, so the gradient of the channel maps is the same
    transform of the output's gradient.

    Raises:
        ValueError: the output does not have the layout ``reshape`` expects, or the result is not 4-D.
        TypeError: a callable ``reshape`` returns something other than a tensor.
    """
    if reshape == "tokens":
        if out.dim() != 3:
            raise ValueError(
                f"target layer {name!r}: reshape='tokens' expects [N, L, C] tokens, got shape {list(out.shape)}"
            )
        batch, length, channels = out.shape
        if grid is not None:
            height, width = grid
            if not 0 <= length - height * width <= MAX_PREFIX_TOKENS:
                raise ValueError(
                    f"target layer {name!r}: {length} tokens do not fit grid={tuple(grid)} (expected "
                    f"{height * width} patch tokens after at most {MAX_PREFIX_TOKENS} class, distillation or "
                    "register tokens)"
                )
        else:
            height = width = math.isqrt(length)
            # fewer leading tokens than a row: more would make small grids ambiguous (8 = 4 + 2 x 2)
            if length - height * height > min(MAX_PREFIX_TOKENS, height - 1):
                raise ValueError(
                    f"target layer {name!r}: {length} tokens are not a square grid of patches after a few class, "
                    "distillation or register tokens; pass grid=(height, width)"
                )
        out = out[:, length - height * width :].reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    elif reshape == "channels_last":
        if out.dim() != 4:
            raise ValueError(
                f"target layer {name!r}: reshape='channels_last' expects [N, h, w, C], got shape {list(out.shape)}"
            )
        out = out.permute(0, 3, 1, 2)
    elif reshape is not None:
        result = reshape(out)
        if not isinstance(result, Tensor):
            raise TypeError(f"reshape: the callable must return a tensor [N, K, h, w], got {type(result).__name__}")
        out = result
    if out.dim() != 4:
        after = "" if reshape is None else f" after reshape={reshape!r}"
        hint = "" if reshape is not None else " (pass reshape='tokens', 'channels_last' or a callable)"
        raise ValueError(
            f"target layer {name!r}: expected a 4-D [N, K, h, w] output{after}, got shape {list(out.shape)}{hint}"
        )
    return out.contiguous()
