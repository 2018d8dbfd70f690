"""Every access to a private torch name, in one place, each with the torch versions it was checked on.

The package supports torch 2.6 (the oldest, ``./run oldest``) to the newest release; a name that a
torch version lacks is reported by the function that needs it, never by a silent fallback.
tests/test_compat.py runs each function on the torch of the test run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def global_forward_hooks() -> MutableMapping[int, Callable[..., Any]]:
    """The process-wide forward hooks, in the order they run, by handle id: what
    ``torch.nn.modules.module.register_module_forward_hook`` adds to. Writing to it directly (not
    through the handle) is what ``torch.compile`` can trace (torch 2.11-2.15; torch 2.6 cannot)."""
    return torch.nn.modules.module._global_forward_hooks


def aliases(output: Tensor, inputs: Sequence[Any]) -> bool:
    """Whether ``output`` is one of the tensors in ``inputs`` or a view sharing its base (``nn.Identity``,
    a reshape): then an in-place change of that input later in the forward pass changes the output too."""
    base = output._base if output._base is not None else output
    for value in inputs:
        if isinstance(value, Tensor):
            if value is output or (value._base if value._base is not None else value) is base:
                return True
    return False


def version(tensor: Tensor) -> int:
    """The tensor's version counter: how many in-place changes it has had (``Tensor._version``)."""
    return tensor._version


# -- torch.compile ------------------------------------------------------------------------------


def compiler_traces_autograd() -> bool:
    """Whether this torch's compiler can trace ``torch.autograd.grad`` (the dynamo config
    ``trace_autograd_ops``, torch 2.11-2.15; torch 2.6 lacks it), which every compiled explainer call
    needs."""
    return hasattr(torch._dynamo.config, "trace_autograd_ops")


def autograd_is_traced() -> bool:
    """Whether the compiler traces ``torch.autograd.grad`` now (``trace_autograd_ops`` set, as
    :func:`tracing_autograd` does; off in a user's own ``torch.compile`` by default)."""
    return bool(getattr(torch._dynamo.config, "trace_autograd_ops", False))


def tracing_autograd() -> contextlib.AbstractContextManager[Any]:
    """A block in which the compiler traces ``torch.autograd.grad`` (for the compilations the package
    starts itself; a user's own ``torch.compile`` is not changed)."""
    return torch._dynamo.config.patch(trace_autograd_ops=True)


def compiler_unsupported() -> type[Exception]:
    """The compiler's error for code it cannot trace as one graph (torch 2.6-2.15)."""
    return torch._dynamo.exc.Unsupported


def recompile_limit_hit() -> type[Exception]:
    """The compiler's error when a function reached its recompile limit under ``fullgraph=True`` or
    ``dynamic=False`` (torch 2.6-2.15)."""
    return torch._dynamo.exc.FailOnRecompileLimitHit


def is_compiled_in_place(model: nn.Module) -> bool:
    """Whether ``model.compile()`` was called: its ``__call__`` then runs one compiled graph."""
    return getattr(model, "_compiled_call_impl", None) is not None


def is_compiled_module(model: nn.Module) -> bool:
    """Whether ``model`` is the module ``torch.compile(module)`` returns (``OptimizedModule``)."""
    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule)


def compiled_module_parts(model: nn.Module) -> tuple[nn.Module, dict[str, Any] | None, str | None]:
    """For ``torch.compile(module)``: the eager module, the options it was compiled with (``backend``
    with its mode and options, ``dynamic``), and why the options could not be read (None when they
    could; then the options are None too)."""
    module = model._orig_mod
    context = getattr(model, "dynamo_ctx", None)
    try:
        backend = torch._dynamo.eval_frame.innermost_backend(context.callback)
        dynamic = bool(context._dynamic)
    except AttributeError as error:
        return module, None, f"torch {torch.__version__} keeps a compiled module's options elsewhere ({error})"
    return module, {"backend": backend, "dynamic": dynamic}, None


# -- trees and checks ---------------------------------------------------------------------------


def flatten_tree(tree: Any) -> tuple[list[Any], Any]:
    """The leaves of nested tuples, lists and dicts, and their structure (comparable with ``==``)."""
    return torch.utils._pytree.tree_flatten(tree)


def map_tensors(function: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """``tree`` with ``function`` applied to every tensor leaf."""
    return torch.utils._pytree.tree_map_only(Tensor, function, tree)


def assert_async(ok: Tensor, message: str) -> None:
    """Raises ``RuntimeError(message)`` on the device when ``ok`` is False, without a host read."""
    torch._assert_async(ok, message)


# -- autograd with the calling thread's torch-function modes kept active -------------------------

_AUTOGRAD_CALLS: tuple[Callable[..., Any], ...] = (torch.autograd.grad, torch.autograd.backward, Tensor.backward)


def is_autograd_call(func: Any) -> bool:
    """Whether ``func`` is ``torch.autograd.grad``, ``torch.autograd.backward`` or ``Tensor.backward``."""
    return func in _AUTOGRAD_CALLS  # every op a rules mode sees asks this first: a tuple test, no loop


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, Tensor) else tuple(value)


def _implicit_grads(outputs: tuple, grads: tuple) -> tuple:
    if not grads:
        grads = (None,) * len(outputs)
    if len(grads) != len(outputs):
        raise RuntimeError(f"expected one gradient per output, got {len(grads)} for {len(outputs)} outputs")
    made = []
    for output, grad in zip(outputs, grads):
        if grad is None:
            if output.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            grad = torch.ones_like(output, memory_format=torch.preserve_format)
        made.append(grad)
    return tuple(made)


def run_autograd_in_modes(func: Callable[..., Any], args: tuple, kwargs: dict | None) -> Any:
    """``func(*args, **kwargs)`` for one of :func:`is_autograd_call`'s functions, run by autograd's engine
    directly so that the calling thread's torch-function modes stay active during the backward: a
    ``TorchFunctionMode`` is handed these calls with itself switched off, and a non-reentrant activation
    checkpoint recomputes its forward pass during the backward (``torch.autograd.graph._engine_run_backward``,
    torch 2.6-2.15). The options training code passes are supported (gradients, ``retain_graph``,
    ``create_graph``, ``inputs``, ``allow_unused``); calls with others (``is_grads_batched``,
    ``materialize_grads``, gradient edges) run as they are."""
    import inspect

    bound = inspect.signature(func).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    a = bound.arguments
    if func is Tensor.backward:
        outputs, grads, inputs = (a["self"],), _as_tuple(a["gradient"]), _as_tuple(a["inputs"])
    elif func is torch.autograd.backward:
        if a.get("grad_variables") is not None:
            return func(*args, **(kwargs or {}))
        outputs, grads, inputs = _as_tuple(a["tensors"]), _as_tuple(a["grad_tensors"]), _as_tuple(a["inputs"])
    else:
        if a.get("is_grads_batched") or a.get("materialize_grads"):
            return func(*args, **(kwargs or {}))
        outputs, grads, inputs = _as_tuple(a["outputs"]), _as_tuple(a["grad_outputs"]), _as_tuple(a["inputs"])
    if not all(isinstance(t, Tensor) for t in (*outputs, *inputs)):
        return func(*args, **(kwargs or {}))
    create_graph = bool(a["create_graph"])
    retain_graph = create_graph if a["retain_graph"] is None else a["retain_graph"]
    grads = _implicit_grads(outputs, grads)
    if func is torch.autograd.grad:
        allow_unused = bool(a.get("allow_unused") or False)
        return torch.autograd.graph._engine_run_backward(
            outputs, grads, retain_graph, create_graph, inputs, allow_unused, accumulate_grad=False
        )
    torch.autograd.graph._engine_run_backward(
        outputs, grads, retain_graph, create_graph, inputs, allow_unreachable=True, accumulate_grad=True
    )
    return None
