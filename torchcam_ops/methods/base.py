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

from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops._extension import assert_has_ops
from torchcam_ops.methods.calls import check_input, check_positive_or_none, map_dtype, preserve_buffers
from torchcam_ops.methods.capture import capture_outputs, check_aliases
from torchcam_ops.methods.graphs import Graphable, explainer_call, graph_input
from torchcam_ops.methods.layers import LayerSpec, Reshape, TargetLayer, channel_maps, check_reshape, resolve_layers
from torchcam_ops.methods.targeting import Targets, class_indices, model_logits, resolve_targets, slice_targets
from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce, check_output_size


class LayerGradients(NamedTuple):
    """What one forward pass and its gradients give a CAM, per target layer."""

    #: the layer outputs as channel maps ``[n, K, h, w]`` (detached unless ``create_graph``)
    activations: list[Tensor]
    #: per layer, the gradients ``[n, K, h, w]`` of each of the T targets' scores
    gradients: list[list[Tensor]]
    #: whether T targets per image were asked for
    multi: bool
    #: the class indices ``[n, T]``; None for a callable target
    indices: Tensor | None


def _adding_at_calls(deltas: dict[int, Tensor]) -> Callable[[Tensor, int], Tensor]:
    """A capture substitute: the layer's output plus ``deltas[call]`` at the calls it names, a copy at
    the others."""

    def substitute(output: Tensor, call: int) -> Tensor:
        delta = deltas.get(call)
        return output.clone() if delta is None else output + delta

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

    def _activations_and_gradients(self, x: Tensor, targets: Targets, create_graph: bool = False) -> LayerGradients:
        """Layer outputs (detached unless ``create_graph``); per layer, their gradients for each of
        the T targets; whether T targets per image were asked for; the class indices [N, T] (None
        for callable targets)."""
        if torch.compiler.is_compiling() and not _compat.autograd_is_traced():
            return self._functional_activations_and_gradients(x, targets, create_graph)
        with capture_outputs(self.layers) as captured, torch.enable_grad():
            output = self.model(graph_input(x))
            check_aliases()
            scores, multi, indices = resolve_targets(output, targets, x.shape[0])
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
        return LayerGradients(activations, gradients, multi, indices)

    def _functional_activations_and_gradients(self, x: Tensor, targets: Targets, create_graph: bool) -> LayerGradients:
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
            at_calls: dict[int, dict[int, Tensor]] = {}  # module -> call -> delta (a module may be named twice)
            for layer, delta, call in zip(self.layers, deltas, calls):
                at_calls.setdefault(id(layer.module), {})[call] = delta
            substitutes = {key: _adding_at_calls(deltas_by_call) for key, deltas_by_call in at_calls.items()}
            with capture_outputs(self.layers, substitutes) as captured:
                output = self.model(x)
                scores, multi, indices = resolve_targets(output, targets, x.shape[0])
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
        return LayerGradients(activations, gradients, asked_for_several[0], indices)

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
            logits = model_logits(self.model(x)) if targets is None else None
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
