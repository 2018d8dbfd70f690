"""The TSGB and rectified-ReLU ops against plain-PyTorch references of the rules in docs/design.md
(ones-kernel conv and conv_transpose for the window sums), relevance conservation, ordinary
weight gradients, opcheck, compile and export, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DTYPES
from torchcam_ops import ops
from torchcam_ops.reference import (
    reference_avg_pool,
    reference_batch_norm_grad,
    reference_conv_grad,
    reference_linear_grad,
    reference_relevance_grad,
)

OPS = torch.ops.torchcam_ops


# -- references ------------------------------------------------------------------------------------


def input_grad(fn, x, g):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x), x, g)
    return grad


# -- conv --------------------------------------------------------------------------------------

CONV_CONFIGS = [
    # (in_channels, out_channels, kernel, stride, padding, dilation, groups, H, W)
    (c_in, c_out, k, s, p, d, grp, h, w)
    for (c_in, c_out, grp), k, s, p, d, (h, w) in itertools.product(
        [(4, 6, 1), (4, 6, 2), (6, 6, 6)], [1, 3, 7], [1, 2], [0, 1, 3], [1, 2], [(11, 9)]
    )
    if (h + 2 * p - d * (k - 1) - 1) >= 0 and (w + 2 * p - d * (k - 1) - 1) >= 0
]


@pytest.mark.parametrize("config", CONV_CONFIGS, ids=lambda c: "cin{}-cout{}-k{}-s{}-p{}-d{}-g{}-{}x{}".format(*c))
def test_conv_rule_matches_reference(config):
    c_in, c_out, k, s, p, d, groups, h, w = config
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    args = ((s, s), (p, p), (d, d), groups)
    z = F.conv2d(x, weight, bias, *args)
    g = torch.randn_like(z)
    ours = input_grad(lambda t: ops.tsgb_conv2d(t, weight, bias, *args), x, g)
    expected = reference_conv_grad(x, weight, bias, *args, g)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)
    # relevance is conserved, sum X * grad_X = sum G * Z, over the output positions whose window
    # sees the input (a window on padding alone has no input to pass relevance to)
    sees_input = (
        F.conv2d(x.abs().sum(1, keepdim=True), torch.ones(1, 1, k, k, dtype=x.dtype), None, (s, s), (p, p), (d, d)) > 0
    )
    torch.testing.assert_close((x * ours).sum(), (g * z * sees_input).sum(), rtol=1e-6, atol=1e-6)


def test_conv_forward_is_conv2d_and_asymmetric_geometry():
    x = torch.randn(2, 4, 13, 8, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 5, dtype=torch.float64)
    args = ((2, 1), (1, 2), (1, 2), 2)
    z = ops.tsgb_conv2d(x, weight, None, *args)
    torch.testing.assert_close(z, F.conv2d(x, weight, None, *args))
    g = torch.randn_like(z)
    ours = input_grad(lambda t: ops.tsgb_conv2d(t, weight, None, *args), x, g)
    torch.testing.assert_close(ours, reference_conv_grad(x, weight, None, *args, g), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_rule_dtypes(dtype):
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    z64 = F.conv2d(x, weight, padding=1)
    g = torch.randn_like(z64)
    expected = reference_conv_grad(x, weight, None, (1, 1), (1, 1), (1, 1), 1, g)
    ours = input_grad(lambda t: ops.tsgb_conv2d(t, weight.to(dtype), None, 1, 1), x.to(dtype), g.to(dtype))
    assert ours.dtype == dtype
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours.double(), expected, rtol=tol, atol=tol * scale)


# -- linear, batch norm, average pooling, ReLU ----------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
def test_linear_rule_and_conservation(beta):
    h = torch.rand(4, 9, dtype=torch.float64)  # post-ReLU features
    weight = torch.randn(5, 9, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    g = torch.zeros(4, 5, dtype=torch.float64)
    g[torch.arange(4), torch.tensor([0, 3, 4, 1])] = 1.0  # one-hot seeds
    y = ops.tsgb_linear(h, weight, bias, beta)
    torch.testing.assert_close(y, F.linear(h, weight, bias))
    ours = input_grad(lambda t: ops.tsgb_linear(t, weight, bias, beta), h, g)
    torch.testing.assert_close(ours, reference_linear_grad(h, weight, g, beta), rtol=1e-6, atol=1e-12)
    if beta == 1.0:
        torch.testing.assert_close((h * ours).sum(1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_linear_never_nan_when_negative_weights_are_silent():
    h = torch.rand(2, 3)
    weight = torch.rand(4, 3)  # no negative weight: z- = 0 everywhere
    grad = input_grad(lambda t: ops.tsgb_linear(t, weight), h, torch.ones(2, 4))
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.ones(2, 4) @ weight)


def test_batch_norm_rule():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.0
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    weight, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y = ops.tsgb_batch_norm(x, mean, var, weight, bias, 1e-5)
    torch.testing.assert_close(y, F.batch_norm(x, mean, var, weight, bias, False, 0.0, 1e-5))
    g = torch.randn_like(y)
    ours = input_grad(lambda t: ops.tsgb_batch_norm(t, mean, var, weight, bias, 1e-5), x, g)
    torch.testing.assert_close(ours, reference_batch_norm_grad(x, y, g))
    assert ours[0, 0, 0, 0] == 0
    # the shift's relevance at X = 0 goes to the other channels of its position: nothing is lost
    torch.testing.assert_close((x * ours).sum(), (g * y).sum())
    # by hand: one position, channels X = [0, 2, -1], shift 1 and scale 1: Y = [1, 3, 0], G = 1; the
    # channel at 0 holds relevance 1, shared as sign(X) |X| / 3 over the others
    x1 = torch.tensor([[[0.0], [2.0], [-1.0]]], dtype=torch.float64)
    three = torch.ones(3, dtype=torch.float64)
    seed = torch.ones(1, 3, 1, dtype=torch.float64)
    got = input_grad(lambda t: ops.tsgb_batch_norm(t, three * 0, three * (1 - 1e-5), None, three, 1e-5), x1, seed)
    torch.testing.assert_close(got, torch.tensor([[[0.0], [3 / 2 + 1 / 3], [-1 / 3]]], dtype=torch.float64))
    # a position where every channel is 0 has nothing to share with: its gradient is 0, not NaN
    x[1, :, 2, 3] = 0
    ours = input_grad(lambda t: ops.tsgb_batch_norm(t, mean, var, weight, bias, 1e-5), x, g)
    assert torch.isfinite(ours).all() and (ours[1, :, 2, 3] == 0).all()


PASS_THROUGH_LAYERS = {
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "layer_norm": lambda t: F.layer_norm(t, t.shape[-1:]),
}


@pytest.mark.parametrize("layer", list(PASS_THROUGH_LAYERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pass_through_rule(layer, dtype):
    f = PASS_THROUGH_LAYERS[layer]
    x64 = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 5  # ReLU6: many values above 6
    x64[0, 0, 0, :2] = 0.0
    x, g = x64.to(dtype), torch.randn_like(x64).to(dtype)
    y = f(x)
    out = ops.tsgb_pass_through(x, y)
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()
    ours = input_grad(lambda t: ops.tsgb_pass_through(t, f(t.detach())), x, g)
    expected = reference_relevance_grad(x.double(), y.double(), g.double())
    torch.testing.assert_close(ours, expected.to(dtype))
    assert (ours[0, 0, 0, :2] == 0).all()
    if dtype == torch.float64:  # relevance passes unchanged, also where ReLU6's gradient is 0
        # (where X = 0 no relevance can pass: a normalisation's Y is not 0 there)
        torch.testing.assert_close((x * ours).sum(), (g * y)[x != 0].sum())


def test_pass_through_backward_reads_the_callers_output_not_the_copy_it_returns():
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    out = ops.tsgb_pass_through(x, F.silu(x.detach()))
    out.add_(1.0)  # in place downstream, as SiLU(inplace=True) after a rule's output: no autograd error
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    y = F.silu(x.detach())  # the value the rule was given, not the one in place
    torch.testing.assert_close(grad, reference_relevance_grad(x.detach(), y, torch.ones(2, 8, dtype=torch.float64)))


def test_pass_through_refuses_an_output_of_another_shape_or_dtype():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"tsgb_pass_through: output must have the shape of input \[2, 3\]"):
        ops.tsgb_pass_through(x, torch.randn(3, 2))
    with pytest.raises(TypeError, match="tsgb_pass_through: output"):
        ops.tsgb_pass_through(x, torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1), (7, 7, 0)])
def test_avg_pool_rule(kernel, stride, padding):
    x = torch.rand(2, 3, 14, 14, dtype=torch.float64) + 0.1
    y = ops.tsgb_avg_pool2d(x, kernel, stride, padding)
    torch.testing.assert_close(y, F.avg_pool2d(x, kernel, stride, padding))
    g = torch.randn_like(y)
    ours = input_grad(lambda t: ops.tsgb_avg_pool2d(t, kernel, stride, padding), x, g)
    # without zeros: relevance G * Y shared equally over each window's input positions (the padding takes
    # none), divided by X
    y_leaf = y.detach()
    shared = input_grad(lambda t: F.avg_pool2d(t, kernel, stride, padding, count_include_pad=False), x, g * y_leaf)
    torch.testing.assert_close(ours, shared / x)
    torch.testing.assert_close((x * ours).sum(), (g * y).sum())
    # with zeros (a ReLU's output): their shares go to the window's other positions, none is lost
    x = torch.relu(torch.randn(2, 3, 14, 14, dtype=torch.float64))
    x[0, 0, :4, :4] = 0  # a window of zeros shares nothing (its Y is 0)
    y = ops.tsgb_avg_pool2d(x, kernel, stride, padding)
    ours = input_grad(lambda t: ops.tsgb_avg_pool2d(t, kernel, stride, padding), x, g)
    torch.testing.assert_close(ours, input_grad(lambda t: reference_avg_pool(t, kernel, stride, padding), x, g))
    assert (ours[x == 0] == 0).all()
    torch.testing.assert_close((x * ours).sum(), (g * y).sum())


@pytest.mark.parametrize("mode", ["guided", "deconvnet", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rectified_relu(mode, dtype):
    x = torch.randn(3, 50, dtype=torch.float64).to(dtype)
    g = torch.randn(3, 50, dtype=torch.float64).to(dtype)
    assert torch.equal(ops.rectified_relu(x, mode), torch.relu(x))
    ours = input_grad(lambda t: ops.rectified_relu(t, mode), x, g)
    expected = {"guided": g * (x > 0) * (g > 0), "deconvnet": torch.relu(g), "plain": g * (x > 0)}[mode]
    torch.testing.assert_close(ours, expected.to(dtype))


# -- ordinary weight gradients, opcheck, compile, export -----------------------------------------


def test_weight_and_bias_gradients_are_the_ordinary_ones():
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: ops.tsgb_conv2d(x, w, b, 2, 1, 1, 2), (weight, bias))
    h = torch.randn(3, 5, dtype=torch.float64)
    lw = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    lb = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: ops.tsgb_linear(h, w, b), (lw, lb))
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    bw = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: ops.tsgb_batch_norm(x, mean, var, w, b), (bw, bb))


def _op_samples():
    x = torch.randn(2, 4, 7, 7)
    weight = torch.randn(6, 2, 3, 3)
    z = F.conv2d(x, weight, None, 1, 1, 1, 2)
    h, lw = torch.rand(3, 5), torch.randn(4, 5)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    pooled = F.avg_pool2d(x, 2)
    return [
        (OPS.tsgb_conv2d.default, (x.clone().requires_grad_(), weight, None, [1, 1], [1, 1], [1, 1], 2)),
        (OPS.tsgb_conv2d_backward.default, (torch.randn_like(z), x, z, [3, 3], [1, 1], [1, 1], [1, 1], 2)),
        (OPS.tsgb_linear.default, (h.clone().requires_grad_(), lw, None, 1.0)),
        (OPS.tsgb_linear_backward.default, (torch.randn(3, 4), h, lw, 1.0)),
        (OPS.tsgb_batch_norm.default, (x.clone().requires_grad_(), None, None, mean, var, 1e-5)),
        (OPS.tsgb_batch_norm_backward.default, (torch.randn_like(x), x, torch.rand(4), None, mean, var, 1e-5)),
        (OPS.tsgb_avg_pool2d.default, (x.clone().requires_grad_(), [2, 2], [2, 2], [0, 0])),
        (OPS.tsgb_avg_pool2d_backward.default, (torch.randn_like(pooled), x, pooled, [2, 2], [2, 2], [0, 0])),
        (OPS.rectified_relu.default, (x.clone().requires_grad_(), "guided")),
        (OPS.rectified_relu_backward.default, (torch.randn_like(x), x, "deconvnet")),
        (OPS.tsgb_pass_through.default, (x.clone().requires_grad_(), F.relu6(x * 5))),
        (OPS.tsgb_pass_through_backward.default, (torch.randn_like(x), x, F.silu(x))),
    ]


@pytest.mark.parametrize("index", range(12))
def test_opcheck(index):
    op, args = _op_samples()[index]
    torch.library.opcheck(op, args)


class TinyTSGBNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.linear = torch.nn.Linear(8, 5)
        self.mean, self.var = torch.zeros(8), torch.ones(8)

    def forward(self, x):
        y = ops.tsgb_conv2d(x, self.conv.weight, self.conv.bias, 1, 1)
        y = ops.rectified_relu(ops.tsgb_batch_norm(y, self.mean, self.var), "plain")
        y = ops.tsgb_avg_pool2d(y, 2).mean((2, 3))
        return ops.tsgb_linear(y, self.linear.weight, self.linear.bias)


@pytest.mark.slow
def test_compile_matches_eager_input_gradients():
    torch._dynamo.reset()
    net = TinyTSGBNet()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    seed = torch.zeros(2, 5)
    seed[:, 2] = 1
    (eager,) = torch.autograd.grad(net(x), x, seed)
    compiled = torch.compile(net, fullgraph=True)
    (graph,) = torch.autograd.grad(compiled(x), x, seed)
    torch.testing.assert_close(graph, eager)


def test_export_keeps_the_ops():
    exported = torch.export.export(TinyTSGBNet(), (torch.rand(2, 3, 8, 8),))
    targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert {
        OPS.tsgb_conv2d.default,
        OPS.tsgb_batch_norm.default,
        OPS.rectified_relu.default,
        OPS.tsgb_avg_pool2d.default,
        OPS.tsgb_linear.default,
    } <= targets


class TestBadInput:
    def test_conv(self):
        x = torch.rand(1, 4, 5, 5)
        with pytest.raises(ValueError, match="groups = 3 does not fit input channels 4"):
            ops.tsgb_conv2d(x, torch.rand(6, 1, 3, 3), None, 1, 1, 1, 3)
        with pytest.raises(ValueError, match="stride must be >= 1"):
            ops.tsgb_conv2d(x, torch.rand(6, 4, 3, 3), None, 0)
        with pytest.raises(ValueError, match="input must be a 4-D"):
            ops.tsgb_conv2d(torch.rand(4, 5, 5), torch.rand(6, 4, 3, 3))
        with pytest.raises(TypeError, match="stride must be an int or a pair"):
            ops.tsgb_conv2d(x, torch.rand(6, 4, 3, 3), None, (1, 2, 3))

    def test_conv_backward_geometry(self):
        x = torch.rand(1, 4, 5, 5)
        with pytest.raises(ValueError, match="is not the output of a convolution"):
            OPS.tsgb_conv2d_backward(
                torch.rand(1, 6, 4, 4), x, torch.rand(1, 6, 4, 4), [3, 3], [1, 1], [1, 1], [1, 1], 1
            )

    def test_linear(self):
        with pytest.raises(ValueError, match="weight must have in_features = 3"):
            ops.tsgb_linear(torch.rand(2, 3), torch.rand(4, 5))

    def test_relu_mode(self):
        with pytest.raises(ValueError, match="unknown mode 'gided'"):
            ops.rectified_relu(torch.rand(3), "gided")
        with pytest.raises(ValueError, match="unknown mode 'gided'; expected one of 'guided'"):
            OPS.rectified_relu(torch.rand(3), "gided")

    def test_batch_norm_statistics(self):
        with pytest.raises(ValueError, match="running_mean and running_var must be \\[C\\] with C = 4"):
            ops.tsgb_batch_norm(torch.rand(2, 4, 3, 3), torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_linear_batch_norm_and_pooling_rules_in_low_precision(dtype):
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    h = torch.rand(3, 6, dtype=torch.float64)
    w = torch.randn(4, 6, dtype=torch.float64)
    g = torch.randn(3, 4, dtype=torch.float64)
    low = input_grad(lambda t: ops.tsgb_linear(t, w.to(dtype)), h.to(dtype), g.to(dtype))
    assert low.dtype == dtype
    expected = reference_linear_grad(h, w, g, 1.0)
    torch.testing.assert_close(low.double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) + 0.5
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    gb = torch.randn_like(x)
    low = input_grad(lambda t: ops.tsgb_batch_norm(t, mean.to(dtype), var.to(dtype)), x.to(dtype), gb.to(dtype))
    expected = reference_batch_norm_grad(x, F.batch_norm(x, mean, var, None, None, False, 0.0, 1e-5), gb)
    torch.testing.assert_close(low.double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))
    gp = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    low = input_grad(lambda t: ops.tsgb_avg_pool2d(t, 2), x.to(dtype), gp.to(dtype))
    y = F.avg_pool2d(x, 2)
    expected = input_grad(lambda t: F.avg_pool2d(t, 2), x, gp * y) / x
    torch.testing.assert_close(low.double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))


def test_plain_rectified_relu_is_torchs_relu_gradient_with_nan():
    x = torch.tensor([-1.0, 0.0, 2.0, float("nan"), 3.0, -2.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan"), float("nan")])
    (expected,) = torch.autograd.grad(torch.relu(x), x, g)
    (ours,) = torch.autograd.grad(ops.rectified_relu(x, "plain"), x, g)
    torch.testing.assert_close(ours, expected, equal_nan=True)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("special", [float("nan"), float("inf")])
def test_tsgb_conv2d_non_finite_inputs_reach_exactly_the_gradients_the_rule_gives(special, dilation):
    # Summed-area tables would spread a NaN (or inf - inf) to every window after it; the op must give
    # non-finite gradients where the plain rule does and the same finite values everywhere else.
    torch.manual_seed(0)
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    x[0, 0, 4, 4] = special
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    z = F.conv2d(x, w, None, 1, 1, dilation)
    g = torch.randn_like(z)
    expected = reference_conv_grad(x, w, None, (1, 1), (1, 1), (dilation, dilation), 1, g)
    leaf = x.clone().requires_grad_()
    (ours,) = torch.autograd.grad(ops.tsgb_conv2d(leaf, w, None, 1, 1, dilation, 1), leaf, g)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected))
    assert int((~torch.isfinite(expected)).sum()) > 1
    finite = torch.isfinite(expected)
    torch.testing.assert_close(ours[finite], expected[finite], rtol=1e-9, atol=1e-12)
