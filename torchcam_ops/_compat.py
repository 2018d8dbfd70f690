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


def grad_in_current_modes(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    retain_graph: bool,
) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` without passing through the torch-function modes of the calling thread.

    ``torch.autograd.grad`` hands itself to the innermost ``TorchFunctionMode``, which runs it with the
    mode switched off; a non-reentrant activation checkpoint then recomputes its forward pass during
    the backward without the mode's rules. Running the engine directly keeps every mode active for the
    recomputation (``torch.autograd.graph._engine_run_backward``, torch 2.6-2.15)."""
    return torch.autograd.graph._engine_run_backward(
        tuple(outputs),
        tuple(grad_outputs),
        retain_graph,
        False,  # create_graph
        tuple(inputs),
        False,  # allow_unused
        accumulate_grad=False,
    )


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
