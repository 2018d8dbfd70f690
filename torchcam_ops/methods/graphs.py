"""Explainer calls as compiled graphs and replayable CUDA graphs.

An explainer call reads no device data on the host and changes no shared state, so the whole call,
forward pass, gradients and map arithmetic, can be traced by ``torch.compile(fullgraph=True)`` and
captured in a CUDA graph. Torch traces ``torch.autograd.grad`` only with
``torch._dynamo.config.trace_autograd_ops = True`` (off by default in torch 2.15): :func:`compiled`
sets it for the calls it makes; a plain ``torch.compile(lambda x, t: explainer(x, t), fullgraph=True)``
works once the user has set it and, with a torch.compile that cannot trace ``requires_grad_`` (torch
2.11), passes an ``x`` that requires grad (:func:`graph_input`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


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
    return x.detach().requires_grad_(True)


def compiled(explainer: Callable[..., Any], **compile_options: Any) -> Callable[..., Any]:
    """``torch.compile`` of ``explainer``'s call, ``fullgraph=True`` unless given otherwise, with the
    tracing of ``torch.autograd.grad`` switched on for its own compilations only. Same arguments and
    results as the explainer; a new shape or dtype compiles once more."""
    compile_options.setdefault("fullgraph", True)
    function = torch.compile(lambda *args, **kwargs: explainer(*args, **kwargs), **compile_options)

    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, Tensor):
            # a fresh leaf, made outside the graph: older torch.compile cannot trace requires_grad_
            x = x.detach().requires_grad_(True)
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return function(x, *args, **kwargs)

    return call


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
    """``compiled()`` and ``graphed()`` for an explainer class (a mixin)."""

    def compiled(self, **compile_options: Any) -> Callable[..., Any]:
        """This explainer's call through ``torch.compile`` (``fullgraph=True``); see :func:`compiled`."""
        return compiled(self, **compile_options)  # type: ignore[arg-type]

    def graphed(self, example_x: Tensor, targets: Any = None, **call_options: Any) -> GraphedExplainer:
        """A replayable call for inputs like ``example_x`` and these targets: a CUDA graph on CUDA,
        the compiled call on the CPU (see :class:`GraphedExplainer`). ``call_options`` (``raw``,
        ``output_size``...) are fixed too."""
        return GraphedExplainer(self, example_x, targets, **call_options)  # type: ignore[arg-type]
