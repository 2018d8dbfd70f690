"""eigen_smooth and aug_smooth, the two smoothing options of every CAM call: against float64 formulas,
against pytorch-grad-cam's options, and their contracts (batched copies, pinned classes, clear refusals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import small_cnn
from torchcam_ops.methods import (
    GIGCAM,
    METHODS,
    AbsCAM,
    EigenCAM,
    GradCAM,
    IntegratedGradCAM,
    LayerCAM,
    ScoreCAM,
    explain,
    make_explainer,
)
from torchcam_ops.methods.smoothing import AUGMENTATIONS
from torchcam_ops.reference import reference_normalize

SIZE = 48


def norm_up(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(raw.relu()[:, None].double(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return reference_normalize(up, torch.float64)


def hooked_float64(model, layer, x, classes):
    """The layer's output and each image's class-logit gradient to it, in float64."""
    model = model.double()
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        logits = model(x.double())
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, torch.tensor(classes)[:, None]).sum(), captured["a"])
    return captured["a"].detach(), gradient


def principal_projection(terms: np.ndarray) -> np.ndarray:
    """terms [K, h, w] -> the first principal component of the pixels, the side that correlates with
    the terms' sum kept (numpy SVD, float64)."""
    pixels = terms.reshape(terms.shape[0], -1).T
    centred = pixels - pixels.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ vt[0]
    total = pixels.sum(1)
    if np.dot(projection, total - total.mean()) < 0:
        projection = -projection
    return projection.reshape(terms.shape[1:])


def cases(resnet18):
    cnn = small_cnn()
    return {
        "resnet18": (resnet18, resnet18.layer3, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))),
        "small_cnn": (cnn, cnn[5], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))),
    }


TERMS = {
    "gradcam": lambda a, g: g.mean((1, 2), keepdim=True) * a,
    "xgradcam": lambda a, g: (a * g).sum((1, 2), keepdim=True) / (a.sum((1, 2), keepdim=True) + 1e-7) * a,
    "layercam": lambda a, g: g.clamp(min=0) * a,
    "hirescam": lambda a, g: g * a,
    "gradcam_elementwise": lambda a, g: (g * a).clamp(min=0),
}


@pytest.mark.parametrize("method", sorted(TERMS))
@pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
def test_eigen_smooth_is_the_first_component_of_the_methods_terms(resnet18, architecture, method):
    model, layer, x = cases(resnet18)[architecture]
    classes = [3, 5]
    with make_explainer(method, model, [layer]) as cam:
        ours = cam(x, classes, eigen_smooth=True)
        raw = cam(x, classes, eigen_smooth=True, raw=True)
    activations, gradients = hooked_float64(model, layer, x, classes)
    model.float()
    projections = torch.stack(
        [torch.from_numpy(principal_projection(TERMS[method](a, g).numpy())) for a, g in zip(activations, gradients)]
    )
    torch.testing.assert_close(raw.double(), projections, rtol=1e-4, atol=1e-4 * float(projections.abs().max()))
    torch.testing.assert_close(ours.double(), norm_up(projections, tuple(x.shape[-2:])), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "method",
    sorted(
        name
        for name in METHODS
        # no layer maps of one forward (the wrappers' bases are these same methods)
        if name not in ("tsgb", "sobelcam", "fullgrad", "gig_cam+m", "abscam", "refinecam", "sess")
    ),
)
def test_channel_terms_sum_to_the_raw_map_of_every_method_that_has_them(method, monkeypatch):
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([[1, 2], [3, 1]])
    random = method in ("randomcam", "sscam")
    options = {"generator": torch.Generator().manual_seed(4)} if random else {}
    options.update({"num_samples": 2} if method in ("sscam", "iscam") else {})
    with make_explainer(method, model, [model[5]], **options) as cam:
        if not cam.has_channel_terms():
            with pytest.raises(ValueError, match="eigen_smooth"):
                cam(x, [1, 2], eigen_smooth=True)
            return
        raw = cam(x, targets, raw=True)
        recorded = []
        terms_of = type(cam).channel_terms
        monkeypatch.setattr(
            type(cam), "channel_terms", lambda self, evidence: recorded.append(terms_of(self, evidence)) or recorded[-1]
        )
        if random:
            cam.generator.manual_seed(4)  # the same draws again
        cam(x, targets, raw=True, eigen_smooth=True)
    (terms,) = recorded
    assert terms.shape[:3] == (2, 2, 12)  # images, targets, the layer's channels
    torch.testing.assert_close(terms.sum(2), raw, rtol=1e-5, atol=1e-5 * float(raw.abs().max()))


def test_methods_without_channel_terms_refuse_eigen_smooth_by_name():
    model = small_cnn().eval()
    x = torch.rand(1, 3, 32, 32)
    for explainer in (
        EigenCAM(model, [model[5]]),
        IntegratedGradCAM(model, [model[5]], steps=2),
        GIGCAM(model, [model[5]], steps=2),
        AbsCAM(model, [model[5]]),
    ):
        with explainer, pytest.raises(ValueError, match=rf"eigen_smooth: {type(explainer).__name__}'s maps"):
            explainer(x, eigen_smooth=True)


def test_smoothing_options_are_checked():
    model = small_cnn().eval()
    x = torch.rand(1, 3, 32, 32)
    with GradCAM(model, [model[5]]) as cam:
        with pytest.raises(TypeError, match="eigen_smooth: expected a bool"):
            cam(x, eigen_smooth=1)
        with pytest.raises(TypeError, match="aug_smooth: expected a bool"):
            cam(x, aug_smooth="yes")
        with pytest.raises(ValueError, match="aug_smooth: .*no raw maps"):
            cam(x, aug_smooth=True, raw=True)
        with pytest.raises(ValueError, match="targets: expected 1 class indices"):
            cam(x, [1, 2], aug_smooth=True)


def test_aug_smooth_averages_the_flipped_and_rescaled_copies_in_one_batch():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    batches = []
    handle = model.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    try:
        with LayerCAM(model, [model[5]]) as cam:
            smoothed = cam(x, [1, 2], aug_smooth=True)
    finally:
        handle.remove()
    assert batches == [2 * len(AUGMENTATIONS)]  # every copy in one forward pass
    expected = []
    with LayerCAM(model, [model[5]]) as cam:
        for flip, factor in AUGMENTATIONS:
            copy = (x.flip(-1) if flip else x) * factor
            maps = cam(copy, [1, 2]).double()
            expected.append(maps.flip(-1) if flip else maps)
    mean = torch.stack(expected).mean(0)
    torch.testing.assert_close(smoothed.double(), reference_normalize(mean, torch.float32), rtol=0, atol=1e-5)
    assert smoothed.shape == (2, 32, 32)
    assert float(smoothed.amax((1, 2)).min()) == 1.0


def test_aug_smooth_explains_each_images_top_class_on_the_image_itself_and_chunks():
    model = small_cnn().eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    top = model(x).argmax(1)
    with GradCAM(model, [model[5]]) as cam:
        pinned = cam(x, aug_smooth=True)
        explicit = cam(x, top, aug_smooth=True)
    with GradCAM(model, [model[5]], batch_size=4) as cam:
        chunked = cam(x, top.tolist(), aug_smooth=True)
        several = cam(x, torch.stack([top, (top + 1) % 10], 1), aug_smooth=True, eigen_smooth=True)
    torch.testing.assert_close(pinned, explicit, rtol=0, atol=0)
    torch.testing.assert_close(chunked, explicit, rtol=0, atol=1e-6)
    assert several.shape == (3, 2, 32, 32)


def test_aug_smooth_maps_carry_gradients_when_asked_and_gig_cam_takes_it():
    model = small_cnn().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with GradCAM(model, [model[5]]) as cam:
        maps = cam(x, aug_smooth=True, create_graph=True)
    assert float(maps.detach().max()) == 1.0
    (grad,) = torch.autograd.grad(
        (maps * torch.rand(maps.shape, generator=torch.Generator().manual_seed(9))).sum(), model[0].weight
    )
    assert grad.abs().sum() > 0
    with GIGCAM(model, [model[5]], steps=3) as cam:
        smoothed, diagnostics = cam(x, aug_smooth=True, diagnostics=True)
    assert smoothed.shape == (1, 32, 32) and float(smoothed.max()) == 1.0
    assert diagnostics.path_ends[0].shape[0] == len(AUGMENTATIONS)


def test_eigen_smooth_in_half_precision_computes_in_float32():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with GradCAM(model, [model[5]]) as cam:
        full = cam(x, [1, 2], eigen_smooth=True)
    with GradCAM(model.to(torch.bfloat16), [model[5]]) as cam:
        half = cam(x.to(torch.bfloat16), [1, 2], eigen_smooth=True)
    model.float()
    assert half.dtype == torch.float32
    assert float((half - full).abs().mean()) < 0.05


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @staticmethod
    def theirs(cls, model, layer, x, classes, **call):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with cls(model=model, target_layers=[layer]) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes], **call))

    @pytest.mark.parametrize(
        ("ours", "peer"), [("gradcam", "GradCAM"), ("layercam", "LayerCAM"), ("xgradcam", "XGradCAM")]
    )
    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_eigen_smooth_agrees_up_to_the_sign(self, resnet18, architecture, ours, peer):
        model, layer, x = cases(resnet18)[architecture]
        with make_explainer(ours, model, [layer]) as cam:
            smoothed, raw = cam(x, [3, 5], eigen_smooth=True), cam(x, [3, 5], eigen_smooth=True, raw=True)
        flipped = norm_up(-raw, tuple(x.shape[-2:])).float()
        expected = self.theirs(getattr(self.pgc, peer), model, layer, x, [3, 5], eigen_smooth=True)
        for n in range(2):
            assert float(expected[n].std()) > 0.05
            same, opposite = (smoothed[n] - expected[n]).abs().max(), (flipped[n] - expected[n]).abs().max()
            assert min(same, opposite) <= 1e-4, (float(same), float(opposite))

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_score_cam_eigen_smooth_agrees_up_to_the_sign(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        with ScoreCAM(model, [layer], variant="pytorch-grad-cam") as cam:
            smoothed, raw = cam(x, [3, 5], eigen_smooth=True), cam(x, [3, 5], eigen_smooth=True, raw=True)
        flipped = norm_up(-raw, tuple(x.shape[-2:])).float()
        expected = self.theirs(self.pgc.ScoreCAM, model, layer, x, [3, 5], eigen_smooth=True)
        for n in range(2):
            same, opposite = (smoothed[n] - expected[n]).abs().max(), (flipped[n] - expected[n]).abs().max()
            assert min(same, opposite) <= 1e-4, (float(same), float(opposite))

    @pytest.mark.parametrize(("ours", "peer"), [("gradcam", "GradCAM"), ("hirescam", "HiResCAM")])
    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_aug_smooth_is_theirs_normalised_again(self, resnet18, architecture, ours, peer):
        model, layer, x = cases(resnet18)[architecture]
        with make_explainer(ours, model, [layer]) as cam:
            smoothed = cam(x, [3, 5], aug_smooth=True)
        expected = self.theirs(getattr(self.pgc, peer), model, layer, x, [3, 5], aug_smooth=True)
        peaks = expected.amax((1, 2))
        assert 0.1 < float(peaks.max()) < 1.0  # theirs is not normalised again
        torch.testing.assert_close(smoothed, reference_normalize(expected).float(), rtol=0, atol=1e-4)


def test_the_functional_form_passes_the_options_and_refuses_them_for_non_cams():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    with GradCAM(model, [model[5]]) as cam:
        expected = cam(x, [1, 2], eigen_smooth=True, aug_smooth=True)
    ours = explain(model, x, "gradcam", target_layers=[model[5]], targets=[1, 2], eigen_smooth=True, aug_smooth=True)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    for method in ("tsgb", "sobelcam"):
        with pytest.raises(ValueError, match=f"aug_smooth: '{method}' .* takes no aug_smooth"):
            explain(model, x, method, target_layers=None, aug_smooth=True)


def test_a_cams_name_may_end_in_the_smoothing_options_for_the_api_the_cli_and_evaluate():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with GradCAM(model, [model[5]]) as cam:
        expected = cam(x, [1, 2], eigen_smooth=True, aug_smooth=True)
    with make_explainer("gradcam+eigen_smooth+aug_smooth", model, [model[5]]) as smoothed:
        torch.testing.assert_close(smoothed(x, [1, 2]), expected, rtol=0, atol=0)
        assert smoothed.model is model
    with make_explainer("layercam+aug_smooth", model, [model[5]]) as smoothed:
        torch.testing.assert_close(smoothed(x, [1, 2]), LayerCAM(model, [model[5]])(x, [1, 2], aug_smooth=True))
    for name, message in (
        ("gradcam+blur", "unknown method 'gradcam\\+blur'"),
        ("eigencam+eigen_smooth", "EigenCAM's maps are not sums of per-channel terms"),
        ("tsgb+aug_smooth", "TSGB takes no aug_smooth"),
        ("sess+aug_smooth", "SESS takes no aug_smooth"),
    ):
        with pytest.raises(ValueError, match=message):
            make_explainer(name, model, [model[5]])
    from torchcam_ops.cli import _check_methods

    assert _check_methods("evaluate", "gradcam,scorecam+aug_smooth") == ["gradcam", "scorecam+aug_smooth"]
    with pytest.raises(SystemExit, match="unknown methods \\['gradcam\\+blur'\\]"):
        _check_methods("evaluate", "gradcam+blur")


def test_wrappers_pass_the_options_to_their_base_and_bad_combinations_are_refused():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    with make_explainer("refinecam+eigen_smooth+aug_smooth", model, ["3", "5"], base="gradcam") as refine:
        expected = GradCAM(model, ["3", "5"])
        expected.layer_fusion = "product"
        torch.testing.assert_close(refine(x, [1, 2]), expected(x, [1, 2], eigen_smooth=True, aug_smooth=True))
    with make_explainer("sess+eigen_smooth", model, ["5"], num_scales=1, smooth=False) as sess:
        torch.testing.assert_close(
            sess(x, [1, 2]), GradCAM(model, ["5"])(x, [1, 2], eigen_smooth=True), atol=1e-6, rtol=0
        )
    from torchcam_ops.targets import FinerTarget

    with GradCAM(model, ["5"]) as cam:
        with pytest.raises(ValueError, match="eigen_smooth: .*carry no gradient"):
            cam(x, [1, 2], eigen_smooth=True, create_graph=True)
        with pytest.raises(ValueError, match="aug_smooth: the targets hold per-image state"):
            cam(x, FinerTarget(torch.tensor([1, 2])), aug_smooth=True)
        with pytest.raises(ValueError, match="aug_smooth \\(6 copies per image\\)"):
            from torchcam_ops.ops import MAX_OUTPUT_ELEMENTS

            cam(x, [1, 2], aug_smooth=True, output_size=(1, int(MAX_OUTPUT_ELEMENTS // 6 // 2) + 1))
