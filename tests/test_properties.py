"""Property-based tests of the ops against the plain-PyTorch references: random shapes (tiny and odd
included), memory layouts, dtypes, scales and special values (zeros, constants, NaN)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import assert_matches
from torchcam_ops import CAM_METHODS, cam_postprocess, cam_reduce
from torchcam_ops.reference import reference_cam, reference_postprocess

DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])
LAYOUTS = st.sampled_from(["contiguous", "channels_last", "transposed"])


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # same values, strides of a [N, K, w, h] tensor
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 3),
    k=st.integers(1, 9),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    method=st.sampled_from(CAM_METHODS),
    dtype=DTYPES,
    layout=LAYOUTS,
    seed=st.integers(0, 2**16),
    log_scale=st.integers(-6, 6),
)
def test_cam_reduce_matches_the_reference(n, k, h, w, method, dtype, layout, seed, log_scale):
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0**log_scale if dtype in (torch.float32, torch.float64, torch.bfloat16) else 1.0
    a = torch.rand(n, k, h, w, generator=generator, dtype=torch.float64) * scale
    g = torch.randn(n, k, h, w, generator=generator, dtype=torch.float64) / math.sqrt(h * w)
    a, g = a.to(dtype), g.to(dtype)
    out = cam_reduce(_laid_out(a, layout), _laid_out(g, layout), method)
    assert out.shape == (n, h, w) and out.dtype == dtype
    assert_matches(out, reference_cam(a, g, method), dtype)


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    out_h=st.integers(1, 19),
    out_w=st.integers(1, 19),
    dtype=DTYPES,
    relu=st.booleans(),
    normalize=st.booleans(),
    kind=st.sampled_from(["random", "constant", "zeros", "scaled_small", "scaled_large", "one_pixel"]),
    seed=st.integers(0, 2**16),
)
def test_cam_postprocess_matches_the_reference(n, h, w, out_h, out_w, dtype, relu, normalize, kind, seed):
    generator = torch.Generator().manual_seed(seed)
    cam = torch.randn(n, h, w, generator=generator, dtype=torch.float64)
    if kind == "constant":
        cam = torch.full_like(cam, 0.37)
    elif kind == "zeros":
        cam = torch.zeros_like(cam)
    elif kind == "scaled_small" and dtype != torch.float16:
        cam = cam * 1e-12
    elif kind == "scaled_large" and dtype != torch.float16:
        cam = cam * 1e12
    elif kind == "one_pixel":
        cam = torch.zeros_like(cam)
        cam[:, 0, 0] = 1.0
    cam = cam.to(dtype)
    out = cam_postprocess(cam, (out_h, out_w), relu=relu, normalize=normalize)
    assert out.shape == (n, out_h, out_w) and out.dtype == dtype
    expected = reference_postprocess(cam, (out_h, out_w), relu, normalize)
    if normalize:
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        # a map the reference calls constant is exact zeros; otherwise it spans [0, 1]
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=5e-2 if dtype == torch.bfloat16 else 5e-3)
    else:
        assert_matches(out, expected, dtype)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    y=st.integers(0, 5),
    x=st.integers(0, 5),
    method=st.sampled_from(CAM_METHODS),
)
def test_nan_reaches_the_maps_it_touches_and_no_other(h, w, y, x, method):
    a = torch.rand(2, 3, h, w)
    g = torch.randn(2, 3, h, w)
    a[0, 1, y % h, x % w] = float("nan")
    out = cam_reduce(a, g, method)
    assert torch.isfinite(out[1]).all()
    assert torch.isnan(out[0]).any()
    maps = cam_postprocess(out, (5, 4))
    assert torch.isnan(maps[0]).all() and torch.isfinite(maps[1]).all()
