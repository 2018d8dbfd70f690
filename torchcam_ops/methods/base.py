"""The shared base of the gradient-weighted CAM explainers.

One forward pass records the target layers' outputs for the calling thread (``capture.py``: no hook
on the user's modules, downstream in-place ops never reach the recorded outputs), one
``torch.autograd.grad`` per requested class gives their gradients, and the fused ops ``cam_reduce``
and ``cam_postprocess`` turn them into maps. No backward hooks are used; parameter ``.grad`` fields
are never touched; grad mode is enabled locally, so calling under ``torch.no_grad()`` works; no graph
or reference outlives a call unless ``create_graph=True`` asks for maps that carry gradients.

A call reads no device data on the host when targets are None or a tensor on the model's device
(range checks of device tensors are asynchronous), so it runs on the ``meta`` device, inside CUDA
graph capture and under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops._extension import assert_has_ops
from torchcam_ops.methods.capture import capture_outputs
from torchcam_ops.methods.graphs import Graphable, explainer_call, graph_input
from torchcam_ops.nn.rules import refuse_inference_mode, shield_buffers
from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce, check_output_size

#: What ``targets`` may be: ``None`` (each image's top class), a class index, one index per image,
#: a LongTensor ``[N]`` or ``[N, T]`` (T classes per image, one forward pass), or a callable that maps
#: the model output to scores ``[N]`` or ``[N, T]`` (for models returning tuples/dicts, or
#: segmentation-style scores).
Targets = None | int | Sequence[int] | Tensor | Callable[[Any], Tensor]
LayerSpec = str | nn.Module
#: How a target layer's output becomes channel maps ``[N, K, h, w]``: None (it already is), ``"tokens"``
#: (``[N, L, C]`` tokens of a vision transformer, a leading class token dropped), ``"channels_last"``
#: (``[N, h, w, C]``, Swin and ConvNeXt blocks), or a callable returning ``[N, K, h, w]``.
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


@contextlib.contextmanager
def preserve_buffers(model: nn.Module) -> Iterator[None]:
    """The model's buffers are never written while the block runs (BatchNorm running statistics of
    modules in training mode update copies; :class:`~torchcam_ops.nn.rules.BufferShield`): explaining a
    model that is being trained moves none of its statistics and leaves a pending training step valid."""
    with shield_buffers(model):
        yield


def map_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are float32 for half-precision inputs and keep float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def expanded_baseline(baseline: Tensor | float, x: Tensor) -> Tensor:
    """The baseline as a tensor like x: a number is filled on x's device (no host-to-device copy)."""
    if isinstance(baseline, Tensor):
        return baseline.to(dtype=x.dtype, device=x.device).expand_as(x)
    return torch.full_like(x, float(baseline))


def check_on_device(ok: Tensor, message: str) -> None:
    """Raises ``ValueError(message)`` unless the boolean tensor ``ok`` is True. CPU tensors are
    checked at once; tensors on other devices, and any tensor while ``torch.compile`` traces, are
    checked asynchronously (a ``RuntimeError`` with the same message, at the
    latest when the result is next read), so the check never stalls the host on device data."""
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(message)
    else:
        _compat.assert_async(ok, message)


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

    ``"tokens"``: ``[N, L, C]`` becomes ``[N, C, h, w]``; with ``grid=(h, w)``, L must be h*w or
    1 + h*w (a leading class token, dropped); without it, L must be a square s*s (grid s x s) or
    1 + s*s. ``"channels_last"``: ``[N, h, w, C]`` becomes ``[N, C, h, w]``. A callable's result is
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
            if length not in (height * width, height * width + 1):
                raise ValueError(
                    f"target layer {name!r}: {length} tokens do not fit grid={tuple(grid)} "
                    f"(expected {height * width} patch tokens, or 1 class token + {height * width})"
                )
        else:
            side = math.isqrt(length)
            if side * side != length:
                side = math.isqrt(length - 1)
                if side * side != length - 1:
                    raise ValueError(
                        f"target layer {name!r}: {length} tokens are neither a square grid of patches nor "
                        "a class token followed by one; pass grid=(height, width)"
                    )
            height = width = side
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


def check_positive_or_none(name: str, value: Any) -> None:
    """A count such as a batch size: a positive int, or None for no bound."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive int or None, got {value!r}")


def check_input(x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor batch [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D batch [N, C, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x: the batch is empty")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    refuse_inference_mode("explainer")
    check_on_device(torch.isfinite(x).all(), "x: the input contains NaN or infinite values")
    return x


def target_scores(output: Any, targets: Targets, batch: int) -> tuple[Tensor, bool, Tensor | None]:
    """Scores ``[N, T]`` of the requested classes, whether T classes per image were asked for, and
    the class indices ``[N, T]`` (None for a callable target)."""
    if callable(targets) and not isinstance(targets, Tensor):
        scores = targets(output)
        if (
            not isinstance(scores, Tensor)
            or scores.dim() not in (1, 2)
            or scores.shape[0] != batch
            or (scores.dim() == 2 and scores.shape[1] == 0)
        ):
            raise ValueError(
                f"targets: a callable target must return scores [N] or [N, T] with N = {batch} and T >= 1, got "
                f"{list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
            )
        if not scores.is_floating_point():
            raise TypeError(f"targets: a callable target must return floating-point scores, got {scores.dtype}")
        if not scores.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "targets: the callable target returned scores without a gradient to the model output "
                "(detached, or computed under torch.no_grad()); return a differentiable function of the output"
            )
        check_finite_scores(scores)
        return (scores[:, None], False, None) if scores.dim() == 1 else (scores, True, None)
    if not isinstance(output, Tensor) or output.dim() != 2:
        described = f"shape {list(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        raise TypeError(
            f"the model output ({described}) is not [N, classes] logits; pass targets as a callable "
            "that maps the output to scores [N] or [N, T]"
        )
    indices, multi = class_indices(targets, batch, output.shape[1], output)
    indices = indices.to(output.device)
    scores = output.gather(1, indices)
    check_finite_scores(scores)
    return scores, multi, indices


def check_finite_scores(scores: Tensor) -> None:
    """A NaN or infinite target score has no meaningful gradient: refused (on the CPU; see
    :func:`check_on_device`) rather than turned into a NaN or an all-zero map."""
    check_on_device(
        torch.isfinite(scores.detach()).all(),
        "the model output: a target score is NaN or infinite, so no map can be computed "
        "(check the input and the model's weights)",
    )


def class_indices(
    targets: Targets, batch: int, num_classes: int | None, logits: Tensor | None = None
) -> tuple[Tensor, bool]:
    """Class indices ``[N, T]`` from a target specification, validated against ``num_classes``
    (not validated when it is None: the caller checks them against the model output later).
    Python ints are checked on the host; tensors with :func:`check_on_device`."""
    if targets is None:
        if logits is None:
            raise ValueError("targets: None needs the model output")
        return logits.detach().argmax(1, keepdim=True), False
    if isinstance(targets, bool):
        raise TypeError("targets: expected class indices, got a bool")
    if isinstance(targets, int):
        check_class_indices([targets], num_classes)
        return torch.full((batch, 1), targets, dtype=torch.long), False
    if isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets: expected an integer tensor of class indices, got {targets.dtype}")
        if targets.dim() == 0:
            indices, multi = targets.reshape(1, 1).expand(batch, 1).long(), False
        elif targets.dim() == 1 and targets.shape[0] == batch:
            indices, multi = targets[:, None].long(), False
        elif targets.dim() == 2 and targets.shape[0] == batch and targets.shape[1] >= 1:
            indices, multi = targets.long(), True
        else:
            raise ValueError(
                f"targets: expected a tensor of shape [N] or [N, T] with N = {batch}, got {list(targets.shape)}"
            )
        if num_classes is not None:
            check_on_device(
                ((indices >= 0) & (indices < num_classes)).all(),
                f"targets: a class index is out of range for a model with {num_classes} outputs "
                f"(expected 0 <= index < {num_classes})",
            )
        return indices, multi
    if isinstance(targets, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} class indices (one per image), got {len(targets)}")
        check_class_indices(targets, num_classes)
        return torch.tensor(list(targets), dtype=torch.long)[:, None], False
    raise TypeError(
        f"targets: expected None, an int, a sequence of ints, a LongTensor or a callable, got {type(targets).__name__}"
    )


def check_class_indices(indices: Sequence[int], num_classes: int | None) -> None:
    """Python class indices in [0, num_classes) (non-negative when num_classes is None), else ValueError."""
    for index in indices:
        if num_classes is not None and not 0 <= index < num_classes:
            raise ValueError(
                f"targets: class index {index} is out of range for a model with {num_classes} outputs "
                f"(expected 0 <= index < {num_classes})"
            )
        if index < 0:
            raise ValueError(f"targets: class index {index} is out of range (class indices are non-negative)")
        if index >= 2**63:
            raise ValueError(f"targets: class index {index} is out of range (class indices are int64)")


def slice_targets(targets: Targets, start: int, stop: int, batch: int) -> Targets:
    """The targets of images [start, stop) of a batch of ``batch`` images. Per-image targets are
    checked against the whole batch, so that a chunk never reuses another chunk's targets."""
    if isinstance(targets, Tensor) and targets.dim() >= 1:
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets: expected a tensor of shape [N] or [N, T] with N = {batch}, got {list(targets.shape)}"
            )
        return targets[start:stop]
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} class indices (one per image), got {len(targets)}")
        return list(targets[start:stop])
    return targets


def _adding_at_call(delta: Tensor, index: int) -> Callable[[Tensor, int], Tensor]:
    """A capture substitute: the layer's output plus ``delta`` at call ``index``, a copy at the others."""

    def substitute(output: Tensor, call: int) -> Tensor:
        return output + delta if call == index else output.clone()

    return substitute


class BaseCAM(Graphable):
    """A gradient-weighted class activation map explainer; subclasses name a ``cam_reduce`` method.

    ``with GradCAM(model, target_layers=[model.layer4]) as cam: maps = cam(x, targets)`` returns
    ``[N, H, W]`` maps in [0, 1] (or ``[N, T, H, W]`` for T targets per image) on x's device, float32
    (float64 for float64 inputs). Several target layers: each layer's normalised map is resized to the output size, the
    maps are averaged and normalised again.

    The map describes the target layer's own output, before any in-place operation that follows it
    in the model. A target layer that runs several times in one forward pass (a shared block) is
    refused with an error naming it, unless one call is named: ``"name@k"`` (0-based, ``@-1`` the last).

    Outputs are recorded for the calling thread only, by a process-wide forward hook present only
    while explainer calls run (``capture.py``); ``close()`` or the end of a ``with`` block ends the
    explainer (later calls raise). One explainer may be called from several threads at once.
    """

    method: ClassVar[str] = ""
    #: Whether the maps come from ``cam_reduce`` of activations and gradients (``method`` names its
    #: formula); the gradient-free CAMs weight the channels themselves.
    reduces_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        assert_has_ops()  # the build error, not a misleading one about the method, without an extension
        if self.reduces_gradients and self.method not in CAM_METHODS:
            raise TypeError(f"{type(self).__name__} names no cam_reduce method")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        check_positive_or_none("batch_size", batch_size)
        check_reshape(reshape, grid)
        self._bind_model(model)
        self.layers = resolve_layers(self.model, target_layers)
        self.batch_size = batch_size
        self.reshape, self.grid = reshape, (tuple(grid) if grid is not None else None)
        self._closed = False

    def __enter__(self) -> BaseCAM:
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
        create_graph: bool = False,
    ) -> Tensor | list[Tensor]:
        """Maps of ``x`` ``[N, C, H, W]`` for ``targets``.

        ``raw=True``: the un-normalised layer-resolution maps (before ReLU), one tensor per layer
        (a list when there are several). ``output_size`` overrides the input size.
        ``create_graph=True``: the maps carry gradients to the model's parameters (through the
        layers after the target layer too, as second-order terms), for explanation losses in
        training; by default they are detached.

        Args:
            x: the images ``[N, C, H, W]``: a non-empty, floating-point batch without NaN or infinite values.
            targets: the classes to explain (see ``Targets``): None (default: each image's top class), a
                class index, one index per image, a LongTensor ``[N]`` or ``[N, T]``, or a callable that
                maps the model output to scores ``[N]`` or ``[N, T]``.
            raw: whether to return the raw layer-resolution maps (default False).
            output_size: the maps' size, a positive int or ``(height, width)``; None (default) for the
                input's ``(H, W)``.
            create_graph: whether the maps carry gradients to the model's parameters (default False).

        Returns:
            The maps, ``[N, out_h, out_w]`` in [0, 1] (``[N, T, out_h, out_w]`` for T targets per image) on
            x's device, float32 (float64 for float64 inputs). With ``raw=True``, per target layer the
            maps ``[N, h, w]`` (``[N, T, h, w]``) before ReLU: one tensor, or a list of them for several
            layers.

        Raises:
            TypeError: ``x`` is not a tensor or not floating point, ``targets`` is of an unsupported type,
                or the model output is not ``[N, classes]`` logits and ``targets`` is not a callable.
            ValueError: ``x`` is not a non-empty 4-D batch or holds NaN or infinite values, ``targets``
                does not fit the batch or the model's classes, ``output_size`` is not positive or the
                output would exceed :data:`torchcam_ops.ops.MAX_OUTPUT_ELEMENTS` elements, or a target
                layer did not run, ran several times without a call index, gives no 4-D output or gets
                no gradient.
            RuntimeError: the explainer was closed, or the call runs under ``torch.inference_mode()``;
                on a device other than the CPU, a failed check of device data (NaN in ``x``, a class
                index out of range) raises asynchronously, at the latest when the result is read.
        """
        x, size = self._checked_call(x, output_size)
        with preserve_buffers(self.model):
            return self._explain(x, targets, raw, size, create_graph)

    def _checked_call(self, x: Tensor, output_size: int | tuple[int, int] | None) -> tuple[Tensor, tuple[int, int]]:
        """The checks every call starts with: the input, the output size, an open explainer."""
        x = check_input(x)
        size = self._output_size(x, output_size)
        check_output_size("output_size", x.shape[0], *size)
        if self._closed:
            raise RuntimeError(f"{type(self).__name__}: the explainer was closed")
        return x, size

    def _explain(
        self, x: Tensor, targets: Targets, raw: bool, size: tuple[int, int], create_graph: bool
    ) -> Tensor | list[Tensor]:
        raws = [
            self._layer_maps(x[start:stop], slice_targets(targets, start, stop, x.shape[0]), create_graph)
            for start, stop in self._chunks(x.shape[0])
        ]
        per_layer, multi = self._joined(raws)
        if raw:
            return self._raw_output(per_layer, multi)
        return self._fuse(per_layer, size, multi)

    # -- pieces shared by the subclasses ------------------------------------------------------

    def _joined(self, chunks: list[tuple[list[Tensor], bool]]) -> tuple[list[Tensor], bool]:
        """Per layer, the raw maps ``[N, T, h, w]`` of all chunks, and whether T classes per image were
        asked for, from each chunk's ``(maps per layer, multi)``."""
        per_layer = [torch.cat([chunk[0][i] for chunk in chunks]) for i in range(len(self.layers))]
        return per_layer, chunks[0][1]

    @staticmethod
    def _raw_output(per_layer: list[Tensor], multi: bool) -> Tensor | list[Tensor]:
        """What ``raw=True`` returns: ``[N, h, w]`` (``[N, T, h, w]``) per layer, a list for several."""
        per_layer = [m if multi else m[:, 0] for m in per_layer]
        return per_layer if len(per_layer) > 1 else per_layer[0]

    def _chunks(self, batch: int) -> list[tuple[int, int]]:
        step = self.batch_size or batch
        return [(start, min(start + step, batch)) for start in range(0, batch, step)]

    @staticmethod
    def _output_size(x: Tensor, output_size: int | tuple[int, int] | None) -> tuple[int, int]:
        if output_size is None:
            return int(x.shape[-2]), int(x.shape[-1])
        if isinstance(output_size, bool) or not isinstance(output_size, (int, tuple, list)):
            raise ValueError(f"output_size: expected a positive int or (height, width), got {output_size!r}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in output_size):
            raise ValueError(f"output_size: expected a positive int or (height, width), got {output_size!r}")
        return tuple(output_size)

    def _layer_maps(self, x: Tensor, targets: Targets, create_graph: bool = False) -> tuple[list[Tensor], bool]:
        """Raw maps ``[n, T, h, w]`` (float32, before ReLU) of each layer for one chunk."""
        activations, gradients, multi, _ = self._activations_and_gradients(x, targets, create_graph)
        maps = []
        for a, grads in zip(activations, gradients):
            maps.append(torch.stack([cam_reduce(a, g, self.method) for g in grads], dim=1).to(map_dtype(x.dtype)))
        return maps, multi

    def _forward_maps(self, x: Tensor, targets: Targets, create_graph: bool = False) -> tuple[list[Tensor], bool]:
        """:meth:`_layer_maps` of one forward pass, for explainers that run many of them per call
        (path points): compiled, one forward pass at a time, when the model was given compiled."""
        if self._model_compile_options is None or torch.compiler.is_compiling():
            return BaseCAM._layer_maps(self, x, targets, create_graph)
        return self._call_compiled(BaseCAM._layer_maps, x, targets, create_graph)

    def _activations_and_gradients(
        self, x: Tensor, targets: Targets, create_graph: bool = False
    ) -> tuple[list[Tensor], list[list[Tensor]], bool, Tensor | None]:
        """Layer outputs (detached unless ``create_graph``); per layer, their gradients for each of
        the T targets; whether T targets per image were asked for; the class indices [N, T] (None
        for callable targets)."""
        if torch.compiler.is_compiling() and not _compat.autograd_is_traced():
            return self._functional_activations_and_gradients(x, targets, create_graph)
        with capture_outputs(self.layers) as captured, torch.enable_grad():
            output = self.model(graph_input(x))
            scores, multi, indices = target_scores(output, targets, x.shape[0])
            outputs = [self._layer_output(layer, captured[id(layer.module)]) for layer in self.layers]
            activations = [self._channel_maps(out, name) for (name, _, _), out in zip(self.layers, outputs)]
            for (name, _, _), out in zip(self.layers, outputs):
                if not out.requires_grad or not scores.requires_grad:
                    raise ValueError(
                        f"target layer {name!r}: the model output has no gradient to this layer "
                        "(is its output detached, or computed without grad?)"
                    )
            count = int(scores.shape[1])  # a Python int: the compiler specialises on it, no symbolic bool
            per_target = []
            for t in range(count):
                grads = torch.autograd.grad(
                    scores[:, t].sum(),
                    outputs,
                    retain_graph=create_graph or t + 1 < count,
                    create_graph=create_graph,
                    allow_unused=True,
                )
                for (name, _, _), g in zip(self.layers, grads):
                    if g is None:
                        raise ValueError(f"target layer {name!r}: the model output has no gradient to this layer")
                per_target.append([self._channel_maps(g, name) for (name, _, _), g in zip(self.layers, grads)])
        activations = [a if create_graph else a.detach() for a in activations]
        gradients = [[per_target[t][i] for t in range(count)] for i in range(len(self.layers))]
        return activations, gradients, multi, indices

    def _functional_activations_and_gradients(
        self, x: Tensor, targets: Targets, create_graph: bool
    ) -> tuple[list[Tensor], list[list[Tensor]], bool, Tensor | None]:
        """:meth:`_activations_and_gradients` in code that torch.compile traces without tracing
        ``torch.autograd.grad`` (a user's own ``torch.compile``): the gradient to a layer's output is
        the gradient of the scores to a zero added to it, taken by ``torch.func.vjp``. A first forward
        pass without gradients gives the outputs' shapes; nothing uses its results, so the compiled
        code drops it."""
        x = x.detach()
        with torch.no_grad(), capture_outputs(self.layers) as probe:
            self.model(x)
        calls = []
        for layer in self.layers:
            outputs = probe[id(layer.module)]
            self._layer_output(layer, outputs)  # the layer ran, and the call exists
            calls.append(0 if layer.call is None else layer.call % len(outputs))
        zeros = [torch.zeros_like(probe[id(layer.module)][call]) for layer, call in zip(self.layers, calls)]
        asked_for_several: list[bool] = []

        def scores_of(deltas: list[Tensor]) -> tuple[Tensor, tuple[list[Tensor], Tensor | None]]:
            substitutes = {
                id(layer.module): _adding_at_call(delta, call) for layer, delta, call in zip(self.layers, deltas, calls)
            }
            with capture_outputs(self.layers, substitutes) as captured:
                output = self.model(x)
                scores, multi, indices = target_scores(output, targets, x.shape[0])
            asked_for_several.append(multi)
            return scores, ([captured[id(layer.module)][call] for layer, call in zip(self.layers, calls)], indices)

        with torch.enable_grad():
            scores, vjp, (outputs, indices) = torch.func.vjp(scores_of, zeros, has_aux=True)
            count = int(scores.shape[1])
            per_target = []
            for t in range(count):
                seed = torch.zeros_like(scores).index_fill_(1, torch.tensor([t], device=scores.device), 1.0)
                (grads,) = vjp(seed)
                per_target.append([self._channel_maps(g, name) for (name, _, _), g in zip(self.layers, grads)])
        activations = [self._channel_maps(out, name) for (name, _, _), out in zip(self.layers, outputs)]
        if not create_graph:
            activations = [a.detach() for a in activations]
            per_target = [[g.detach() for g in grads] for grads in per_target]
        gradients = [[per_target[t][i] for t in range(count)] for i in range(len(self.layers))]
        return activations, gradients, asked_for_several[0], indices

    def _channel_maps(self, out: Tensor, name: str) -> Tensor:
        return channel_maps(out, self.reshape, self.grid, name)

    @staticmethod
    def _layer_output(layer: TargetLayer, outputs: list[Tensor]) -> Tensor:
        """The recorded output that ``layer`` explains, among the outputs of its calls."""
        if not outputs:
            raise ValueError(f"target_layers: {layer.name!r} did not run in the model's forward pass")
        if layer.call is None:
            if len(outputs) > 1:
                raise ValueError(
                    f"target layer {layer.name!r} ran {len(outputs)} times in one forward pass; a map "
                    "of one call would silently ignore the others. Name the call to explain, e.g. "
                    f"'{layer.name}@-1' for the last (0-based), or choose a module that runs once"
                )
            return outputs[0]
        if not -len(outputs) <= layer.call < len(outputs):
            raise ValueError(
                f"target layer {layer.name!r}: call {layer.call} does not exist; the module ran "
                f"{len(outputs)} times in one forward pass"
            )
        return outputs[layer.call]

    def _fixed_targets(self, x: Tensor, targets: Targets) -> tuple[Targets, bool | None]:
        """Targets pinned on ``x`` itself, for methods that explain other inputs derived from x
        (path points, masked images): class indices [N, T] (each image's top class on x when
        None), or a callable unchanged (whether it yields T scores is known only later: None)."""
        if callable(targets) and not isinstance(targets, Tensor):
            return targets, None
        with torch.no_grad():
            logits = self.model(x) if targets is None else None
        if logits is not None and (not isinstance(logits, Tensor) or logits.dim() != 2):
            described = f"shape {list(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
            raise TypeError(
                f"the model output ({described}) is not [N, classes] logits; this explainer needs "
                "class indices (a callable target is not supported)"
            )
        # Without a forward pass the class count is unknown here; the first forward pass on the
        # derived inputs validates the indices against the real output.
        indices, multi = class_indices(targets, x.shape[0], None, logits)
        return indices.to(x.device), multi

    @staticmethod
    def _fuse(per_layer: list[Tensor], size: tuple[int, int], multi: bool) -> Tensor:
        """ReLU, Up and norm per layer; with several layers, the mean of those, normalised again."""
        batch, count = per_layer[0].shape[:2]
        if multi:
            check_output_size(f"targets ({count} per image)", batch * count, *size)
        maps = [cam_postprocess(m.reshape(batch * count, *m.shape[2:]), size) for m in per_layer]
        fused = maps[0] if len(maps) == 1 else cam_postprocess(torch.stack(maps).mean(0), size, relu=False)
        fused = fused.reshape(batch, count, *size)
        return fused if multi else fused[:, 0]
