"""Target-layer outputs for one explainer call, recorded for the calling thread only.

An explainer call is a pure function of (model, x, targets) (``docs/design.md``): it adds no hook to
the user's modules and changes none of their attributes. Layer outputs are recorded by one
process-wide forward hook, present only while at least one explainer call is running (so code outside
the calls pays nothing: no hook slows other forward passes, no compiled module warns about global
hooks), that does nothing unless the calling thread (or the call that ``torch.compile`` is tracing) is
capturing that very module. It is added after every global hook the process has when the first call
starts, so a user's global hook that edits a layer's output is seen by the map. Two threads explaining
one model never see each other's outputs, and a model can be pickled or copied meanwhile.

What is recorded is the layer's own output, every time the layer runs in the call. The layers after
it receive a copy, so an in-place operation downstream (``nn.ReLU(inplace=True)``, DenseNet's
``F.relu(..., inplace=True)``) changes the copy, never the recorded activations or the tensor the
gradient is taken with respect to. An output that aliases the layer's input (``nn.Identity``, a
reshape) is copied too; if the model then changes the original in place (which the layers after it
would have seen through the alias), the call is refused: its forward pass was not the model's own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchcam_ops import _compat

#: What the layers after a captured layer receive instead of a copy of its output: ``(output, call
#: index) -> tensor`` (Ablation-CAM's ablated channels).
Substitute = Callable[[Tensor, int], Tensor]


class _Capture:
    """What one call records: per module id, the layer name, its outputs and the substitute; and the
    outputs that alias the layer's input, with their version counters then."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module, Any]], substitutes: dict[int, Substitute]) -> None:
        self.layers = {id(layer[1]): (layer[0], [], substitutes.get(id(layer[1]))) for layer in layers}
        self.aliased: list[tuple[str, Tensor, int]] = []

    def record(self, module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        entry = self.layers.get(id(module))
        if entry is None:
            return None
        name, outputs, substitute = entry
        if not isinstance(output, Tensor):
            raise TypeError(f"target layer {name!r} returned {type(output).__name__}; a CAM needs a tensor output")
        outputs.append(output)
        if substitute is not None:
            return substitute(output, len(outputs) - 1)
        if not torch.compiler.is_compiling() and _compat.aliases(output, inputs):
            self.aliased.append((name, output, _compat.version(output)))
        return output.clone()

    def check_aliases_unchanged(self) -> None:
        for name, output, version in self.aliased:
            if _compat.version(output) != version:
                raise ValueError(
                    f"target layer {name!r} returns (a view of) its input, which the model changes in place "
                    "later in the forward pass: the layers after it received a copy taken before the change, "
                    "so the forward pass was not the model's own. Choose the layer that computes this tensor, "
                    "or one after the in-place change"
                )


_thread_state = threading.local()
#: The capture of the explainer call that torch.compile is tracing (tracing runs in one thread).
_traced_capture: _Capture | None = None


def _record_output(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
    capture = _traced_capture if torch.compiler.is_compiling() else getattr(_thread_state, "capture", None)
    return None if capture is None else capture.record(module, inputs, output)


_registration_lock = threading.Lock()
_running_calls = 0
# The hook's key among the global forward hooks: always the same (never a handle's new id), so that
# torch.compile's guards on the hooks hold from one call to the next; negative, so no handle has it.
_HOOK_KEY = -0x7C0A


def _acquire_hook() -> None:
    global _running_calls
    with _registration_lock:
        _running_calls += 1
        if _running_calls == 1:
            _compat.global_forward_hooks()[_HOOK_KEY] = _record_output


def _release_hook() -> None:
    global _running_calls
    with _registration_lock:
        _running_calls -= 1
        if _running_calls == 0:
            _compat.global_forward_hooks().pop(_HOOK_KEY, None)


def hook_is_registered() -> bool:
    """Whether the process-wide capture hook is present (only while explainer calls run)."""
    return _HOOK_KEY in _compat.global_forward_hooks()


def check_aliases() -> None:
    """Refuses, naming the layer, a call of the calling thread whose target layer returned (a view of)
    its input which the model then changed in place (see the module's docstring). Called right after
    the forward pass, so that this, not a missing gradient it causes, is the error; the end of
    :func:`capture_outputs` checks again."""
    capture = getattr(_thread_state, "capture", None)
    if capture is not None and not torch.compiler.is_compiling():
        capture.check_aliases_unchanged()


@contextlib.contextmanager
def hook_held() -> Iterator[None]:
    """The capture hook present while the block runs (for the eager code around a compiled call, so
    that the compiled code is traced with it)."""
    acquired = False
    try:
        _acquire_hook()
        acquired = True
        yield
    finally:
        if acquired:
            _release_hook()


@contextlib.contextmanager
def hook_present() -> Iterator[None]:
    """The capture hook present while the block runs, in eager code or in code torch.compile traces
    (where the hook's addition and removal are traced too); nothing to do when it is there already."""
    if not torch.compiler.is_compiling():
        with hook_held():
            yield
        return
    hooks = _compat.global_forward_hooks()
    added = _HOOK_KEY not in hooks
    if added:
        hooks[_HOOK_KEY] = _record_output
    try:
        yield
    finally:
        if added:
            hooks.pop(_HOOK_KEY, None)


@contextlib.contextmanager
def capture_outputs(
    layers: Sequence[tuple[str, nn.Module, Any]], substitutes: dict[int, Substitute] | None = None
) -> Iterator[dict[int, list[Tensor]]]:
    """Records, for the calling thread, every output of each layer ``(name, module, ...)`` while the
    block runs: ``{id(module): [output of its first call, ...]}``. The layers after it receive a copy
    of the output, or what ``substitutes[id(module)](output, call index)`` returns."""
    global _traced_capture
    capture = _Capture(layers, substitutes or {})
    recorded = {key: outputs for key, (_, outputs, _) in capture.layers.items()}
    if torch.compiler.is_compiling():
        previous, _traced_capture = _traced_capture, capture
        try:
            with hook_present():
                yield recorded
        finally:
            _traced_capture = previous
        return
    previous = getattr(_thread_state, "capture", None)
    with hook_held():
        _thread_state.capture = capture
        try:
            yield recorded
        finally:
            _thread_state.capture = previous
    capture.check_aliases_unchanged()
