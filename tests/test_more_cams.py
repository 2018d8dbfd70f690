"""Eigen-Grad-CAM, FEM, Random-CAM, KPCA-CAM, Shapley-CAM, Seg-Eigen-CAM, Finer-CAM and Sobel-CAM: each against its
formula computed independently in float64, and against pytorch-grad-cam's implementation on resnet18 and a
small CNN (random weights)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.helpers import small_cnn
from torchcam_ops import cam_postprocess
from torchcam_ops.methods import (
    FEM,
    KPCACAM,
    METHODS,
    EigenGradCAM,
    FinerCAM,
    GradCAMPlusPlus,
    RandomCAM,
    SegEigenCAM,
    ShapleyCAM,
    SobelCAM,
)
from torchcam_ops.reference import reference_normalize
from torchcam_ops.targets import FinerTarget


def norm_up(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """norm(Up(ReLU(raw))) for raw maps [N, h, w], in float64."""
    up = F.interpolate(raw.relu()[:, None].double(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return reference_normalize(up, torch.float64)


def activations_and_gradients(model, layer, x, classes):
    """The layer's output and the gradient of each image's class logit to it, in float64."""
    model = model.double()
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        logits = model(x.double())
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, torch.tensor(classes)[:, None]).sum(), captured["a"])
    return captured["a"].detach(), gradient


def cases(resnet18):
    cnn = small_cnn()
    return {
        "resnet18": (resnet18, resnet18.layer3, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))),
        "small_cnn": (cnn, cnn[5], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))),
    }


@pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
def test_eigen_gradcam_is_the_first_component_of_activations_times_gradients(resnet18, architecture):
    model, layer, x = cases(resnet18)[architecture]
    classes = [3, 5]
    name = next(n for n, m in model.named_modules() if m is layer)
    with EigenGradCAM(model, [name]) as cam:
        maps, raw = cam(x, classes), cam(x, classes, raw=True)
    reference = copy.deepcopy(model)
    a, g = activations_and_gradients(reference, dict(reference.named_modules())[name], x, classes)
    product = (a * g).flatten(2).transpose(1, 2)  # [n, hw, K]
    for n in range(2):
        centred = product[n] - product[n].mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # the principal direction, not by SVD
        projection = centred @ vectors[:, -1]
        mean = product[n].mean(1)
        if (projection * (mean - mean.mean())).sum() < 0:
            projection = -projection
        scale = float(projection.abs().max())
        torch.testing.assert_close(raw[n].flatten().double(), projection, rtol=1e-3, atol=1e-4 * scale)
    expected = norm_up(raw.double(), tuple(x.shape[-2:]))
    torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=1e-5)
    assert float(maps.std()) > 0.05
    # a class-specific map: another class gives another one
    assert float((EigenGradCAM(model, [name])(x, [4, 1]) - maps).abs().max()) > 0.05


@pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
def test_fem_weights_each_channel_by_its_share_above_k_sigma(resnet18, architecture):
    model, layer, x = cases(resnet18)[architecture]
    name = next(n for n, m in model.named_modules() if m is layer)
    for k in (2.0, 0.5):
        with FEM(model, [name], k=k) as cam:
            maps = cam(x)
            several = cam(x, torch.tensor([[1, 2, 3]] * 2))
        captured = {}
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output.double()))
        with torch.no_grad():
            model(x)
        handle.remove()
        a = captured["a"]
        mean, std = a.mean((2, 3), keepdim=True), a.std((2, 3), correction=0, keepdim=True)
        weights = (a > mean + k * std).double().mean((2, 3))
        expected = norm_up((weights[:, :, None, None] * a).sum(1), tuple(x.shape[-2:]))
        torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=1e-5)
        assert float(maps.std()) > 0.05
        assert several.shape == (2, 3, *x.shape[-2:])
        for t in range(3):  # class-agnostic: T copies of the map
            torch.testing.assert_close(several[:, t], maps, rtol=0, atol=0)


def test_random_cam_is_reproducible_with_a_generator_and_weighs_channels_uniformly():
    model, x = small_cnn(), torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    first = RandomCAM(model, ["5"], generator=torch.Generator().manual_seed(11))(x)
    again = RandomCAM(model, ["5"], generator=torch.Generator().manual_seed(11))(x)
    other = RandomCAM(model, ["5"], generator=torch.Generator().manual_seed(12))(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert float((first - other).abs().max()) > 0.05
    weights = torch.rand(3, 1, 12, generator=torch.Generator().manual_seed(11)) * 2 - 1
    captured = {}
    handle = model[5].register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = norm_up(torch.einsum("ntk,nkhw->nthw", weights, captured["a"])[:, 0], (16, 16))
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-5)
    # T targets per image: independent draws, [N, T, H, W]
    assert RandomCAM(model, ["5"], generator=torch.Generator().manual_seed(1))(x, torch.zeros(3, 2).long()).shape == (
        3,
        2,
        16,
        16,
    )
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        RandomCAM(model, ["5"], generator=3)


def kernel_pca_projection(pixels: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    """The first kernel principal component of the rows ``[hw, K]`` scaled by the root of its
    eigenvalue, from the kernel's definition with numpy in float64 (no scikit-learn)."""
    x = pixels - pixels.mean(0)
    inner = x @ x.T
    if kernel == "sigmoid":
        matrix = np.tanh(gamma * inner + 1)
    elif kernel == "rbf":
        matrix = np.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    elif kernel == "poly":
        matrix = (gamma * inner + 1) ** 3
    elif kernel == "cosine":
        norms = np.linalg.norm(x, axis=1)
        matrix = inner / np.outer(norms, norms)
    else:
        matrix = inner
    centre = np.eye(len(x)) - 1 / len(x)
    values, vectors = np.linalg.eigh(centre @ matrix @ centre)
    projection = vectors[:, -1] * np.sqrt(max(values[-1], 0))
    mean = pixels.mean(1)
    return projection if (projection * (mean - mean.mean())).sum() >= 0 else -projection


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
def test_kpca_cam_is_the_first_kernel_principal_component(kernel):
    model, x = small_cnn(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    gamma = None if kernel != "rbf" else 0.5
    model64 = copy.deepcopy(model).double()
    with KPCACAM(model64, ["3"], kernel=kernel, gamma=gamma) as cam:
        raw, maps = cam(x.double(), 0, raw=True), cam(x.double(), 0)
    captured = {}
    handle = model64[3].register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    with torch.no_grad():
        model64(x.double())
    handle.remove()
    a = captured["a"]
    for n in range(2):
        pixels = a[n].flatten(1).T.numpy()
        expected = kernel_pca_projection(pixels, kernel, gamma or 1 / pixels.shape[1])
        torch.testing.assert_close(raw[n].flatten(), torch.from_numpy(expected), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(maps, norm_up(raw, (16, 16)), rtol=1e-9, atol=1e-9)
    assert float(maps.std()) > 0.05
    # the linear kernel is Eigen-CAM
    if kernel == "linear":
        eigen = METHODS["eigencam"](model64, ["3"])(x.double(), 0, raw=True)
        torch.testing.assert_close(raw, eigen, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel": "laplacian"}, "kernel: expected one of"),
        ({"gamma": 0}, "gamma: expected a positive finite number or None"),
        ({"gamma": float("nan")}, "gamma: expected a positive finite number or None"),
    ],
)
def test_kpca_cam_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        KPCACAM(small_cnn(), ["5"], **options)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", True])
def test_fem_refuses_a_k_that_is_not_a_finite_number(bad):
    with pytest.raises(ValueError, match="k: expected a finite number"):
        FEM(small_cnn(), ["5"], k=bad)


def test_the_new_methods_are_registered_and_run_on_the_meta_device():
    model = small_cnn().to("meta")
    x = torch.empty(2, 3, 12, 12, device="meta")
    for name, cls in (("eigengradcam", EigenGradCAM), ("fem", FEM), ("randomcam", RandomCAM), ("kpcacam", KPCACAM)):
        with METHODS[name](model, ["5"]) as explainer:
            assert type(explainer) is cls
            assert explainer(x, torch.tensor([1, 4], device="meta")).shape == (2, 12, 12)


def smooth_cnn() -> nn.Module:
    """A small CNN with SiLU activations: the class score is not piecewise linear in a layer's output."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def test_shapley_cam_corrects_the_gradient_by_half_the_exact_hessian_times_the_activations():
    # The Hessian of the class score in the layer's output, built whole by torch.autograd.functional
    # in float64 (independent of the Hessian-vector product the method takes), applied to A.
    model = smooth_cnn().double()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    classes = [1, 3]
    with ShapleyCAM(model, ["3"]) as cam:
        maps, raw = cam(x, classes), cam(x, classes, raw=True)
    head, tail = model[:4], model[4:]
    for n in range(2):
        a = head(x[n : n + 1]).detach()  # [1, 8, 4, 4]

        def score(activations, n=n):
            return tail(activations)[0, classes[n]]

        g = torch.autograd.functional.jacobian(score, a)
        hessian = torch.autograd.functional.hessian(score, a).reshape(a.numel(), a.numel())
        hvp = (hessian @ a.flatten()).reshape(a.shape)
        weights = (g - 0.5 * hvp).mean((2, 3))
        expected = (weights[:, :, None, None] * a).sum(1)[0]
        assert float(hvp.abs().max()) > 0.01 * float(g.abs().max()), (hvp.abs().max(), g.abs().max())
        torch.testing.assert_close(raw[n], expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(maps, norm_up(raw, (16, 16)), rtol=1e-9, atol=1e-9)
    # with class logits on a ReLU network the Hessian is zero: Grad-CAM's map
    relu_model, relu_x = small_cnn(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        ShapleyCAM(relu_model, ["3"])(relu_x, [1, 2]), METHODS["gradcam"](relu_model, ["3"])(relu_x, [1, 2])
    )


def test_shapley_cam_maps_carry_gradients_only_when_asked():
    model, x = smooth_cnn(), torch.rand(1, 3, 16, 16)
    with ShapleyCAM(model, ["3"]) as cam:
        assert not cam(x, 1).requires_grad
        maps = cam(x, 1, create_graph=True)
    assert maps.requires_grad
    (gradient,) = torch.autograd.grad(maps.square().sum(), model[0].weight)
    assert float(gradient.abs().max()) > 0


class TinyAttention(nn.Module):
    """Patch tokens, one attention layer (fused, or written out as softmax(QK^T/sqrt(d))V), a head."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fused = fused
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 24)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # [N, 16, 8]
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            attended = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v
        return self.head(self.norm(tokens + attended).mean(1))


def test_shapley_cam_differentiates_fused_attention_twice_and_restores_the_backend():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    fused, written_out = TinyAttention(True).eval(), TinyAttention(False).eval()
    flash_before = torch.backends.cuda.flash_sdp_enabled()
    # the patch embedding: attention and the norm after it are not linear in it
    maps = ShapleyCAM(fused, ["patches"])(x, [1, 2])
    assert torch.backends.cuda.flash_sdp_enabled() == flash_before
    expected = ShapleyCAM(written_out, ["patches"])(x, [1, 2])
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-4)
    # the correction is there: the map is not Grad-CAM's
    gradcam = METHODS["gradcam"](fused, ["patches"])(x, [1, 2])
    assert float((maps - gradcam).abs().max()) > 1e-3


def test_seg_eigen_cam_is_the_first_component_of_abs_gradients_times_activations_with_its_largest_side_up():
    model = copy.deepcopy(small_cnn()).double()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    raw = SegEigenCAM(model, ["3"])(x, [2, 5], raw=True)
    a, g = activations_and_gradients(model, model[3], x, [2, 5])
    for n in range(2):
        rows = (g[n].abs() * a[n]).flatten(1).T
        centred = rows - rows.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, -1]
        if projection.min().abs() > projection.max().abs():
            projection = -projection
        torch.testing.assert_close(raw[n].flatten(), projection, rtol=1e-7, atol=1e-9)


def test_finer_target_is_the_weighted_difference_to_the_closest_classes():
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5, 1.0, 3.0], [0.0, 0.1, 0.2, -0.3, 5.0, 0.15]], dtype=torch.float64)
    for classes, alpha, comparisons in ((None, 1.0, (1, 2, 3)), (torch.tensor([0, 2]), 0.5, (1, 2)), (3, 1.0, (2, 9))):
        scores = FinerTarget(classes, alpha, comparisons)(logits)
        for n in range(2):
            row = logits[n].tolist()
            c = (
                max(range(6), key=row.__getitem__)
                if classes is None
                else int(torch.as_tensor(classes).reshape(-1)[n])
                if isinstance(classes, torch.Tensor)
                else classes
            )
            by_distance = sorted(range(6), key=lambda j: abs(row[j] - row[c]))
            similar = [by_distance[k] for k in comparisons if k < 6]
            p = torch.softmax(logits[n], 0)
            expected = sum(p[j] * (row[c] - alpha * row[j]) for j in similar) / (sum(p[j] for j in similar) + 1e-9)
            torch.testing.assert_close(scores[n], expected, rtol=1e-12, atol=1e-12)
    # T classes per image: T scores, and any gradient method takes the score as its target
    assert FinerTarget(torch.tensor([[0, 1], [2, 3]]))(logits).shape == (2, 2)
    model, x = small_cnn(), torch.rand(2, 3, 16, 16)
    assert GradCAMPlusPlus(model, ["3"])(x, FinerTarget(torch.tensor([1, 2]))).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="targets: a class index is out of range for a model with 7 outputs"):
        FinerCAM(model, ["3"])(x, [1, 7])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "eigencam"}, "base: expected a cam_reduce method"),
        ({"alpha": float("nan")}, "alpha: expected a finite number"),
        ({"comparisons": (0, 1)}, "comparisons: expected positions >= 1"),
    ],
)
def test_finer_cam_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        FinerCAM(small_cnn(), ["3"], **options)


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @staticmethod
    def theirs(cls, model, layer, x, classes, **options):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with cls(model=model, target_layers=[layer], **options) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes]))

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_eigen_gradcam_agrees_up_to_the_sign(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        with EigenGradCAM(model, [layer]) as cam:
            ours, raw = cam(x, [3, 5]), cam(x, [3, 5], raw=True)
        flipped = cam_postprocess(-raw, tuple(x.shape[-2:]))
        expected = self.theirs(self.pgc.EigenGradCAM, model, layer, x, [3, 5])
        for n in range(2):
            assert float(expected[n].std()) > 0.05
            same, opposite = (ours[n] - expected[n]).abs().max(), (flipped[n] - expected[n]).abs().max()
            assert min(same, opposite) <= 1e-4, (float(same), float(opposite))

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_fem_agrees(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        ours = FEM(model, [layer])(x, [3, 5])
        expected = self.theirs(self.pgc.FEM, model, layer, x, [3, 5])
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_random_cam_agrees_given_the_same_draws(self, resnet18, architecture, monkeypatch):
        model, layer, x = cases(resnet18)[architecture]
        ours = RandomCAM(model, [layer], generator=torch.Generator().manual_seed(5))(x, [3, 5])
        captured = {}
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(k=output.shape[1]))
        with torch.no_grad():
            model(x)
        handle.remove()
        draws = (torch.rand(2, 1, captured["k"], generator=torch.Generator().manual_seed(5)) * 2 - 1)[:, 0]
        monkeypatch.setattr(np.random, "uniform", lambda low, high, size: draws.double().numpy().reshape(size))
        expected = self.theirs(self.pgc.RandomCAM, model, layer, x, [3, 5])
        # a random weighting may leave one image's map flat (a ReLU of a negative sum); not both
        assert float(expected.std(dim=(1, 2)).max()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    @pytest.mark.parametrize("kernel", ["sigmoid", "rbf"])
    def test_kpca_cam_agrees_up_to_the_sign(self, resnet18, architecture, kernel):
        # in float64: scikit-learn decomposes a float32 kernel matrix in float32, good to ~2e-4 of the map
        model, layer, x = cases(resnet18)[architecture]
        name = next(n for n, m in model.named_modules() if m is layer)
        model = copy.deepcopy(model).double()
        layer, x = dict(model.named_modules())[name], x.double()
        with KPCACAM(model, [layer], kernel=kernel) as cam:
            ours, raw = cam(x, [3, 5]), cam(x, [3, 5], raw=True)
        flipped = cam_postprocess(-raw, tuple(x.shape[-2:]))
        expected = self.theirs(self.pgc.KPCA_CAM, model, layer, x, [3, 5], kernel=kernel)
        for n in range(2):
            assert float(expected[n].std()) > 0.05
            same, opposite = (ours[n] - expected[n]).abs().max(), (flipped[n] - expected[n]).abs().max()
            assert min(same, opposite) <= 1e-4, (float(same), float(opposite))

    @pytest.mark.parametrize("architecture", ["resnet18", "smooth_cnn"])
    def test_shapley_cam_agrees(self, resnet18, architecture):
        if architecture == "smooth_cnn":
            model = smooth_cnn()
            layer, x = model[3], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        else:
            model, layer, x = cases(resnet18)["resnet18"]
        classes = [3, 5] if architecture == "resnet18" else [3, 4]
        ours = ShapleyCAM(model, [layer])(x, classes)
        expected = self.theirs(self.pgc.ShapleyCAM, model, layer, x, classes)
        # one of resnet18's maps is flat (every corrected weight negative); the other is not
        assert float(expected.std(dim=(1, 2)).max()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_seg_eigen_cam_agrees(self, resnet18, architecture):
        model, layer, x = cases(resnet18)[architecture]
        ours = SegEigenCAM(model, [layer])(x, [3, 5])
        expected = self.theirs(self.pgc.SegEigenCAM, model, layer, x, [3, 5])
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    @pytest.mark.parametrize(("alpha", "comparisons"), [(1.0, (1, 2, 3)), (0.5, (1, 2))])
    def test_finer_cam_agrees(self, resnet18, architecture, alpha, comparisons):
        model, layer, x = cases(resnet18)[architecture]
        ours = FinerCAM(model, [layer], alpha=alpha, comparisons=comparisons)(x)
        with self.pgc.FinerCAM(model, [layer]) as cam:
            expected = torch.from_numpy(
                cam(input_tensor=x, targets=None, alpha=alpha, comparison_categories=list(comparisons))
            )
        assert float(expected.std(dim=(1, 2)).max()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_overlapping_shapley_calls_share_the_math_attention_switch_and_restore_it():
    import threading

    from torchcam_ops.methods.attention import twice_differentiable_attention

    flash_before = torch.backends.cuda.flash_sdp_enabled()
    with twice_differentiable_attention():
        with twice_differentiable_attention():
            assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()  # the first holder still runs: still math
    assert torch.backends.cuda.flash_sdp_enabled() == flash_before
    model, x = TinyAttention(True).eval(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    expected = ShapleyCAM(model, ["patches"])(x, [1, 2])
    results, errors = [], []

    def explain() -> None:
        try:
            for _ in range(5):
                results.append(ShapleyCAM(model, ["patches"])(x, [1, 2]))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=explain) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for maps in results:
        torch.testing.assert_close(maps, expected)
    assert torch.backends.cuda.flash_sdp_enabled() == flash_before


def test_shapley_cam_on_a_linear_frozen_tail_is_gradcam():
    # resnet18's layer4 -> pooling -> fc with frozen parameters: the gradient has no graph, H A = 0
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().requires_grad_(False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        ShapleyCAM(model, ["layer4"])(x, [1, 2]), METHODS["gradcam"](model, ["layer4"])(x, [1, 2])
    )


class TokensWithClassToken(nn.Module):
    """Patch tokens and a class token, mixed by a smooth attention-like step; the head reads the class token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patches = nn.Conv2d(3, 4, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 4))
        self.tokens = nn.Identity()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patches(x).flatten(2).transpose(1, 2)  # [N, 4, 4]
        tokens = self.tokens(torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1))  # [N, 5, 4]
        return self.head(self.tail(tokens))

    @staticmethod
    def tail(tokens: torch.Tensor) -> torch.Tensor:
        mixed = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1) @ tokens
        return torch.tanh(mixed[:, 0])


def test_shapley_cam_applies_the_hessian_to_the_whole_output_class_token_included():
    model = TokensWithClassToken().double()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    raw = ShapleyCAM(model, ["tokens"], reshape="tokens")(x, [2], raw=True)
    with torch.no_grad():
        patches = model.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls.expand(1, -1, -1), patches], 1)

    def score(t):
        return model.head(model.tail(t))[0, 2]

    g = torch.autograd.functional.jacobian(score, tokens)
    hessian = torch.autograd.functional.hessian(score, tokens).reshape(tokens.numel(), tokens.numel())
    hvp = (hessian @ tokens.flatten()).reshape(tokens.shape)
    corrected = (g - 0.5 * hvp)[0, 1:]  # [4 patches, 4 channels], the class token dropped after H A
    weights = corrected.mean(0)
    expected = (tokens[0, 1:] @ weights).reshape(2, 2)
    torch.testing.assert_close(raw[0], expected, rtol=1e-9, atol=1e-10)


def test_kpca_cam_cosine_kernel_of_a_dead_pixel_is_not_nan():
    model = small_cnn()
    with torch.no_grad():
        model[2].bias.fill_(-1e3)  # layer 3 (after the ReLU) is all zeros: every pixel row is 0
    maps = KPCACAM(model, ["3"], kernel="cosine")(torch.rand(1, 3, 16, 16), 0)
    assert bool(maps.isfinite().all())


def test_finer_target_checks_its_classes_and_follows_chunks_and_half_precision():
    with pytest.raises(TypeError, match="classes: expected an integer tensor"):
        FinerTarget(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="classes: expected None, an int or a LongTensor, got bool"):
        FinerTarget(True)
    model, x = small_cnn(), torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert FinerTarget(torch.tensor(3))(model(x)).shape == (4,)
    classes = torch.tensor([1, 2, 3, 4])
    whole = METHODS["gradcam"](model, ["3"])(x, FinerTarget(classes))
    chunked = METHODS["gradcam"](model, ["3"], batch_size=1)(x, FinerTarget(classes))
    torch.testing.assert_close(chunked, whole)
    logits = torch.tensor([[20.0, -20.0, -21.0, -22.0, -30.0]], dtype=torch.float16)
    assert bool(FinerTarget(4)(logits).isfinite().all())  # the look-alikes' softmax underflows in half


def test_a_subclass_naming_its_formula_method_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'method' is now 'reduction'"):

        class Old(METHODS["gradcam"](small_cnn(), ["3"]).__class__.__mro__[1]):  # BaseCAM
            method = "hirescam"

    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(Old(small_cnn(), ["3"])(x, 1), METHODS["hirescam"](small_cnn(), ["3"])(x, 1))


def test_sobel_cam_is_the_luminances_edge_map():
    cv2 = pytest.importorskip("cv2")
    x = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with METHODS["sobelcam"](small_cnn(), ["3"], reshape=None) as cam:
        raw, maps = cam(x, raw=True), cam(x)
        several = cam(x, torch.tensor([[1, 2, 3]] * 2), output_size=(6, 8))
    for n in range(2):
        luminance = (0.299 * x[n, 0] + 0.587 * x[n, 1] + 0.114 * x[n, 2]).numpy()
        gx = cv2.Sobel(luminance, cv2.CV_64F, 1, 0, ksize=3)  # BORDER_REFLECT_101
        gy = cv2.Sobel(luminance, cv2.CV_64F, 0, 1, ksize=3)
        torch.testing.assert_close(
            raw[n], torch.from_numpy(0.5 * np.abs(gx) + 0.5 * np.abs(gy)), rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(maps, norm_up(raw, (12, 16)), rtol=1e-9, atol=1e-9)
    assert several.shape == (2, 3, 6, 8)
    with pytest.raises(ValueError, match="variant: expected 'float' or 'pytorch-grad-cam'"):
        METHODS["sobelcam"](None, variant="canny")
    assert METHODS["sobelcam"](None)(torch.empty(2, 3, 8, 8, device="meta")).device.type == "meta"


class TestSobelAgainstPytorchGradCam:
    pgc_sobel = pytest.importorskip("pytorch_grad_cam.sobel_cam")

    def test_the_pytorch_grad_cam_variant_is_its_sobel_cam_exactly(self):
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
        blocks = np.kron(rng.integers(0, 256, size=(8, 10, 3)), np.ones((4, 4, 1))).astype(np.uint8)
        for image in (noise, blocks):
            theirs = torch.from_numpy(self.pgc_sobel.sobel_cam(image).astype(np.float32))
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            cam = SobelCAM(variant="pytorch-grad-cam")
            torch.testing.assert_close(cam(x, raw=True)[0], theirs, rtol=0, atol=0)
            torch.testing.assert_close(cam(x)[0], (theirs - theirs.min()) / (theirs.max() - theirs.min()))
        with pytest.raises(ValueError, match="x: the pytorch-grad-cam variant takes RGB images"):
            SobelCAM(variant="pytorch-grad-cam")(torch.rand(1, 1, 8, 8))
