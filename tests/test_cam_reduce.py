from __future__ import annotations

import pytest
import torch

from tests.conftest import DTYPES
from tests.helpers import activations_and_gradients, assert_matches
from torchcam_ops import CAM_METHODS, cam_reduce
from torchcam_ops.reference import reference_cam

SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 1, 1),
    (2, 1, 5, 3),
    (3, 4, 7, 7),
    (2, 5, 13, 9),
    (1, 2048, 7, 7),
    (2, 64, 56, 33),
    (4, 37, 17, 1),
]


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(method, shape, dtype):
    a, g = activations_and_gradients(shape, dtype)
    cam = cam_reduce(a, g, method)
    assert cam.shape == (shape[0], shape[2], shape[3])
    assert cam.dtype == dtype
    assert cam.is_contiguous()
    assert_matches(cam, reference_cam(a, g, method), dtype)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_signed_activations(method):
    a, g = activations_and_gradients((3, 6, 5, 4), torch.float64, positive_activations=False)
    assert_matches(cam_reduce(a, g, method), reference_cam(a, g, method), torch.float64)


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_and_strided_inputs(method, dtype):
    a, g = activations_and_gradients((3, 19, 6, 5), dtype)
    expected = reference_cam(a, g, method)
    channels_last = cam_reduce(a.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last), method)
    assert_matches(channels_last, expected, dtype)
    # one channels-last, one not
    mixed = cam_reduce(a.to(memory_format=torch.channels_last), g, method)
    assert_matches(mixed, expected, dtype)
    # transposed spatial dims and a strided channel slice
    transposed = cam_reduce(a.transpose(2, 3).contiguous().transpose(2, 3), g, method)
    assert_matches(transposed, expected, dtype)
    wide_a, wide_g = activations_and_gradients((3, 38, 6, 5), dtype)
    assert_matches(
        cam_reduce(wide_a[:, ::2], wide_g[:, ::2], method), reference_cam(wide_a[:, ::2], wide_g[:, ::2], method), dtype
    )


@pytest.mark.parametrize("method", CAM_METHODS)
def test_hand_computed_2x2x2x2(method):
    # Image 0 worked out in the comments; image 1 is image 0 with A and G negated where noted.
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[0.5, 0.5], [-0.5, 0.5]]]], dtype=torch.float64)
    # gradcam: w = (mean G_0, mean G_1) = (0.5, 0.25); L = 0.5 A_0 + 0.25 A_1
    # abscam: w = (1.0, 0.5); L = A_0 + 0.5 A_1
    # xgradcam: w_0 = (1 - 2 + 6 + 0) / (10 + 1e-7), w_1 = (0 + 0.5 - 0.5 + 0) / (2 + 1e-7) = 0
    # layercam: relu(G) * A summed over channels
    # hirescam: G * A summed; elementwise: relu(G * A) summed
    expected = {
        "gradcam": [[0.5, 1.25], [1.75, 2.0]],
        "abscam": [[1.0, 2.5], [3.5, 4.0]],
        "layercam": [[1.0, 0.5], [6.0, 0.0]],
        "hirescam": [[1.0, -1.5], [5.5, 0.0]],
        "gradcam_elementwise": [[1.0, 0.5], [6.0, 0.0]],
    }
    if method == "gradcam++":
        # channel 0: S = 10; G > 0 at 1 (a = 1/(2 + 10 + 1e-6)) and 2 (a = 4/(8 + 80 + 1e-6))
        w0 = 1.0 / (12 + 1e-6) * 1.0 + 4.0 / (88 + 1e-6) * 2.0
        # channel 1: S = 2; three pixels with G = 0.5: a = 0.25/(0.5 + 0.25 + 1e-6)
        w1 = 3 * 0.25 / (0.75 + 1e-6) * 0.5
        want = w0 * a[0, 0] + w1 * a[0, 1]
    elif method == "xgradcam":
        want = 5.0 / (10 + 1e-7) * a[0, 0]
    else:
        want = torch.tensor(expected[method], dtype=torch.float64)
    torch.testing.assert_close(cam_reduce(a, g, method)[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_zero_gradients_give_zero_map(method):
    a, _ = activations_and_gradients((2, 8, 7, 7), torch.float32)
    cam = cam_reduce(a, torch.zeros_like(a), method)
    assert torch.equal(cam, torch.zeros_like(cam))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_empty_inputs(method):
    for shape in [(0, 4, 7, 7), (2, 4, 0, 7), (2, 0, 3, 3)]:
        a = torch.rand(shape)
        cam = cam_reduce(a, a.clone(), method)
        assert cam.shape == (shape[0], shape[2], shape[3])
        if shape[1] == 0:
            assert torch.equal(cam, torch.zeros_like(cam))


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_propagate(method, bad):
    a, g = activations_and_gradients((2, 4, 5, 5), torch.float32)
    a[0, 1, 2, 3] = bad
    g[0, 2, 1, 1] = bad
    cam = cam_reduce(a, g, method)
    expected = reference_cam(a, g, method)
    torch.testing.assert_close(cam.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert not torch.isfinite(cam[0]).all()
    assert torch.isfinite(cam[1]).all()  # the other image is untouched


def test_deterministic_across_threads():
    a, g = activations_and_gradients((16, 256, 14, 14), torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, threads, 1):
            torch.set_num_threads(n)
            results.append([cam_reduce(a, g, m) for m in CAM_METHODS])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)
    # a batch computes each image exactly as alone
    for m in CAM_METHODS:
        assert torch.equal(cam_reduce(a, g, m)[5], cam_reduce(a[5:6], g[5:6], m)[0])


class TestBadInput:
    def test_unknown_method_lists_valid_ones(self):
        a = torch.rand(1, 2, 3, 3)
        with pytest.raises(ValueError, match=r"unknown method 'gradkam'.*'gradcam'.*'gradcam_elementwise'"):
            cam_reduce(a, a, "gradkam")

    def test_method_not_a_string(self):
        a = torch.rand(1, 2, 3, 3)
        with pytest.raises(TypeError, match="method must be a str"):
            cam_reduce(a, a, 3)

    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="activations must be a torch.Tensor"):
            cam_reduce([[1.0]], torch.rand(1, 1, 1, 1))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"gradients must have the shape of activations \[1, 2, 3, 3\]"):
            cam_reduce(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4))

    @pytest.mark.parametrize("shape", [(2, 3, 3), (1, 2, 3, 3, 1), ()])
    def test_wrong_rank(self, shape):
        with pytest.raises(ValueError, match="activations must be a 4-D"):
            cam_reduce(torch.rand(shape), torch.rand(shape))

    def test_dtype_mismatch(self):
        with pytest.raises(TypeError, match="gradients must have the dtype of activations"):
            cam_reduce(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3, dtype=torch.float64))

    def test_integer_dtype(self):
        a = torch.ones(1, 2, 3, 3, dtype=torch.int64)
        with pytest.raises(TypeError, match="activations must be float32, float64, float16 or bfloat16"):
            cam_reduce(a, a)

    def test_device_mismatch(self):
        a = torch.rand(1, 2, 3, 3)
        with pytest.raises(ValueError, match="gradients must be on the device of activations"):
            cam_reduce(a, a.to("meta"))


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8, 1e15, 1e20])
def test_gradcam_plusplus_does_not_overflow_in_float32(scale):
    # G^2 and G^3 overflow float32 from |G| ~ 1e19 and 1e13; the kernel's form never forms them.
    a, g = activations_and_gradients((2, 6, 5, 4), torch.float64)
    expected = reference_cam(a, g * scale, "gradcam++")
    out = cam_reduce(a.float(), (g * scale).float(), "gradcam++")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    grad_a, grad_g = torch.ops.torchcam_ops.cam_reduce_backward(
        torch.ones_like(out), a.float(), (g * scale).float(), "gradcam++"
    )
    assert torch.isfinite(grad_a).all() and torch.isfinite(grad_g).all()
