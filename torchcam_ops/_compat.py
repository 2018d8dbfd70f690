"""Every access to a private torch name, in one place, each with the torch versions it was checked on.

The package supports torch 2.6 (the oldest, ``./run oldest``) to the newest release; a name that a
torch version lacks is reported by the function that needs it, never by a silent fallback.
tests/test_compat.py runs each function on the torch of the test run.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor


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
