"""The shared base of the CAM explainers: one pipeline, one formula point per method.

A call checks its input, splits the batch into chunks of ``batch_size`` images, gathers the
:class:`LayerEvidence` of each chunk from one forward pass (the target layers' outputs and, for
methods that declare ``needs_gradients``, the gradients of the target scores to them), asks the
method for the raw maps of each layer (:meth:`BaseCAM.layer_maps`, or the channel weights of
:meth:`BaseCAM.channel_weights` for methods that weigh whole channels), and
post-processes them alike for every method (ReLU, Up, norm; several layers averaged and normalised
again). A method file is its formula and its declared traits.

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
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops._extension import assert_has_ops
from torchcam_ops.methods import masking
from torchcam_ops.methods.attention import twice_differentiable_attention
from torchcam_ops.methods.calls import check_input, check_positive_or_none, map_dtype, preserve_buffers
from torchcam_ops.methods.capture import capture_outputs, check_aliases
from torchcam_ops.methods.graphs import Graphable, explainer_call, graph_input
from torchcam_ops.methods.layer_search import find_target_layer
from torchcam_ops.methods.layers import LayerSpec, Reshape, TargetLayer, channel_maps, check_reshape, resolve_layers
from torchcam_ops.methods.layout import ChannelsLast, ForwardPlan, ImagesPerForward
from torchcam_ops.methods.smoothing import (
    AUGMENTATIONS,
    augment,
    average_of_copies,
    check_smoothing,
    principal_maps,
    reduction_terms,
    targets_of_copies,
)
from torchcam_ops.methods.targeting import Targets, class_indices, model_logits, resolve_targets, slice_targets
from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce, check_output_size


class LayerEvidence(NamedTuple):
    """What one forward pass of a chunk of images tells a method about one target layer: the input
    of :meth:`BaseCAM.layer_maps`."""

    #: the chunk's images ``[n, C, H, W]``
    x: Tensor
    #: the target layer (name, module, call index)
    layer: TargetLayer
    #: the layer's output as channel maps ``[n, K, h, w]`` (after ``reshape``); detached unless
    #: ``create_graph``. In the model's dtype for methods that need gradients (``cam_reduce``
    #: accumulates half precision in float32), in the maps' dtype (float32 or float64) for the others.
    activations: Tensor
    #: per target t, the gradient of its score to the layer's output, ``[n, K, h, w]`` like the
    #: activations; empty for methods that declare ``needs_gradients = False``
    gradients: list[Tensor]
    #: the class indices ``[n, T]``; None for a callable target
    indices: Tensor | None
    #: the model's logits ``[n, classes]`` on ``x`` (detached); None when its output holds none
    logits: Tensor | None
    #: how many times the layer's module ran in the forward pass
    calls: int
    #: the call's :class:`~torchcam_ops.methods.layout.ForwardPlan`, for methods that run more forwards
    #: (masked images, ablated copies); None in a single forward pass of a path method
    plan: ForwardPlan | None
    #: for methods that declare ``second_order``: the layer's own output, which the gradients (then
    #: differentiable) were taken with respect to; None otherwise
    output: Tensor | None = None
    #: for methods that declare ``second_order``: per target, the gradient to ``output`` in its own
    #: layout (before ``reshape``, a ViT's class token included); None otherwise
    output_gradients: list[Tensor] | None = None

    @property
    def targets(self) -> int:
        """T, the number of targets per image."""
        return len(self.gradients) if self.gradients else int(self.indices.shape[1])


class ChunkMaps(NamedTuple):
    """The raw maps of one chunk of images."""

    #: per target layer, the raw maps ``[n, T, h, w]`` (before ReLU), in the maps' dtype
    per_layer: list[Tensor]
    #: whether T targets per image were asked for (``[N, T, ...]`` maps), not one
    multi: bool


def _adding_at_calls(deltas: dict[int, Tensor]) -> Callable[[Tensor, int], Tensor]:
    """A capture substitute: the layer's output plus ``deltas[call]`` at the calls it names, a copy at
    the others."""

    def substitute(output: Tensor, call: int) -> Tensor:
        delta = deltas.get(call)
        return output.clone() if delta is None else output + delta

    return substitute


class BaseCAM(Graphable):
    """A class activation map explainer: one pipeline for every CAM method, which a method shapes by
    its formula (:meth:`layer_maps`, or :meth:`channel_weights` for a method that weighs whole channels)
    and its declared traits.

    ``with GradCAM(model, target_layers=[model.layer4]) as cam: maps = cam(x, targets)`` returns
    ``[N, H, W]`` maps in [0, 1] (or ``[N, T, H, W]`` for T targets per image) on x's device, float32
    (float64 for float64 inputs). Several target layers: each layer's normalised map is resized to the output size, the
    maps are averaged and normalised again.

    The map describes the target layer's own output, before any in-place operation that follows it
    in the model. A target layer that runs several times in one forward pass (a shared block) is
    refused with an error naming it, unless one call is named: ``"name@k"`` (0-based, ``@-1`` the last).

    ``target_layers=None`` finds the layer with one probe forward and backward pass
    (:func:`~torchcam_ops.methods.layer_search.find_target_layer`: the last spatial layer the class score
    depends on at most positions; ``reshape="tokens"`` for a transformer's tokens unless given), logs it on
    the ``torchcam_ops`` logger and names it in ``explainer.layers``.

    Outputs are recorded for the calling thread only, by a process-wide forward hook present only
    while explainer calls run (``capture.py``); ``close()`` or the end of a ``with`` block ends the
    explainer (later calls raise). One explainer may be called from several threads at once.

    ``batch_size`` is, for every CAM explainer, how many of the call's images are explained at once
    (None: all); how many images go in each of the further forwards a method runs per image
    (masked images, ablated copies, path points) is its own option (``masks_per_forward``...).

    Adding a method (``docs/design.md`` walks through it): subclass, write the formula in the
    docstring, declare the traits below that differ from the defaults, and either name a
    ``cam_reduce`` formula in ``reduction`` or override :meth:`layer_maps`.
    """

    # -- declared traits (class attributes; a method whose trait depends on an option sets it in __init__)

    #: The ``cam_reduce`` formula of the default :meth:`layer_maps` (``"gradcam"``, ``"layercam"``...).
    reduction: ClassVar[str] = ""
    #: Whether a call computes the gradients of the target scores to the target layers (False: one
    #: forward pass without gradients).
    needs_gradients: ClassVar[bool] = True
    #: Whether :meth:`layer_maps` differentiates the gradients again (Hessian-vector products): the
    #: evidence then keeps the graph and the layer's own ``output``, and the forward pass computes
    #: attention with its math kernel (``methods/attention.py``: fused kernels have no second derivative).
    second_order: ClassVar[bool] = False
    #: Whether the maps depend on the class; False: targets only set how many maps per image are
    #: returned, and the model's output may be anything (Eigen-CAM).
    class_specific: ClassVar[bool] = True
    #: Whether targets must be class indices (the method scores classes itself): a callable is refused.
    needs_class_indices: bool = False
    #: Whether ReLU applies at the input's resolution (the raw maps are resized first, Score-CAM)
    #: instead of the layer's.
    relu_at_input_size: bool = False
    #: Why the maps carry no gradient to the model's parameters, ``{name}`` standing for the class
    #: name; ``create_graph=True`` is refused with it. None: they carry them.
    no_create_graph: str | None = None
    #: How the call's further forwards lay out their images on the CPU and how many go in each
    #: (:class:`~torchcam_ops.methods.layout.ForwardPlan`); methods that run such forwards take them
    #: as options.
    cpu_channels_last: ChannelsLast = "auto"
    images_per_forward: ImagesPerForward = "auto"
    #: How several target layers' normalised maps combine: their ``"mean"``, or their ``"product"``
    #: (:class:`~torchcam_ops.methods.RefineCAM`: a region must stand out at every layer).
    layer_fusion: Literal["mean", "product"] = "mean"
    #: The smoothing options a call takes (:meth:`__call__`).
    smoothing_options: ClassVar[tuple[str, ...]] = ("eigen_smooth", "aug_smooth")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__ and "reduction" not in cls.__dict__:
            warnings.warn(
                f"{cls.__name__}: the class attribute 'method' is now 'reduction' (the cam_reduce formula)",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.reduction = cls.__dict__["method"]

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None,
        *,
        batch_size: int | None = None,
        reshape: Reshape = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        """An explainer of ``model`` at ``target_layers``; ``with`` it or ``close()`` it when done.

        Args:
            model: the model to explain; it is never changed (modules, modes, buffers, ``requires_grad``).
            target_layers: a module of ``model``, a dotted name (``"layer4"``, ``"name@k"`` for the k-th call of
                a layer that runs several times), a non-empty list of them, or None: found with one probe
                pass (:func:`~torchcam_ops.methods.layer_search.find_target_layer`).
            batch_size: how many of a call's images are explained at once; None (default) for all.
            reshape: the target layers' output layout when it is not ``[N, K, h, w]``: ``"tokens"``
                (``[N, L, C]``, leading class, distillation or register tokens dropped), ``"channels_last"``
                (``[N, h, w, C]``) or a callable returning ``[N, K, h, w]``; None (default) for none.
            grid: the token grid ``(h, w)`` for ``reshape="tokens"``; None (default): the largest square.

        Raises:
            TypeError: ``model`` is not an ``nn.Module``, or a layer is neither a module nor a name.
            ValueError: a layer the model does not have, a bad ``batch_size``, ``reshape`` or ``grid``, or
                (``target_layers=None``) a model the probe cannot run or find a spatial layer in.
        """
        assert_has_ops()  # the build error, not a misleading one about the method, without an extension
        if (
            not self._weighs_channels()
            and type(self).layer_maps is BaseCAM.layer_maps
            and self.reduction not in CAM_METHODS
        ):
            raise TypeError(
                f"{type(self).__name__} names no cam_reduce formula and overrides neither layer_maps "
                "nor channel_weights"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        check_positive_or_none("batch_size", batch_size)
        check_reshape(reshape, grid)
        self._bind_model(model)
        if target_layers is None:
            found = find_target_layer(self.model)
            target_layers = found.name
            reshape = found.reshape if reshape is None else reshape
        self.layers = resolve_layers(self.model, target_layers)
        self.batch_size = batch_size
        self.reshape, self.grid = reshape, (tuple(grid) if grid is not None else None)
        self._closed = False

    def layer_maps(self, evidence: LayerEvidence) -> Tensor:
        """The method's formula: the raw maps ``[n, T, h, w]`` (before ReLU, at the layer's resolution,
        or at the input's with ``relu_at_input_size``) of one target layer for a chunk of images, from
        what one forward pass told about it (:class:`LayerEvidence`). The default sums the channels
        weighted by :meth:`channel_weights` where a method defines it, and otherwise reduces
        activations and gradients with the ``cam_reduce`` formula named by ``reduction``."""
        if self._weighs_channels():
            weights = self.channel_weights(evidence)
            return torch.einsum("ntk,nkhw->nthw", weights, evidence.activations.to(weights.dtype))
        return torch.stack([cam_reduce(evidence.activations, g, self.reduction) for g in evidence.gradients], dim=1)

    def channel_weights(self, evidence: LayerEvidence) -> Tensor:
        """For a method that weighs whole channels (CAM, Score-CAM, Ablation-CAM...), its formula as the
        weights ``[n, T, K]`` of one target layer's channels, in the maps' dtype: the default
        :meth:`layer_maps` sums the weighted channels, and ``eigen_smooth`` takes their first principal
        component. A method defines this or :meth:`layer_maps`, not both."""
        raise NotImplementedError(f"{type(self).__name__} does not weigh whole channels")

    def channel_terms(self, evidence: LayerEvidence) -> Tensor:
        """The per-channel terms ``[n, T, K, h, w]`` whose sum over K is the raw map of
        :meth:`layer_maps`, in the maps' dtype: what ``eigen_smooth`` projects on its first principal
        component. Known for the methods that define :meth:`channel_weights` or name a ``reduction``;
        a method with its own :meth:`layer_maps` may override this too."""
        if self._weighs_channels():
            weights = self.channel_weights(evidence)
            return weights[..., None, None] * evidence.activations.to(weights.dtype)[:, None]
        if type(self).layer_maps is BaseCAM.layer_maps:
            return torch.stack(
                [reduction_terms(evidence.activations, g, self.reduction) for g in evidence.gradients], 1
            )
        raise NotImplementedError(f"{type(self).__name__} has no per-channel terms")

    @classmethod
    def _weighs_channels(cls) -> bool:
        return cls.channel_weights is not BaseCAM.channel_weights

    def has_channel_terms(self) -> bool:
        """Whether the method's maps are sums of per-channel terms (:meth:`channel_terms`), which
        ``eigen_smooth`` needs; path methods, whose maps sum many forward passes, say no."""
        cls = type(self)
        return (
            cls._weighs_channels()
            or cls.layer_maps is BaseCAM.layer_maps
            or cls.channel_terms is not BaseCAM.channel_terms
        )

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
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> Tensor | list[Tensor]:
        """Maps of ``x`` ``[N, C, H, W]`` for ``targets``.

        ``raw=True``: the un-normalised layer-resolution maps (before ReLU), one tensor per layer
        (a list when there are several). ``output_size`` overrides the input size.
        ``create_graph=True``: the maps carry gradients to the model's parameters (through the
        layers after the target layer too, as second-order terms), for explanation losses in
        training; by default they are detached.

        ``eigen_smooth=True``: each raw map is replaced by the first principal component of the
        per-channel terms it sums (:meth:`channel_terms`, e.g. :math:`w_k A_k` for Grad-CAM) over the
        pixels, with the side that correlates positively with the unsmoothed map; pytorch-grad-cam's
        option, whose SVD leaves that side to chance. ``aug_smooth=True``: the maps of six copies of
        each image (unflipped and flipped, times 0.9, 1 and 1.1; :data:`~torchcam_ops.methods.smoothing.AUGMENTATIONS`),
        explained together as one batch of 6N images (``batch_size`` chunks it), flipped back,
        averaged and normalised again; None targets are each image's top class on the image itself, a
        callable target scores the copies' output (6N rows, copy-major). pytorch-grad-cam averages the
        same maps without normalising again (ours are its maps min-max normalised) and takes, for
        None targets, each copy's own top class.

        Args:
            x: the images ``[N, C, H, W]``: a non-empty, floating-point batch without NaN or infinite values.
            targets: the classes to explain (see ``Targets``): None (default: each image's top class), a
                class index, one index per image, a LongTensor ``[N]`` or ``[N, T]``, or a callable that
                maps the model output to scores ``[N]`` or ``[N, T]``.
            raw: whether to return the raw maps, before ReLU (default False): at the layer's resolution
                (Abs-CAM phase 2: at the input's).
            output_size: the maps' size, a positive int or ``(height, width)``; None (default) for the
                input's ``(H, W)``.
            create_graph: whether the maps carry gradients to the model's parameters (default False).
            eigen_smooth: whether each map is the first principal component of its per-channel terms
                (default False); for the methods whose maps sum such terms (:meth:`has_channel_terms`).
            aug_smooth: whether the maps are averaged over the flipped and rescaled copies of each image
                (default False); not with ``raw=True``.

        Returns:
            The maps, ``[N, out_h, out_w]`` in [0, 1] (``[N, T, out_h, out_w]`` for T targets per image) on
            x's device, float32 (float64 for float64 inputs). With ``raw=True``, per target layer the
            maps ``[N, h, w]`` (``[N, T, h, w]``) before ReLU: one tensor, or a list of them for several
            layers.

        Raises:
            TypeError: ``x`` is not a tensor or not floating point, ``targets`` is of an unsupported type,
                or the model output is not ``[N, classes]`` logits and ``targets`` is not a callable.
            ValueError: ``eigen_smooth`` for a method whose maps are not sums of per-channel terms or with
                ``create_graph=True``, ``aug_smooth`` with ``raw=True`` or with targets that slice
                themselves; ``x`` is not a non-empty 4-D batch or holds NaN or
                infinite values, ``targets`` does not fit the batch or the model's classes,
                ``output_size`` is not positive or the output would exceed
                :data:`torchcam_ops.ops.MAX_OUTPUT_ELEMENTS` elements, or a target layer did not run, ran
                several times without a call index, gives no 4-D output or gets no gradient.
            RuntimeError: the explainer was closed, or the call runs under ``torch.inference_mode()``;
                on a device other than the CPU, a failed check of device data (NaN in ``x``, a class
                index out of range) raises asynchronously, at the latest when the result is read.
        """
        x, size = self._checked_call(x, output_size)
        self._check_smoothing(eigen_smooth, aug_smooth, raw, create_graph, targets)
        if aug_smooth:
            check_output_size(
                f"aug_smooth ({len(AUGMENTATIONS)} copies per image)", len(AUGMENTATIONS) * x.shape[0], *size
            )
        with preserve_buffers(self.model):
            if aug_smooth:
                maps = self._explain(
                    augment(x), self._targets_of_copies(x, targets), False, size, create_graph, eigen_smooth
                )
                return average_of_copies(maps)
            return self._explain(x, targets, raw, size, create_graph, eigen_smooth)

    def _check_smoothing(
        self, eigen_smooth: bool, aug_smooth: bool, raw: bool, create_graph: bool = False, targets: Targets = None
    ) -> None:
        check_smoothing(eigen_smooth, aug_smooth, raw, create_graph, targets)
        if eigen_smooth and not self.has_channel_terms():
            raise ValueError(
                f"eigen_smooth: {type(self).__name__}'s maps are not sums of per-channel terms, so they have no "
                "principal component to smooth with; call it without eigen_smooth"
            )

    def _targets_of_copies(self, x: Tensor, targets: Targets) -> Targets:
        """``targets`` for ``aug_smooth``'s copies of ``x``: None becomes each image's top class on the
        image itself (the copies explain one class per image)."""
        if targets is None and self.class_specific:
            indices, _ = self._fixed_targets(x, None)
            targets = indices[:, 0]
        return targets_of_copies(targets, x.shape[0])

    def _checked_call(self, x: Tensor, output_size: int | tuple[int, int] | None) -> tuple[Tensor, tuple[int, int]]:
        """The checks every call starts with: the input, the output size, an open explainer."""
        x = check_input(x)
        size = self._output_size(x, output_size)
        check_output_size("output_size", x.shape[0], *size)
        if self._closed:
            raise RuntimeError(f"{type(self).__name__}: the explainer was closed")
        return x, size

    def _explain(
        self,
        x: Tensor,
        targets: Targets,
        raw: bool,
        size: tuple[int, int],
        create_graph: bool,
        eigen_smooth: bool = False,
    ) -> Tensor | list[Tensor]:
        """The pipeline: chunks of ``batch_size`` images, their raw maps (:meth:`_chunk_maps`), then
        the raw maps or the post-processed ones."""
        if create_graph and self.no_create_graph is not None:
            raise ValueError("create_graph: " + self.no_create_graph.format(name=type(self).__name__))
        if self.needs_class_indices and callable(targets) and not isinstance(targets, Tensor):
            raise ValueError(
                f"targets: {type(self).__name__} scores classes itself, so it needs class indices, not a callable"
            )
        plan = self._forward_plan(x.device)
        with contextlib.nullcontext() if self.needs_gradients else torch.no_grad():
            chunks = [
                self._chunk_maps(
                    x[start:stop],
                    slice_targets(targets, start, stop, x.shape[0]),
                    create_graph,
                    plan,
                    eigen_smooth=eigen_smooth,
                )
                for start, stop in self._chunks(x.shape[0])
            ]
        per_layer = (
            chunks[0].per_layer
            if len(chunks) == 1
            else [torch.cat([chunk.per_layer[i] for chunk in chunks]) for i in range(len(self.layers))]
        )
        multi = chunks[0].multi
        if raw:
            return self._raw_output(per_layer, multi)
        if self.relu_at_input_size:
            input_size = tuple(x.shape[-2:])
            per_layer = [
                cam_postprocess(m.flatten(0, 1), input_size, relu=False, normalize=False).reshape(
                    *m.shape[:2], *input_size
                )
                for m in per_layer
            ]
        return self._fuse(per_layer, size, multi)

    def _chunk_maps(
        self,
        x: Tensor,
        targets: Targets,
        create_graph: bool = False,
        plan: ForwardPlan | None = None,
        *,
        eigen_smooth: bool = False,
    ) -> ChunkMaps:
        """The raw maps of a chunk of images from one forward pass: :meth:`layer_maps` of each layer's
        evidence (with ``eigen_smooth``, the principal component of :meth:`channel_terms`). Path
        methods, which run many forward passes per chunk, override this."""
        evidence, multi = self._evidence(x, targets, create_graph, plan)
        dtype = map_dtype(x.dtype)
        formula = (lambda layer: principal_maps(self.channel_terms(layer))) if eigen_smooth else self.layer_maps
        maps = [formula(layer).to(dtype) for layer in evidence]
        if self.second_order and not create_graph:
            maps = [m.detach() for m in maps]
        return ChunkMaps(maps, multi)

    def _forward_plan(self, device: torch.device, forwards: int = 0, min_forwards: int | None = None) -> ForwardPlan:
        """The plan of one call's further forwards on ``device`` (``cpu_channels_last``,
        ``images_per_forward``; "auto" tries channels-last from ``min_forwards`` expected forwards)."""
        return ForwardPlan(
            self.cpu_channels_last,
            lambda: self._model_forward_may_try_channels_last(device),
            forwards,
            masking.CHANNELS_LAST_MIN_FORWARDS if min_forwards is None else min_forwards,
            self.images_per_forward,
        )

    # -- pieces shared by the subclasses ------------------------------------------------------

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

    def _forward_maps(self, x: Tensor, targets: Targets, create_graph: bool = False) -> ChunkMaps:
        """The raw maps of one forward pass (:meth:`BaseCAM._chunk_maps`), for path methods that run
        many of them per call: compiled, one forward pass at a time, when the model was given compiled."""
        if self._model_compile_options is None or torch.compiler.is_compiling():
            return BaseCAM._chunk_maps(self, x, targets, create_graph)
        return self._call_compiled(BaseCAM._chunk_maps, x, targets, create_graph)

    def _evidence(
        self, x: Tensor, targets: Targets, create_graph: bool, plan: ForwardPlan | None
    ) -> tuple[list[LayerEvidence], bool]:
        """Per target layer, what one forward pass of ``x`` tells about it, and whether T targets per
        image were asked for."""
        if not self.needs_gradients:
            return self._evidence_without_gradients(x, targets, plan)
        if torch.compiler.is_compiling() and not _compat.autograd_is_traced():
            return self._functional_evidence(x, targets, create_graph, plan)
        attention = twice_differentiable_attention() if self.second_order else contextlib.nullcontext()
        with capture_outputs(self.layers) as captured, torch.enable_grad():
            with attention:  # fused attention kernels have no second derivative
                output = self.model(graph_input(x))
            check_aliases()
            scores, multi, indices = resolve_targets(output, targets, x.shape[0])
            outputs = [self._layer_output(layer, captured[id(layer.module)]) for layer in self.layers]
            calls = [len(captured[id(layer.module)]) for layer in self.layers]
            activations = [self._channel_maps(out, name) for (name, _, _), out in zip(self.layers, outputs)]
            for (name, _, _), out in zip(self.layers, outputs):
                if not out.requires_grad or not scores.requires_grad:
                    raise ValueError(
                        f"target layer {name!r}: the model output has no gradient to this layer "
                        "(is its output detached, or computed without grad?)"
                    )
            count = int(scores.shape[1])  # a Python int: the compiler specialises on it, no symbolic bool
            # second-order methods differentiate the gradients again in layer_maps
            keep_graph = create_graph or self.second_order
            per_target, raw_per_target = [], []
            for t in range(count):
                grads = torch.autograd.grad(
                    scores[:, t].sum(),
                    outputs,
                    retain_graph=keep_graph or t + 1 < count,
                    create_graph=keep_graph,
                    allow_unused=True,
                )
                for (name, _, _), g in zip(self.layers, grads):
                    if g is None:
                        raise ValueError(f"target layer {name!r}: the model output has no gradient to this layer")
                per_target.append([self._channel_maps(g, name) for (name, _, _), g in zip(self.layers, grads)])
                raw_per_target.append(grads)
        activations = [a if keep_graph else a.detach() for a in activations]
        evidence = self._per_layer(x, activations, per_target, indices, output, calls, plan)
        if self.second_order:
            evidence = [
                layer._replace(output=out, output_gradients=[grads[i] for grads in raw_per_target])
                for i, (layer, out) in enumerate(zip(evidence, outputs))
            ]
        return evidence, multi

    def _per_layer(
        self,
        x: Tensor,
        activations: list[Tensor],
        per_target: list[list[Tensor]],
        indices: Tensor | None,
        output: Any,
        calls: list[int],
        plan: ForwardPlan | None,
    ) -> list[LayerEvidence]:
        """:class:`LayerEvidence` per layer from per-layer activations and per-target gradients."""
        logits = model_logits(output)
        logits = logits.detach() if isinstance(logits, Tensor) and logits.dim() == 2 else None
        return [
            LayerEvidence(x, layer, a, [grads[i] for grads in per_target], indices, logits, count, plan)
            for i, (layer, a, count) in enumerate(zip(self.layers, activations, calls))
        ]

    def _evidence_without_gradients(
        self, x: Tensor, targets: Targets, plan: ForwardPlan | None
    ) -> tuple[list[LayerEvidence], bool]:
        """:meth:`_evidence` of a forward pass without gradients, for methods that weight the channels
        by forward passes (or by nothing but the activations)."""
        with capture_outputs(self.layers) as captured:
            output = self.model(x)
            check_aliases()
            outputs = [self._layer_output(layer, captured[id(layer.module)]) for layer in self.layers]
        indices, multi = self._class_indices(output, targets, x.shape[0])
        dtype = map_dtype(x.dtype)
        activations = [self._channel_maps(out, layer.name).to(dtype) for layer, out in zip(self.layers, outputs)]
        calls = [len(captured[id(layer.module)]) for layer in self.layers]
        return self._per_layer(x, activations, [], indices, output, calls, plan), multi

    def _class_indices(self, output: Any, targets: Targets, batch: int) -> tuple[Tensor, bool]:
        """The class indices ``[n, T]`` a forward pass without gradients explains, and whether T classes
        per image were asked for, from the model's output on the chunk."""
        logits = model_logits(output)
        if not self.class_specific:
            if targets is None or (callable(targets) and not isinstance(targets, Tensor)):
                return torch.zeros(batch, 1, dtype=torch.long), False
            # The classes do not change the map, but a class the model does not have is still a
            # mistake: checked against [N, classes] logits (any other output: the form only).
            classes = logits.shape[1] if isinstance(logits, Tensor) and logits.dim() == 2 else None
            return class_indices(targets, batch, classes)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            described = f"shape {list(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
            raise TypeError(
                f"the model output ({described}) is not [N, classes] logits; {type(self).__name__} weighs "
                "channels by class scores, so it explains classifiers"
            )
        _, multi, indices = resolve_targets(output, targets, batch)
        return indices, multi

    def _functional_evidence(
        self, x: Tensor, targets: Targets, create_graph: bool, plan: ForwardPlan | None
    ) -> tuple[list[LayerEvidence], bool]:
        """:meth:`_evidence` in code that torch.compile traces without tracing ``torch.autograd.grad``
        (a user's own ``torch.compile``): the gradient to a layer's output is the gradient of the
        scores to a zero added to it, taken by ``torch.func.vjp``. A first forward pass without
        gradients gives the outputs' shapes; nothing uses its results, so the compiled code drops it."""
        if self.second_order:
            raise RuntimeError(
                f"{type(self).__name__}: its second-order gradients cannot be traced inside your own "
                "torch.compile; use explainer.compiled() (or call it outside the compiled region)"
            )
        x = x.detach()
        with torch.no_grad(), capture_outputs(self.layers) as probe:
            self.model(x)
        calls, counts = [], []
        for layer in self.layers:
            outputs = probe[id(layer.module)]
            self._layer_output(layer, outputs)  # the layer ran, and the call exists
            calls.append(0 if layer.call is None else layer.call % len(outputs))
            counts.append(len(outputs))
        zeros = [torch.zeros_like(probe[id(layer.module)][call]) for layer, call in zip(self.layers, calls)]
        asked_for_several: list[bool] = []

        def scores_of(deltas: list[Tensor]) -> tuple[Tensor, tuple[list[Tensor], Tensor | None, Any]]:
            at_calls: dict[int, dict[int, Tensor]] = {}  # module -> call -> delta (a module may be named twice)
            for layer, delta, call in zip(self.layers, deltas, calls):
                at_calls.setdefault(id(layer.module), {})[call] = delta
            substitutes = {key: _adding_at_calls(deltas_by_call) for key, deltas_by_call in at_calls.items()}
            with capture_outputs(self.layers, substitutes) as captured:
                output = self.model(x)
                scores, multi, indices = resolve_targets(output, targets, x.shape[0])
            asked_for_several.append(multi)
            logits = model_logits(output)
            logits = logits if isinstance(logits, Tensor) else None
            layer_outputs = [captured[id(layer.module)][call] for layer, call in zip(self.layers, calls)]
            # torch.func's auxiliary outputs are tensors: an empty one stands for None (a callable target)
            empty = scores.new_zeros(0)
            return scores, (layer_outputs, empty if indices is None else indices, empty if logits is None else logits)

        with torch.enable_grad():
            scores, vjp, (outputs, indices, logits) = torch.func.vjp(scores_of, zeros, has_aux=True)
            indices = None if indices.numel() == 0 else indices
            logits = None if logits.numel() == 0 else logits
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
        return self._per_layer(x, activations, per_target, indices, logits, counts, plan), asked_for_several[0]

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

    def _fuse(self, per_layer: list[Tensor], size: tuple[int, int], multi: bool) -> Tensor:
        """ReLU, Up and norm per layer; with several layers, the mean of those (the product with
        ``layer_fusion = "product"``), normalised again."""
        batch, count = per_layer[0].shape[:2]
        if multi:
            check_output_size(f"targets ({count} per image)", batch * count, *size)
        maps = [cam_postprocess(m.reshape(batch * count, *m.shape[2:]), size) for m in per_layer]
        combined = torch.stack(maps).prod(0) if self.layer_fusion == "product" else torch.stack(maps).mean(0)
        fused = maps[0] if len(maps) == 1 else cam_postprocess(combined, size, relu=False)
        fused = fused.reshape(batch, count, *size)
        return fused if multi else fused[:, 0]
