"""Target-layer outputs for one explainer call, recorded for the calling thread only.

An explainer call is a pure function of (model, x, targets) (``docs/design.md``): it adds no hook to
the user's modules and changes none of their attributes. Layer outputs are recorded by one
process-wide forward hook (:func:`torch.nn.modules.module.register_module_forward_hook`), held while
at least one explainer is open, that does nothing unless the calling thread (or the call that
``torch.compile`` is tracing) is capturing that very module. So two threads explaining one model
never see each other's outputs, and a model can be pickled or copied while explainers exist.

What is recorded is the layer's own output, every time the layer runs in the call. The layers after
it receive a copy, so an in-place operation downstream (``nn.ReLU(inplace=True)``, DenseNet's
``F.relu(..., inplace=True)``) changes the copy, never the recorded activations or the tensor the
gradient is taken with respect to.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

#: What the layers after a captured layer receive instead of a copy of its output: ``(output, call
#: index) -> tensor`` (Ablation-CAM's ablated channels).
Substitute = Callable[[Tensor, int], Tensor]
#: The capture of the calling thread: id(module) -> (layer name, outputs recorded in this call, substitute).
_thread_state = threading.local()
#: The capture of the explainer call that torch.compile is tracing (tracing runs in one thread).
_traced_capture: dict[int, tuple[str, list[Tensor], Substitute | None]] | None = None

# Re-entrant: an explainer collected by the garbage collector inside open_explainer() releases its
# hold from the same thread.
_registration_lock = threading.RLock()
_open_explainers = 0
_hook_handle: Any = None


def _record_output(module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
    capture = _traced_capture if torch.compiler.is_compiling() else getattr(_thread_state, "capture", None)
    if capture is None:
        return None
    entry = capture.get(id(module))
    if entry is None:
        return None
    name, outputs, substitute = entry
    if not isinstance(output, Tensor):
        raise TypeError(f"target layer {name!r} returned {type(output).__name__}; a CAM needs a tensor output")
    outputs.append(output)
    return output.clone() if substitute is None else substitute(output, len(outputs) - 1)


def open_explainer() -> None:
    """Registers the process-wide hook if no explainer holds it yet (pair with :func:`close_explainer`)."""
    global _open_explainers, _hook_handle
    with _registration_lock:
        _open_explainers += 1
        if _hook_handle is None:
            _hook_handle = register_module_forward_hook(_record_output)


def close_explainer() -> None:
    """Releases one explainer's hold on the hook; the last one removes it."""
    global _open_explainers, _hook_handle
    with _registration_lock:
        _open_explainers = max(_open_explainers - 1, 0)
        if _open_explainers == 0 and _hook_handle is not None:
            _hook_handle.remove()
            _hook_handle = None


def hook_is_registered() -> bool:
    return _hook_handle is not None


class ExplainerHold:
    """The hold of one explainer object on the process-wide hook: taken at construction, given back
    by :meth:`release` (``close()``, the end of a ``with`` block) or when the explainer is garbage
    collected, whichever comes first."""

    def __init__(self) -> None:
        open_explainer()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            close_explainer()

    # A copied or unpickled explainer (an explainer stored on a module that is deep-copied, e.g. by
    # AveragedModel) takes a hold of its own instead of sharing, and later releasing, this one.
    def __copy__(self) -> ExplainerHold:
        return ExplainerHold()

    def __deepcopy__(self, memo: dict) -> ExplainerHold:
        return ExplainerHold()

    def __reduce__(self):
        return (ExplainerHold, ())

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the module globals may already be gone
            pass


@contextlib.contextmanager
def capture_outputs(
    layers: Sequence[tuple[str, nn.Module, Any]], substitutes: dict[int, Substitute] | None = None
) -> Iterator[dict[int, list[Tensor]]]:
    """Records, for the calling thread, every output of each layer ``(name, module, ...)`` while the
    block runs: ``{id(module): [output of its first call, ...]}``. The layers after it receive a copy
    of the output, or what ``substitutes[id(module)](output, call index)`` returns. An explainer must
    be open (see :class:`ExplainerHold`)."""
    global _traced_capture
    substitutes = substitutes or {}
    capture = {id(layer[1]): (layer[0], [], substitutes.get(id(layer[1]))) for layer in layers}
    recorded = {key: outputs for key, (_, outputs, _) in capture.items()}
    if torch.compiler.is_compiling():
        previous, _traced_capture = _traced_capture, capture
        try:
            yield recorded
        finally:
            _traced_capture = previous
    else:
        if not hook_is_registered():
            raise RuntimeError("capture_outputs: no explainer is open (the explainer was closed)")
        previous = getattr(_thread_state, "capture", None)
        _thread_state.capture = capture
        try:
            yield recorded
        finally:
            _thread_state.capture = previous
