"""Explainer calls as compiled graphs and replayable CUDA graphs.

An explainer call reads no device data on the host and changes no shared state, so the whole call,
forward pass, gradients and map arithmetic, can be traced by ``torch.compile(fullgraph=True)`` and
captured in a CUDA graph. :func:`compiled` has the compiler trace ``torch.autograd.grad`` for the calls it
makes (``_compat.tracing_autograd``); in a user's own ``torch.compile``, which does not, the CAMs take
their gradients with ``torch.func`` while tracing (``BaseCAM._functional_evidence``).
"""

from __future__ import annotations

import functools
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from torchcam_ops import _compat
from torchcam_ops.methods.calls import check_input
from torchcam_ops.methods.capture import hook_held
from torchcam_ops.methods.layout import may_try_channels_last

Call = TypeVar("Call", bound=Callable[..., Any])


def graph_input(x: Tensor) -> Tensor:
    """Where an explainer's graph starts: a detached copy of ``x`` that requires grad, so that maps
    never carry gradients to the caller's tensor (or anything upstream of it) and the caller's
    tensor hooks never run.

    Inside a compiled region an ``x`` that already requires grad is used as is: torch.compile before
    torch 2.15 cannot trace ``requires_grad_``, so :func:`compiled` makes that fresh leaf before the
    region (and a plain ``torch.compile`` of an explainer on such a torch needs an ``x`` that requires
    grad, which the graph then starts from).
    """
    if torch.compiler.is_compiling() and x.requires_grad:
        return x
    if not torch.compiler.is_compiling() and x.is_inference():
        x = x.clone()  # an input made under torch.inference_mode() cannot take part in a graph as it is
    return x.detach().requires_grad_(True)


def compiler_traces_autograd() -> bool:
    """Whether this torch's compiler can trace ``torch.autograd.grad``, which every compiled explainer
    call needs: torch 2.11 and newer can, torch 2.6 (the oldest supported) cannot."""
    return _compat.compiler_traces_autograd()


def _require_compiler_tracing_autograd() -> None:
    if not compiler_traces_autograd():
        raise RuntimeError(
            f"compiled explainer calls need a torch.compile that traces torch.autograd.grad, which torch "
            f"{torch.__version__} cannot (no torch._dynamo.config.trace_autograd_ops): call the explainer "
            "itself, or install a newer torch"
        )


def compiled(explainer: Callable[..., Any], **compile_options: Any) -> Callable[..., Any]:
    """``torch.compile`` of ``explainer``'s call, ``fullgraph=True`` unless given otherwise, with the
    tracing of ``torch.autograd.grad`` switched on for its own compilations only. Same arguments and
    results as the explainer; a new shape or dtype (or number of targets per image) compiles once more:
    ``dynamic`` defaults to False, because torch cannot trace ``torch.autograd.grad`` over symbolic
    shapes. Once the compiler's recompile limit is reached, calls that would compile again run eagerly,
    with one warning.

    A call that cannot be traced runs once more in eager mode, so that bad arguments raise the
    explainer's own error (``ValueError``, ``TypeError``) instead of the compiler's; if the eager
    call succeeds, the compiler's error (``torch._dynamo.exc.Unsupported``) is raised.

    Args:
        explainer: the explainer (any callable) to compile, e.g. a :class:`~torchcam_ops.methods.GradCAM`.
        **compile_options: keyword arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic``...);
            ``fullgraph`` defaults to True, ``dynamic`` to False.

    Returns:
        A function with the explainer's arguments and results. Its first tensor argument (the input x)
        enters the compiled code as a fresh detached leaf that requires grad.

    Raises:
        ValueError, TypeError: a call of the returned function cannot be traced and its eager rerun
            refuses the arguments (the explainer's own errors).
        torch._dynamo.exc.Unsupported: a call of the returned function cannot be traced although its eager
            rerun succeeds.
        RuntimeError: this torch's compiler cannot trace ``torch.autograd.grad``
            (:func:`compiler_traces_autograd`).
    """
    _require_compiler_tracing_autograd()
    blocker = getattr(explainer, "_compile_blocker", None)
    reason = blocker() if blocker is not None else None
    if reason is not None:
        raise RuntimeError(reason)
    function = _traced(explainer, compile_options)
    warned = False

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal warned
        try:
            return function(*args, **kwargs)
        except _compat.recompile_limit_hit():
            if not warned:
                warned = True
                warnings.warn(
                    "compiled explainer: the compiler's recompile limit is reached "
                    "(torch._dynamo.config.recompile_limit); calls that would compile again run eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return explainer(*args, **kwargs)
        except _compat.compiler_unsupported():
            explainer(*args, **kwargs)
            raise

    return call


def _traced(explainer: Callable[..., Any], compile_options: dict[str, Any]) -> Callable[..., Any]:
    compile_options = {"fullgraph": True, "dynamic": False, **compile_options}
    function = torch.compile(_own_code(lambda *args, **kwargs: explainer(*args, **kwargs)), **compile_options)

    def call(*args: Any, **kwargs: Any) -> Any:
        # The first tensor argument is the input x: a fresh leaf, made outside the graph (older
        # torch.compile cannot trace requires_grad_).
        args = list(args)
        for i, value in enumerate(args):
            if isinstance(value, Tensor):
                args[i] = value.detach().requires_grad_(True)
                break
        with _compat.tracing_autograd(), hook_held():
            return function(*args, **kwargs)

    return call


def _own_code(function: types.FunctionType) -> types.FunctionType:
    """``function`` with a code object of its own. torch.compile keeps its compiled entries, and
    counts recompilations against ``recompile_limit`` (8), per code object: without this, every
    explainer compiled in a process would share one code object, and the ninth explainer (another
    layer, method or model) would fail with ``FailOnRecompileLimitHit`` under ``fullgraph=True``."""
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


def split_compiled(model: nn.Module) -> tuple[nn.Module, dict[str, Any] | None]:
    """The eager module behind ``torch.compile(model)`` and the options to compile explainer calls
    with: the model's own backend (with its mode and options) and ``dynamic`` setting (or, with a
    warning that says why, the default compiler when this torch keeps them elsewhere). For a model that
    is not compiled (or a compiled one on a torch whose compiler cannot trace ``torch.autograd.grad``,
    with a warning): the model itself and None.

    Hooks and gradients with respect to a layer's output need the layer to run in the explainer's own
    graph, so an explainer of a compiled model does not call the model's compiled code as it is: it
    compiles its whole call, the model's forward included, with the same compiler."""
    if _compat.is_compiled_in_place(model):
        raise ValueError(
            "model: compiled in place (model.compile()); its forward then runs as one compiled graph that "
            "no layer output can be taken from: pass torch.compile(model) or the model itself"
        )
    if not _compat.is_compiled_module(model):
        return model, None
    module, options, unreadable = _compat.compiled_module_parts(model)
    if not compiler_traces_autograd():
        warnings.warn(
            f"model: compiled, but torch {torch.__version__} cannot compile an explainer's gradients "
            "(no torch._dynamo.config.trace_autograd_ops): explaining its eager module",
            RuntimeWarning,
            stacklevel=4,
        )
        return module, None
    if unreadable is not None:
        warnings.warn(
            f"model: compiled, but its compile options cannot be read ({unreadable}): explainer calls "
            "compile with torch.compile's default backend",
            RuntimeWarning,
            stacklevel=4,
        )
        return module, {}
    return module, options


def explainer_call(call: Call) -> Call:
    """Marks an explainer's ``__call__``: for an explainer of a ``torch.compile``d model, the call
    runs compiled (:meth:`Graphable._call_compiled`) unless it is already being traced."""

    @functools.wraps(call)
    def dispatch(self: Graphable, *args: Any, **kwargs: Any) -> Any:
        if self._model_compile_options is None or torch.compiler.is_compiling() or not self.compiles_whole_call:
            return call(self, *args, **kwargs)
        if args:  # bad input is refused before compiling, with the eager call's errors
            check_input(args[0])
        return self._call_compiled(call, *args, **kwargs)

    return dispatch  # type: ignore[return-value]


class GraphedExplainer:
    """A replayable explainer call for one input shape, dtype and device, and fixed targets.

    On CUDA the call is captured once in a CUDA graph: each call copies the new input into the
    graph's static input buffer, replays, and returns a copy of the static output (bitwise what the
    eager call returns for that input). On the CPU the call is the compiled one (:func:`compiled`).
    An input of another shape, dtype or device raises ``ValueError``: make a new graphed call for it.
    """

    def __init__(
        self, explainer: Callable[..., Any], example_x: Tensor, targets: Any = None, **call_options: Any
    ) -> None:
        if not isinstance(example_x, Tensor):
            raise TypeError(f"example_x: expected a tensor, got {type(example_x).__name__}")
        if callable(targets) and not isinstance(targets, Tensor):
            raise TypeError("targets: a graphed call needs fixed targets (None, ints or a tensor), not a callable")
        if call_options.get("create_graph"):
            raise ValueError(
                "create_graph: a graphed call's outputs live in buffers the next replay overwrites; "
                "call the explainer itself for maps that carry gradients"
            )
        if isinstance(targets, Tensor) and targets.device != example_x.device:
            raise ValueError(
                f"targets: expected a tensor on {example_x.device} (the input's device), got {targets.device}"
            )
        if targets is not None and not isinstance(targets, Tensor):
            # Python ints become a device tensor once here: a host-to-device copy during capture would
            # synchronise, which CUDA graph capture forbids.
            targets = torch.as_tensor(targets, dtype=torch.long).to(example_x.device)
        self.shape, self.dtype, self.device = tuple(example_x.shape), example_x.dtype, example_x.device
        self._explainer, self._targets, self._options = explainer, targets, call_options
        if self.device.type == "cuda":
            self._static_x = example_x.detach().clone()
            self._graph = self._capture()
        else:
            self._function = compiled(explainer)

    def _capture(self) -> torch.cuda.CUDAGraph:
        # Warm-up on a side stream (lazy initialisation, cuDNN/cuBLAS workspaces, autotuning) so
        # that the capture records only the steady-state kernels.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._explainer(self._static_x, self._targets, **self._options)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._explainer(self._static_x, self._targets, **self._options)
        return graph

    def __call__(self, x: Tensor) -> Any:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
        if tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device != self.device:
            raise ValueError(
                f"x: this graphed call was made for {list(self.shape)} {self.dtype} on {self.device}, "
                f"got {list(x.shape)} {x.dtype} on {x.device}; make a new graphed call for it"
            )
        if self.device.type != "cuda":
            return self._function(x, self._targets, **self._options)
        self._static_x.copy_(x)
        self._graph.replay()
        if isinstance(self._static_out, Tensor):
            return self._static_out.clone()
        return [out.clone() for out in self._static_out]


class Graphable:
    """``compiled()`` and ``graphed()`` for an explainer class (a mixin), and the compiled calls of
    an explainer whose model was given compiled (:func:`split_compiled`, :func:`explainer_call`)."""

    model: nn.Module
    _model_compile_options: dict[str, Any] | None = None
    #: The compiled form of each function that :meth:`_call_compiled` compiled, by that function.
    _compiled_calls: dict[Callable[..., Any], Callable[..., Any]]
    _compiled_forward: Callable[..., Any] | None = None
    #: A declared trait: whether a whole call compiles with a compiled model. Explainers that run many
    #: forward passes per call (path points, masked images) say no: one graph of all of them takes
    #: minutes to compile and recompiles for every batch size, so they compile one forward pass at a
    #: time (:meth:`BaseCAM._forward_maps`, :meth:`_model_forward`).
    compiles_whole_call: bool = True

    def _bind_model(self, model: nn.Module) -> None:
        """``self.model``: the eager module; a compiled model's compile options are kept (see
        :attr:`compiles_whole_call` for what they compile)."""
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError(
                "model: a TorchScript module runs its forward in TorchScript, where layer outputs cannot be "
                "recorded nor backward rules applied: pass the eager module"
            )
        self.model, self._model_compile_options = split_compiled(model)
        self._compiled_calls, self._compiled_forward = {}, None
        self._compile_lock = threading.Lock()

    def _model_forward(self) -> Callable[..., Any]:
        """The model's forward for plain forward passes that take no layer output (Abs-CAM's masked
        images): compiled with the model's own options when the model was given compiled."""
        if self._model_compile_options is None or torch.compiler.is_compiling():
            return self.model
        with self._compile_lock:
            if self._compiled_forward is None:
                # a function, not torch.compile(module): no OptimizedModule (which warns about the
                # capture hook), no reference to this explainer (which would make a cycle)
                model = self.model
                self._compiled_forward = torch.compile(_own_code(lambda x: model(x)), **self._model_compile_options)
            return self._compiled_forward

    def _model_forward_may_try_channels_last(self, device: torch.device) -> bool:
        """Whether :meth:`_model_forward` may be tried on channels-last images on ``device``
        (:func:`~torchcam_ops.methods.layout.may_try_channels_last`), not with a compiled model: its
        graph would recompile for the new strides."""
        return self._model_compile_options is None and may_try_channels_last(self.model, device)

    def _call_compiled(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(self, ...)`` compiled with the model's compile options. A model that cannot be
        traced as one graph with the explainer (a graph break in its forward) or that reaches the
        recompile limit is explained with its eager module from then on, with a warning that says
        why; a callable target that cannot be traced runs that call eagerly."""
        reason = self._compile_blocker()
        if reason is not None:
            warnings.warn(f"{reason}: explaining its eager module from now on", RuntimeWarning, stacklevel=3)
            with self._compile_lock:
                self._model_compile_options, self._compiled_calls = None, {}
            return call(self, *args, **kwargs)
        with self._compile_lock:
            compiled_call = self._compiled_calls.get(call)
            if compiled_call is None:
                compiled_call = self._compiled_calls[call] = _traced(call, self._model_compile_options)
        try:
            result = compiled_call(self, *args, **kwargs)
        except (_compat.compiler_unsupported(), _compat.recompile_limit_hit()) as error:
            result = call(self, *args, **kwargs)  # bad arguments raise their own error here
            reason = str(error).strip().splitlines()[0]
            targets = args[1] if len(args) > 1 else kwargs.get("targets")
            if callable(targets) and not isinstance(targets, Tensor):
                warnings.warn(
                    f"{type(self).__name__}: this call, with a callable target, cannot be traced ({reason}); "
                    "it ran with the eager module",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return result
            warnings.warn(
                f"{type(self).__name__}: the compiled model cannot be explained in compiled code ({reason}); "
                "explaining its eager module from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            with self._compile_lock:
                self._model_compile_options, self._compiled_calls = None, {}
            return result
        # Outputs of a CUDA-graphed compilation (mode="reduce-overhead") live in buffers that the
        # next call overwrites: the caller gets maps of its own.
        return _compat.map_tensors(torch.Tensor.clone, result)

    def _compile_blocker(self) -> str | None:
        """Why this explainer's calls cannot be compiled, or None."""
        return None

    def __getstate__(self) -> dict[str, Any]:
        # a compiled function (or a lock) neither pickles nor belongs to a copy: the copy makes its own
        return {**self.__dict__, "_compiled_calls": {}, "_compiled_forward": None, "_compile_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile_lock = threading.Lock()

    def compiled(self, **compile_options: Any) -> Callable[..., Any]:
        """This explainer's call through ``torch.compile`` (``fullgraph=True``); see :func:`compiled`."""
        return compiled(self, **compile_options)  # type: ignore[arg-type]

    def graphed(self, example_x: Tensor, targets: Any = None, **call_options: Any) -> GraphedExplainer:
        """A replayable call for inputs like ``example_x`` and these targets: a CUDA graph on CUDA,
        the compiled call on the CPU (see :class:`GraphedExplainer`). ``call_options`` (``raw``,
        ``output_size``...) are fixed too."""
        return GraphedExplainer(self, example_x, targets, **call_options)  # type: ignore[arg-type]


class GraphableWrapper:
    """``compiled()`` and ``graphed()`` for an explainer built on another (``self.base``: Refine-CAM,
    SESS): the wrapper's whole call is compiled, and what keeps the base from compiling keeps it too."""

    base: Graphable

    def _compile_blocker(self) -> str | None:
        return self.base._compile_blocker()

    def compiled(self, **compile_options: Any) -> Callable[..., Any]:
        """This explainer's call through ``torch.compile`` (``fullgraph=True``); see :func:`compiled`."""
        return compiled(self, **compile_options)  # type: ignore[arg-type]

    def graphed(self, example_x: Tensor, targets: Any = None, **call_options: Any) -> GraphedExplainer:
        """A replayable call for inputs like ``example_x`` and these targets (see :class:`GraphedExplainer`)."""
        return GraphedExplainer(self, example_x, targets, **call_options)  # type: ignore[arg-type]
