"""Each private torch access of ``torchcam_ops._compat`` works on the torch of this run (the suite runs
on the newest torch and, in ``./run oldest``, on the oldest supported one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.overrides import TorchFunctionMode

from torchcam_ops import _compat


def test_global_forward_hooks_are_those_registered_in_order():
    def first(*_):
        return None

    def second(*_):
        return None

    handles = [register_module_forward_hook(first), register_module_forward_hook(second)]
    try:
        ours = [hook for hook in _compat.global_forward_hooks().values() if hook in (first, second)]
        assert ours == [first, second]
    finally:
        for handle in handles:
            handle.remove()
    assert first not in _compat.global_forward_hooks().values()


def test_aliases_tells_views_and_identities_from_copies():
    x = torch.rand(2, 3)
    assert _compat.aliases(x, (x,))
    assert _compat.aliases(x.view(3, 2), (x,))
    assert _compat.aliases(x[0], (x[1],))  # two views of one base
    assert not _compat.aliases(x.clone(), (x,))
    assert not _compat.aliases(x, (torch.rand(2, 3), "not a tensor"))


def test_version_counts_in_place_changes():
    x = torch.zeros(3)
    before = _compat.version(x)
    x.add_(1)
    assert _compat.version(x) == before + 1


class _CountingMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.convs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.conv2d:
            self.convs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("call", ["grad", "backward", "tensor_backward"])
def test_autograd_calls_run_with_the_mode_active_in_the_backward(call):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    seed = torch.rand(1, 4, 4, 4)
    (expected,) = torch.autograd.grad(conv(x), x, seed)
    mode = _CountingMode()
    with mode:
        y = torch.utils.checkpoint.checkpoint(conv, x, use_reentrant=False)
    func, args, kwargs = {
        "grad": (torch.autograd.grad, (y, x, seed), {}),
        "backward": (torch.autograd.backward, (y,), {"grad_tensors": seed, "inputs": [x]}),
        "tensor_backward": (torch.Tensor.backward, (y, seed), {"inputs": (x,)}),
    }[call]
    with mode:
        result = _compat.run_autograd_in_modes(func, args, kwargs)
    gradient = result[0] if call == "grad" else x.grad
    torch.testing.assert_close(gradient, expected)
    assert mode.convs == 2  # the forward, and its recomputation during the backward
    assert _compat.is_autograd_call(func) and not _compat.is_autograd_call(torch.conv2d)


def test_implicit_gradients_only_for_scalar_outputs():
    x = torch.rand(3, requires_grad=True)
    _compat.run_autograd_in_modes(torch.Tensor.backward, ((x * 2).sum(),), {})
    torch.testing.assert_close(x.grad, torch.full((3,), 2.0))
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        _compat.run_autograd_in_modes(torch.autograd.grad, (x * 2, x), {})


def test_the_compiler_names_are_those_of_this_torch():
    assert issubclass(_compat.compiler_unsupported(), Exception)
    assert issubclass(_compat.recompile_limit_hit(), Exception)
    assert _compat.compiler_traces_autograd() == hasattr(torch._dynamo.config, "trace_autograd_ops")
    model = nn.Linear(2, 2)
    assert not _compat.is_compiled_module(model) and not _compat.is_compiled_in_place(model)
    compiled = torch.compile(model, backend="eager", dynamic=True)
    assert _compat.is_compiled_module(compiled)
    module, options, unreadable = _compat.compiled_module_parts(compiled)
    assert module is model
    if _compat.compiler_traces_autograd():  # torch 2.11+: the options are read
        assert unreadable is None and options["dynamic"] is True and options["backend"] is not None
    else:  # torch 2.6 keeps them elsewhere; its compiled models are explained eagerly anyway
        assert options is None and "innermost_backend" in unreadable


def test_trees_and_device_assertions():
    leaves, structure = _compat.flatten_tree({"a": torch.ones(1), "b": [2, None]})
    assert len(leaves) == 3 and structure == _compat.flatten_tree({"a": 0, "b": [0, 0]})[1]
    doubled = _compat.map_tensors(lambda t: t * 2, {"a": torch.ones(1), "b": (3,)})
    assert doubled["a"].item() == 2 and doubled["b"] == (3,)
    _compat.assert_async(torch.tensor(True), "never raised")
