"""torchcam's three methods we add: Smooth Grad-CAM++, SS-CAM and IS-CAM, against float64 formulas
(hooks, plain loops over channels and copies), against torchcam 0.5 given the same noise, and where
torchcam departs from the method, the difference shown."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import peer_cases, small_cnn
from torchcam_ops.methods import ISCAM, METHODS, SSCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus
from torchcam_ops.reference import reference_normalize, reference_postprocess


def cases(resnet18):
    return peer_cases(resnet18, "layer3", "5")


def layer_and_gradient(model, layer, x, classes):
    """The layer's output and the gradient of each image's class logit to it (in x's dtype)."""
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda module, inputs, output: captured.update(a=output)
    )
    try:
        logits = model(x)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, torch.tensor(classes)[:, None]).sum(), captured["a"])
    return captured["a"].detach(), gradient


def test_smooth_gradcam_plusplus_is_gradcam_plusplus_on_the_moments_of_the_noisy_gradients():
    model = small_cnn().eval().double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    classes, samples, std = [1, 4], 3, 0.2
    with SmoothGradCAMPlusPlus(
        model, ["4"], num_samples=samples, std=std, generator=torch.Generator().manual_seed(4)
    ) as cam:
        raw = cam(x, classes, raw=True)
    draws = torch.Generator().manual_seed(4)
    noisy = [x + torch.randn(x.shape, generator=draws, dtype=torch.float64) * std for _ in range(samples)]
    clean, _ = layer_and_gradient(model, "4", x, classes)
    gradients = torch.stack([layer_and_gradient(model, "4", z, classes)[1] for z in noisy])
    d1, d2, d3 = gradients.mean(0), gradients.pow(2).mean(0), gradients.pow(3).mean(0)
    alpha = d2 / (2 * d2 + clean.sum((2, 3), keepdim=True) * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * d1.clamp(min=0)).sum((2, 3))
    expected = (weights[:, :, None, None] * clean).sum(1)
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(raw, expected, rtol=1e-10, atol=1e-12)


def test_smooth_gradcam_plusplus_without_noise_is_gradcam_plusplus_and_torchcams_is_not(resnet18):
    model, layer, x = cases(resnet18)["resnet18"]
    with SmoothGradCAMPlusPlus(model, [layer], std=0.0, num_samples=2) as smooth:
        ours = smooth(x, [3, 5])
    with SmoothGradCAMPlusPlus(model, [layer], std=0.0, num_samples=2, variant="torchcam") as smooth:
        theirs = smooth(x, [3, 5])
    with GradCAMPlusPlus(model, [layer]) as plain:
        expected = plain(x, [3, 5])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert float((theirs - expected).abs().max()) > 1e-2  # its denominator sums A D3 per channel


def sampled_reference(model, layer, x, classes, copies_of):
    """The 'original' SS-CAM / IS-CAM raw map in float64, a channel and a copy at a time: masks
    norm(Up(A_k)), scores = the class's softmax probability, averaged; all-zero masks skipped."""
    model = model.double()
    x = x.double()
    activations, _ = layer_and_gradient(model, layer, x, classes)
    maps = []
    with torch.no_grad():
        for n, c in enumerate(classes):
            masks = reference_postprocess(activations[n], tuple(x.shape[-2:]), relu=False)
            weights = torch.zeros(masks.shape[0], dtype=torch.float64)
            copies = copies_of(n, masks)  # [S, K, H, W]
            for k in range(masks.shape[0]):
                if masks[k].abs().max() == 0:
                    continue
                scores = [torch.softmax(model((x[n] * copy[k])[None]), 1)[0, c] for copy in copies]
                weights[k] = torch.stack(scores).mean()
            maps.append((weights[:, None, None] * activations[n]).sum(0))
    return torch.stack(maps)


def test_sscam_averages_the_class_probability_over_noisy_masks():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    classes, samples, std = [1, 4], 2, 0.3
    raw, maps = (
        SSCAM(model.double(), ["5"], num_samples=samples, std=std, generator=torch.Generator().manual_seed(6))(
            x.double(), classes, raw=raw
        )
        for raw in (True, False)
    )
    draws = torch.Generator().manual_seed(6)
    noise = {}
    for s in range(samples):  # copies outer, images inner: the documented order of draws
        for n in range(2):
            noise[s, n] = torch.randn(12, 32, 32, generator=draws, dtype=torch.float64) * std

    def copies_of(n, masks):
        return torch.stack([masks + noise[s, n] for s in range(samples)])

    expected = sampled_reference(model, "5", x, classes, copies_of)
    torch.testing.assert_close(raw, expected, rtol=1e-9, atol=1e-12)
    # ReLU at the input's resolution, as the original Score-CAM
    up = F.interpolate(expected[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(maps, reference_normalize(up.relu()), rtol=0, atol=1e-9)


def test_iscam_averages_the_class_probability_along_scaled_masks():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    classes, samples = [2, 0], 4
    with ISCAM(model.double(), ["5"], num_samples=samples) as cam:
        raw = cam(x.double(), classes, raw=True)

    def copies_of(n, masks):
        return torch.stack([masks * (s / samples) for s in range(1, samples + 1)])

    expected = sampled_reference(model, "5", x, classes, copies_of)
    torch.testing.assert_close(raw, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (SmoothGradCAMPlusPlus, {"num_samples": 0}, "num_samples: expected a positive int"),
        (SmoothGradCAMPlusPlus, {"std": -1.0}, "std: expected a finite number >= 0"),
        (SmoothGradCAMPlusPlus, {"variant": "paper"}, "variant: expected 'original' or 'torchcam'"),
        (SSCAM, {"std": float("nan")}, "std: expected a finite number >= 0"),
        (SSCAM, {"num_samples": True}, "num_samples: expected a positive int"),
        (ISCAM, {"variant": "pytorch-grad-cam"}, "variant: expected 'original' or 'torchcam'"),
    ],
)
def test_bad_options_are_refused_by_name(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(small_cnn(), ["5"], **options)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        SmoothGradCAMPlusPlus(small_cnn(), ["5"], generator=0)


def test_random_methods_are_reproducible_with_a_generator_and_registered():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    for name, cls, options in (
        ("smoothgradcam++", SmoothGradCAMPlusPlus, {}),
        ("sscam", SSCAM, {"num_samples": 2}),
    ):
        runs = []
        for _ in range(2):
            # layer 4: the gradient to it depends on the input (through the ReLU after it)
            with METHODS[name](model, ["4"], generator=torch.Generator().manual_seed(9), **options) as cam:
                assert type(cam) is cls
                runs.append(cam(x, [1, 2]))
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
        with METHODS[name](model, ["4"], generator=torch.Generator().manual_seed(10), **options) as cam:
            assert float((cam(x, [1, 2]) - runs[0]).abs().max()) > 0
    assert type(METHODS["iscam"](model, ["5"])) is ISCAM


class TestAgainstTorchcam:
    torchcam = pytest.importorskip("torchcam.methods")

    def theirs(self, name, model, layer, x, classes, **options):
        """torchcam's maps at the layer's resolution, normalised as it normalises them."""
        extractor = getattr(self.torchcam, name)(model, layer, input_shape=tuple(x.shape[1:]), **options)
        with extractor:
            with torch.set_grad_enabled(name == "SmoothGradCAMpp"):
                scores = model(x)
            torch.manual_seed(11)
            return extractor(classes, scores)[0].detach()

    @staticmethod
    def normalised(raw):
        return reference_normalize(raw.relu()).float()

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_smooth_gradcam_plusplus_agrees_given_the_same_noise(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        expected = self.theirs("SmoothGradCAMpp", model, layer, x, [3, 5], num_samples=3)
        torch.manual_seed(11)
        with SmoothGradCAMPlusPlus(model, [layer], num_samples=3, variant="torchcam") as cam:
            raw = cam(x, [3, 5], raw=True)
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(self.normalised(raw), expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_sscam_agrees_given_the_same_noise(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        expected = self.theirs("SSCAM", model, layer, x, [3, 5], num_samples=2)
        torch.manual_seed(11)
        with SSCAM(model, [layer], num_samples=2, variant="torchcam") as cam:
            raw = cam(x, [3, 5], raw=True)
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(self.normalised(raw), expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_iscam_agrees(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        expected = self.theirs("ISCAM", model, layer, x, [3, 5], num_samples=3)
        with ISCAM(model, [layer], num_samples=3, variant="torchcam") as cam:
            raw = cam(x, [3, 5], raw=True)
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(self.normalised(raw), expected, rtol=0, atol=1e-4)
