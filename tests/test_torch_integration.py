"""opcheck on every op, torch.compile(fullgraph=True) with Inductor, torch.export."""

from __future__ import annotations

import pytest
import torch

import torchcam_ops
from torchcam_ops import CAM_METHODS, cam_postprocess, cam_reduce

OPS = torch.ops.torchcam_ops


def _reduce_args(dtype=torch.float64, requires_grad=False, channels_last=False):
    a = torch.rand(2, 3, 5, 4, dtype=dtype) + 0.5
    g = torch.randn(2, 3, 5, 4, dtype=dtype)
    if channels_last:
        a, g = a.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
    return a.requires_grad_(requires_grad), g.requires_grad_(requires_grad)


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cam_reduce(method, requires_grad):
    a, g = _reduce_args(requires_grad=requires_grad)
    torch.library.opcheck(OPS.cam_reduce.default, (a, g, method))
    a, g = _reduce_args(dtype=torch.float32, requires_grad=requires_grad, channels_last=True)
    torch.library.opcheck(OPS.cam_reduce.default, (a, g, method))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_opcheck_cam_reduce_backward(method):
    a, g = _reduce_args()
    torch.library.opcheck(OPS.cam_reduce_backward.default, (torch.randn(2, 5, 4, dtype=torch.float64), a, g, method))


@pytest.mark.parametrize("relu,normalize", [(True, True), (False, False)])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cam_postprocess(relu, normalize, requires_grad):
    cam = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=requires_grad)
    torch.library.opcheck(OPS.cam_postprocess.default, (cam, 9, 7, relu, normalize))


def test_opcheck_cam_postprocess_backward():
    cam = torch.randn(3, 5, 4, dtype=torch.float64)
    grad = torch.randn(3, 9, 7, dtype=torch.float64)
    torch.library.opcheck(OPS.cam_postprocess_backward.default, (grad, cam, 9, 7, True, True))


def gradcam_pipeline(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # Ops and ordinary torch code mixed, as a method or a training loss would.
    maps = cam_postprocess(cam_reduce(a * 1.0, g, "gradcam++"), (32, 24))
    return maps * 2.0 - 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(gradcam_pipeline, fullgraph=True, backend="inductor", dynamic=dynamic)
    for batch in (2, 3):
        a, g = _reduce_args(dtype=torch.float32)
        a, g = a.repeat(batch, 1, 1, 1).requires_grad_(), g.repeat(batch, 1, 1, 1)
        eager_out = gradcam_pipeline(a, g)
        compiled_out = compiled(a, g)
        torch.testing.assert_close(compiled_out, eager_out)
        (eager_grad,) = torch.autograd.grad(eager_out.square().sum(), a)
        (compiled_grad,) = torch.autograd.grad(compiled_out.square().sum(), a)
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_compile_reports_bad_input_clearly():
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, g: cam_reduce(a, g, "gradcam"), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="gradients must have the shape of activations"):
        compiled(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4))


BAD_CALLS = {
    "reduce_3d": ("cam_reduce", (torch.rand(2, 3, 4), torch.rand(2, 3, 4), "gradcam")),
    "reduce_shapes": ("cam_reduce", (torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4), "gradcam")),
    "reduce_dtypes": ("cam_reduce", (torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3, dtype=torch.float64), "gradcam")),
    "reduce_integers": ("cam_reduce", (torch.ones(1, 2, 3, 3, dtype=torch.int32),) * 2 + ("gradcam",)),
    "reduce_method": ("cam_reduce", (torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), "gradcam+++")),
    "backward_method": (
        "cam_reduce_backward",
        (torch.rand(1, 3, 3), torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), "no-such-method"),
    ),
    "reduce_integers_and_shapes": (
        "cam_reduce",
        (torch.ones(1, 2, 3, 3, dtype=torch.int32), torch.ones(1, 2, 3, 4), "gradcam"),
    ),
    "reduce_complex": ("cam_reduce", (torch.ones(1, 2, 3, 3, dtype=torch.complex64),) * 2 + ("gradcam",)),
    "reduce_uint16": ("cam_reduce", (torch.ones(1, 2, 3, 3, dtype=torch.uint16),) * 2 + ("gradcam",)),
    "backward_grad_shape": (
        "cam_reduce_backward",
        (torch.rand(1, 3, 4), torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), "gradcam"),
    ),
    "backward_grad_dtype": (
        "cam_reduce_backward",
        (torch.rand(1, 3, 3, dtype=torch.float64), torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), "gradcam"),
    ),
    "postprocess_backward_grad_shape": (
        "cam_postprocess_backward",
        (torch.rand(2, 8, 7), torch.rand(2, 3, 4), 8, 8, True, True),
    ),
    "postprocess_backward_grad_dtype": (
        "cam_postprocess_backward",
        (torch.rand(2, 8, 8, dtype=torch.float64), torch.rand(2, 3, 4), 8, 8, True, True),
    ),
    "postprocess_2d": ("cam_postprocess", (torch.rand(3, 4), 8, 8, True, True)),
    "postprocess_empty_map": ("cam_postprocess", (torch.rand(2, 0, 4), 8, 8, True, True)),
    "postprocess_size": ("cam_postprocess", (torch.rand(2, 3, 4), 0, 8, True, True)),
    "postprocess_integers": ("cam_postprocess", (torch.ones(2, 3, 4, dtype=torch.int64), 8, 8, True, True)),
    "nmf_integers": ("nmf_sweep", (torch.ones(4, 2, dtype=torch.int64), torch.eye(2), torch.rand(4, 2))),
    "nmf_1d": ("nmf_sweep", (torch.rand(4), torch.eye(2), torch.rand(4))),
    "nmf_gram_1d": ("nmf_sweep", (torch.rand(4, 2), torch.ones(2), torch.rand(4, 2))),
    "nmf_products_shape": ("nmf_sweep", (torch.rand(4, 2), torch.eye(2), torch.rand(4, 3))),
    "nmf_gram_shape": ("nmf_sweep", (torch.rand(4, 2), torch.eye(3), torch.rand(4, 2))),
    "nmf_gram_dtype": ("nmf_sweep", (torch.rand(4, 2), torch.eye(2, dtype=torch.float64), torch.rand(4, 2))),
    "nmf_products_dtype": ("nmf_sweep", (torch.rand(4, 2), torch.eye(2), torch.rand(4, 2, dtype=torch.float64))),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_the_fake_kernels_refuse_bad_input_as_the_cpp_checks_do(case):
    # In eager code the C++ checks are the only ones; the fake kernels repeat them for tracing
    # (torch.compile, torch.export). Both must raise the same exception type with the same message.
    from torch._subclasses.fake_tensor import FakeTensorMode

    name, args = BAD_CALLS[case]
    op = getattr(OPS, name).default
    with pytest.raises(Exception) as eager:
        op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(Exception) as traced:
            op(*fake_args)
    assert type(traced.value) is type(eager.value), (eager.value, traced.value)
    assert str(traced.value).splitlines()[0] == str(eager.value).splitlines()[0]


class _Explainer(torch.nn.Module):
    def forward(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return cam_postprocess(cam_reduce(a, g, "hirescam"), 16)


def test_export_keeps_single_op_nodes():
    a, g = _reduce_args(dtype=torch.float32)
    exported = torch.export.export(_Explainer(), (a, g))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(OPS.cam_reduce.default) == 1
    assert targets.count(OPS.cam_postprocess.default) == 1
    assert len(targets) == 2
    torch.testing.assert_close(exported.module()(a, g), _Explainer()(a, g))


def test_package_exports():
    assert torchcam_ops.CAM_METHODS == CAM_METHODS
    assert torchcam_ops.__version__
