"""Gradients of both ops: numerical gradcheck in float64, and agreement with autograd through the
plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DTYPES
from tests.helpers import tolerance
from torchcam_ops import CAM_METHODS, cam_postprocess, cam_reduce
from torchcam_ops.reference import reference_cam, reference_postprocess


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def reduce_inputs(shape=(2, 3, 4, 5), dtype=torch.float64):
    # Activations well away from zero sums and gradients away from 0 keep the non-smooth points
    # (ReLU kinks, Grad-CAM++'s G = 0 branch) outside the finite-difference stencil.
    a = torch.rand(shape, dtype=torch.float64) + 0.5
    g = torch.randn(shape, dtype=torch.float64)
    g = g + 0.2 * g.sign()
    return leaf(a.to(dtype)), leaf(g.to(dtype))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_reduce_gradcheck(method):
    a, g = reduce_inputs()
    assert torch.autograd.gradcheck(lambda x, y: cam_reduce(x, y, method), (a, g))


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cam_reduce_gradients_match_reference(method, dtype):
    a, g = reduce_inputs((3, 6, 7, 7), dtype)
    weight = torch.randn(3, 7, 7, dtype=torch.float64)
    (cam_reduce(a, g, method).double() * weight).sum().backward()
    a_ref, g_ref = leaf(a.double()), leaf(g.double())
    (reference_cam(a_ref, g_ref, method) * weight).sum().backward()
    tol = tolerance(dtype) * 4
    for ours, theirs in ((a.grad, a_ref.grad), (g.grad, g_ref.grad)):
        assert ours.dtype == dtype
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours.double(), theirs, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_reduce_backward_spreads_non_finite_upstream_gradients_like_autograd(method):
    # A NaN or inf in grad_cam makes the same elements of dA and dG non-finite as autograd of the
    # reference formula does (whether one is inf or NaN depends on the order of the formula's terms).
    # Grad-CAM++'s dG is the exception: the op gives 0 wherever G <= 0, where the weight does not
    # depend on G, whatever the upstream gradient (autograd of the reference gives NaN where G < 0,
    # through the 0 * NaN of its alpha * ReLU(G) product).
    torch.manual_seed(0)
    a = (torch.rand(2, 3, 4, 5, dtype=torch.float64) + 0.5).requires_grad_()
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    g[0, :, 0, :2] = 0.0
    g = g.requires_grad_()
    for bad in (float("nan"), float("inf")):
        grad_cam = torch.ones(2, 4, 5, dtype=torch.float64)
        grad_cam[0, 1, 2] = bad
        expected = list(torch.autograd.grad(reference_cam(a, g, method), (a, g), grad_cam))
        actual = torch.ops.torchcam_ops.cam_reduce_backward(grad_cam, a.detach(), g.detach(), method)
        if method == "gradcam++":
            flat = g.detach() <= 0
            assert torch.equal(actual[1][flat], torch.zeros_like(actual[1][flat]))
            expected[1] = torch.where(flat, 0.0, expected[1])
        for got, want in zip(actual, expected):
            assert torch.equal(got.isfinite(), want.isfinite()), (method, bad)
            finite = want.isfinite()
            torch.testing.assert_close(got[finite], want[finite])


def test_cam_reduce_gradient_to_one_input_only():
    a, g = reduce_inputs()
    g = g.detach()
    cam_reduce(a, g, "gradcam").sum().backward()
    assert a.grad is not None and g.grad is None


def test_cam_reduce_channels_last_gradients():
    a, g = reduce_inputs((2, 5, 6, 7))
    a_cl, g_cl = leaf(a.to(memory_format=torch.channels_last)), leaf(g.to(memory_format=torch.channels_last))
    cam_reduce(a_cl, g_cl, "xgradcam").pow(2).sum().backward()
    cam_reduce(a, g, "xgradcam").pow(2).sum().backward()
    torch.testing.assert_close(a_cl.grad, a.grad)
    torch.testing.assert_close(g_cl.grad, g.grad)


@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("size", [(9, 11), (3, 2), (5, 4)])
def test_cam_postprocess_gradcheck(size, relu, normalize):
    cam = torch.randn(2, 5, 4, dtype=torch.float64)
    cam = leaf(cam + 0.1 * cam.sign())  # away from the ReLU kink
    assert torch.autograd.gradcheck(lambda x: cam_postprocess(x, size, relu=relu, normalize=normalize), (cam,))


@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cam_postprocess_gradients_match_reference(relu, normalize, dtype):
    cam = leaf(torch.randn(3, 7, 7, dtype=torch.float64).to(dtype))
    weight = torch.randn(3, 32, 24, dtype=torch.float64)
    (cam_postprocess(cam, (32, 24), relu=relu, normalize=normalize).double() * weight).sum().backward()
    cam_ref = leaf(cam.detach().double())
    (reference_postprocess(cam_ref, (32, 24), relu, normalize) * weight).sum().backward()
    tol = tolerance(dtype) * 4
    scale = float(cam_ref.grad.abs().max())
    torch.testing.assert_close(cam.grad.double(), cam_ref.grad, rtol=tol, atol=tol * scale)


def test_cam_postprocess_ties_share_gradient_like_amin():
    # ReLU clips most of this map to 0, so the minimum is a tie over many pixels; the sources of
    # those pixels are negative, so their gradient is 0 either way. A tie at the maximum is
    # made explicit with two equal peaks.
    cam = torch.full((1, 4, 4), -1.0, dtype=torch.float64)
    cam[0, 0, 0] = cam[0, 3, 3] = 2.0
    cam[0, 1, 2] = 0.5
    cam = leaf(cam)
    weight = torch.randn(1, 4, 4, dtype=torch.float64)
    (cam_postprocess(cam, 4) * weight).sum().backward()
    cam_ref = leaf(cam.detach())
    (reference_postprocess(cam_ref, (4, 4)) * weight).sum().backward()
    torch.testing.assert_close(cam.grad, cam_ref.grad)


def test_training_loss_through_both_ops():
    # A CAM-based loss trains the layer that produced the activations.
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).double()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    target = torch.zeros(4, 14, 14, dtype=torch.float64)
    target[:, :7, :7] = 1
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        a = torch.relu(conv(x))
        g = torch.ones_like(a) / 49  # a fixed "gradient" signal
        maps = cam_postprocess(cam_reduce(a, g, "gradcam"), 14, normalize=False)
        loss = torch.nn.functional.mse_loss(maps, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
