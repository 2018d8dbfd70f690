"""GIG-CAM: the batched path against a straightforward per-image reference, path endpoints,
convergence, and the multi-scale fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from tests.helpers import small_cnn
from torchcam_ops.methods import GIGCAM, multiscale_fusion
from torchcam_ops.reference import reference_cam, reference_gig_cam, reference_normalize


def up(m: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def norm(m: torch.Tensor) -> torch.Tensor:
    return reference_normalize(m, torch.float32).to(m.dtype)


def reference_guide(model, layer, z, target):
    """Up(sum_k A_k mean G_k) for one image, with hooks and autograd."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        score = model(z[None].requires_grad_(True))[0, target]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, captured["a"])
    return up(reference_cam(captured["a"].detach(), g, "gradcam")[0].float(), z.shape[-2:])


def test_guide_is_upsampled_raw_gradcam():
    model = small_cnn()
    z = torch.rand(3, 3, 16, 16)
    guides = GIGCAM(model, [model[4]])._guide(z, torch.tensor([2, 0, 5]))
    for n, target in enumerate([2, 0, 5]):
        expected = reference_guide(model, model[4], z[n], target)
        torch.testing.assert_close(guides[n], expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_batched_path_matches_per_image_reference():
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    targets = [2, 0, 5]
    explainer = GIGCAM(model, [model[4]], steps=8)
    raw, diagnostics = explainer(x, targets, raw=True, diagnostics=True)
    assert int(diagnostics.unfinished_steps) == 0
    (end,) = diagnostics.path_ends
    assert end.shape == (3, 16, 16)

    def guide_of(z, target):
        return explainer._guide(z[None], torch.tensor([target]))[0]

    for n in range(3):
        phi, alpha = reference_gig_cam(guide_of, x[n], targets[n], steps=8)
        torch.testing.assert_close(raw[n], phi, rtol=1e-4, atol=1e-4 * float(phi.abs().max()))
        torch.testing.assert_close(end[n], alpha, rtol=0, atol=1e-5)
    maps = explainer(x, targets)
    torch.testing.assert_close(maps[1], norm(raw[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("vgg11", "features.18")])
def test_paths_end_at_the_input_and_converge(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.rand(2, 3, 48, 48)
    explainer = GIGCAM(model, layer, steps=10, fraction=0.3)
    maps, diagnostics = explainer(x, torch.tensor([[1, 7], [3, 3]]), diagnostics=True)
    assert maps.shape == (2, 2, 48, 48)
    assert int(diagnostics.unfinished_steps) == 0
    (end,) = diagnostics.path_ends
    assert end.shape == (2, 2, 48, 48)
    torch.testing.assert_close(end, torch.ones_like(end))
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_batch_equals_images_and_t_targets_equal_calls():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    explainer = GIGCAM(model, [model[4]], steps=5)
    together = explainer(x, torch.tensor([[1, 4], [6, 2]]))
    torch.testing.assert_close(together[1, 0], explainer(x[1:], [6])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(together[:, 1], explainer(x, [4, 2]), rtol=0, atol=1e-5)


def test_single_scale_fusion_is_the_identity():
    g = torch.rand(2, 9, 9)
    assert torch.equal(multiscale_fusion([g]), g)
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    plain = GIGCAM(model, [model[4]], steps=4)(x, [1, 2])
    assert torch.equal(GIGCAM(model, [model[4]], steps=4, scales=(16,))(x, [1, 2]), plain)


def test_two_scale_fusion_by_the_formula():
    g0, g1 = torch.rand(1, 4, 4), torch.rand(1, 6, 6)
    f = up(g0[0], (6, 6))  # F = Up_s1(G_s0), R = F
    r = f
    smooth = up(F.avg_pool2d(g1[None], 2)[0, 0], (6, 6))
    f = (g1[0] / smooth) * f  # F = D_s1 * Up_s1(F)
    r = r + f  # R = Up_s1(R) + F
    torch.testing.assert_close(multiscale_fusion([g0, g1])[0], r)


def test_fusion_detail_is_zero_where_the_smooth_map_is_zero():
    g1 = torch.zeros(1, 4, 4)
    g1[0, 0, 0] = 1.0
    fused = multiscale_fusion([torch.ones(1, 2, 2), torch.zeros(1, 4, 4)])
    assert torch.isfinite(fused).all()
    assert torch.isfinite(multiscale_fusion([torch.ones(1, 2, 2), g1])).all()


def test_multiscale_runs_at_each_scale():
    model = small_cnn()
    x = torch.rand(1, 3, 20, 20)
    maps = GIGCAM(model, [model[4]], steps=3, scales=(12, 16, 20))(x, output_size=(10, 10))
    assert maps.shape == (1, 10, 10)


def test_bad_options():
    model = small_cnn()
    for kwargs, message in [
        ({"fraction": 0}, "fraction"),
        ({"max_dist": 2}, "max_dist"),
        ({"scales": (32, 16)}, "scales"),
        ({"steps": 0}, "steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            GIGCAM(model, "4", **kwargs)
    with pytest.raises(ValueError, match="needs class indices"):
        GIGCAM(model, "4")(torch.rand(1, 3, 8, 8), lambda out: out[:, 0])
