"""Refine-CAM: the product of a base CAM's normalised layer maps, against a float64 formula and
pytorch-grad-cam's RefineCAM."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import peer_cases, small_cnn
from torchcam_ops.methods import METHODS, RefineCAM
from torchcam_ops.reference import reference_cam, reference_normalize, reference_postprocess


def cases(resnet18):
    return peer_cases(resnet18, ["layer2", "layer3"], ["3", "5"])


@pytest.mark.parametrize("base", ["gradcam++", "layercam"])
@pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
def test_refine_cam_is_the_product_of_the_normalised_layer_maps(resnet18, architecture, base):
    model, layers, x = cases(resnet18)[architecture]
    with RefineCAM(model, layers, base=base) as cam:
        ours = cam(x, [3, 5])
    model = model.double()
    modules = dict(model.named_modules())
    captured = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.update({name: o})) for name in layers
    ]
    try:
        logits = model(x.double())
        grads = torch.autograd.grad(logits.gather(1, torch.tensor([[3], [5]])).sum(), [captured[n] for n in layers])
    finally:
        for handle in handles:
            handle.remove()
        model.float()
    product = torch.ones(2, *x.shape[-2:], dtype=torch.float64)
    for name, g in zip(layers, grads):
        product = product * reference_postprocess(reference_cam(captured[name].detach(), g, base), tuple(x.shape[-2:]))
    expected = reference_normalize(product)
    assert float(expected.std()) > 0.05
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-5)


def test_refine_cam_takes_the_bases_options_and_call_and_refuses_non_cams():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with METHODS["refinecam"](model, ["2", "4"], base="scorecam", masks_per_forward=4) as cam:
        assert isinstance(cam, RefineCAM) and cam.base.masks_per_forward == 4
        assert cam(x, [1, 2], eigen_smooth=True, aug_smooth=True).shape == (2, 32, 32)
        assert [r.shape for r in cam(x, [1, 2], raw=True)] == [(2, 16, 16), (2, 16, 16)]
    for base, message in (
        ("tsgb", "no per-layer maps"),
        ("gig_cam", "no per-layer maps"),
        ("nope", "expected a method name"),
    ):
        with pytest.raises(ValueError, match=f"base: .*{message}"):
            RefineCAM(model, ["2", "4"], base=base)


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_refine_cam_agrees(self, resnet18, architecture):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model, layers, x = cases(resnet18)[architecture]
        modules = dict(model.named_modules())
        expected = torch.from_numpy(
            self.pgc.RefineCAM(model, [modules[n] for n in layers])(x, [ClassifierOutputTarget(c) for c in (3, 5)])
        )
        with RefineCAM(model, layers) as cam:
            ours = cam(x, [3, 5])
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
