from __future__ import annotations

import pytest
import torch

from tests.conftest import DTYPES
from tests.helpers import assert_matches, tolerance
from torchcam_ops import cam_postprocess
from torchcam_ops.reference import reference_postprocess

RESIZES = [
    ((7, 7), (224, 224)),  # up
    ((14, 14), (224, 224)),
    ((5, 9), (31, 17)),  # odd, anisotropic
    ((56, 56), (28, 28)),  # down
    ((13, 11), (4, 3)),
    ((7, 7), (7, 7)),  # equal
    ((1, 1), (5, 6)),
    ((3, 4), (1, 1)),
]


@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("resize", RESIZES, ids=lambda r: f"{r[0][0]}x{r[0][1]}-{r[1][0]}x{r[1][1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(resize, relu, normalize, dtype):
    (h, w), size = resize
    cam = torch.randn(3, h, w, dtype=torch.float64).to(dtype)
    out = cam_postprocess(cam, size, relu=relu, normalize=normalize)
    assert out.shape == (3, *size)
    assert out.dtype == dtype
    assert_matches(out, reference_postprocess(cam, size, relu, normalize), dtype)


def test_every_normalised_map_spans_zero_to_one():
    out = cam_postprocess(torch.randn(8, 7, 7), 224)
    assert torch.equal(out.amin((1, 2)), torch.zeros(8))
    torch.testing.assert_close(out.amax((1, 2)), torch.ones(8), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_and_all_negative_maps_become_zeros(dtype):
    constants = [torch.full((7, 7), value) for value in (3.0, 0.1234567, 987.654321)]
    cam = torch.stack([*constants, -torch.rand(7, 7) - 0.1, torch.zeros(7, 7)]).to(dtype)
    out = cam_postprocess(cam, (20, 30))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_normalisation_is_scale_free(dtype):
    # A map of raw range 1e-12 and the same map times 1e12 normalise alike (an absolute guard such
    # as (max - min + 1e-7) turns the small ones nearly black), in every dtype, for the scales the
    # dtype represents with its full precision.
    finfo = torch.finfo(dtype)
    cam = torch.rand(3, 7, 7, dtype=torch.float64) + 0.1
    expected = cam_postprocess(cam.to(dtype), (20, 24)).double()
    scales = [s for s in (1e-12, 1e-6, 1e-3, 1e3, 1e6, 1e12) if finfo.tiny * 1e3 < s < finfo.max / 1e3]
    assert dtype == torch.float16 or len(scales) == 6
    for scale in scales:
        out = cam_postprocess((cam * scale).to(dtype), (20, 24))
        assert_matches(out, expected, dtype)
        torch.testing.assert_close(
            out.amax((1, 2)).double(), torch.ones(3, dtype=torch.float64), rtol=0, atol=tolerance(dtype)
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_maps_at_any_scale_become_zeros_and_have_no_gradient(dtype):
    for value in (1e-30, 1e-12, 1.0, 1e12):
        if not torch.finfo(dtype).tiny < value < torch.finfo(dtype).max:
            continue
        cam = torch.full((2, 5, 3), value, dtype=dtype, requires_grad=True)
        out = cam_postprocess(cam, (17, 29))
        assert torch.equal(out, torch.zeros_like(out))
        (grad,) = torch.autograd.grad(out.sum(), cam)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_non_contiguous_input():
    cam = torch.randn(4, 9, 7)
    expected = reference_postprocess(cam.transpose(1, 2), (16, 16))
    assert_matches(cam_postprocess(cam.transpose(1, 2), 16), expected, torch.float32)
    strided = torch.randn(4, 9, 14)[:, :, ::2]
    assert_matches(cam_postprocess(strided, (5, 5)), reference_postprocess(strided, (5, 5)), torch.float32)


def test_nan_propagates_to_its_map_only():
    cam = torch.randn(2, 7, 7)
    cam[0, 3, 3] = float("nan")
    out = cam_postprocess(cam, 32)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1]).all()


def test_empty_batch():
    out = cam_postprocess(torch.randn(0, 7, 7), (10, 12))
    assert out.shape == (0, 10, 12)


def test_deterministic_across_threads():
    cam = torch.randn(32, 14, 14)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cam_postprocess(cam, 224)
        torch.set_num_threads(threads)
        many = cam_postprocess(cam, 224)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


class TestBadInput:
    @pytest.mark.parametrize("size", [0, (0, 5), (5, -1)])
    def test_output_size_below_one(self, size):
        with pytest.raises(ValueError, match="out_h and out_w must be >= 1"):
            cam_postprocess(torch.rand(1, 3, 3), size)

    @pytest.mark.parametrize("size", [(1, 2, 3), "224", 2.5, (2.0, 3)])
    def test_output_size_type(self, size):
        with pytest.raises(TypeError, match="size must be an int or a pair of ints"):
            cam_postprocess(torch.rand(1, 3, 3), size)

    @pytest.mark.parametrize("shape", [(3, 3), (1, 1, 3, 3)])
    def test_wrong_rank(self, shape):
        with pytest.raises(ValueError, match=r"cam must be a 3-D \[N, h, w\] tensor"):
            cam_postprocess(torch.rand(shape), 4)

    def test_empty_maps(self):
        with pytest.raises(ValueError, match="cam maps must be at least 1x1"):
            cam_postprocess(torch.rand(2, 0, 3), 4)

    def test_integer_dtype(self):
        with pytest.raises(TypeError, match="cam must be float32, float64, float16 or bfloat16"):
            cam_postprocess(torch.ones(1, 3, 3, dtype=torch.int32), 4)


@pytest.mark.parametrize("relu,normalize", [(False, True), (False, False), (True, True)])
def test_values_near_the_float32_limit_do_not_overflow(relu, normalize):
    # b - a and max - min overflow float32 for maps of values near +-3e38; float64 is the reference.
    cam = (torch.rand(2, 5, 4, dtype=torch.float64) * 2 - 1) * 3e38
    out = cam_postprocess(cam.float(), (9, 7), relu=relu, normalize=normalize)
    assert torch.isfinite(out).all()
    expected = reference_postprocess(cam, (9, 7), relu, normalize)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
