"""Randomisation sanity checks: the similarity measures against scipy/scikit-image, and the tests on
models whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from tests.helpers import count_hooks, model_state, small_cnn
from torchcam_ops.methods import GradCAM
from torchcam_ops.metrics import (
    constant_maps,
    data_randomization,
    default_stages,
    hog_correlation,
    hog_features,
    layers_in_forward_order,
    model_randomization,
    spearman,
    ssim,
)


def _maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 40, 52, dtype=torch.float64, generator=generator)
    b = a + 0.4 * torch.rand(3, 40, 52, dtype=torch.float64, generator=generator)
    a[1, :10] = 0.0  # ties, as ReLU'd maps have
    b[1, :, :6] = 0.0
    a[2] = (a[2] * 10).round() / 10
    return a, b


def _normalised(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min())


def test_spearman_matches_scipy_with_ties():
    a, b = _maps()
    expected = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a.numpy(), b.numpy())]
    torch.testing.assert_close(spearman(a, b), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_ssim_matches_scikit_image():
    a, b = _maps(1)
    expected = [
        structural_similarity(
            _normalised(x), _normalised(y), data_range=1, gaussian_weights=True, use_sample_covariance=False
        )
        for x, y in zip(a.numpy(), b.numpy())
    ]
    torch.testing.assert_close(ssim(a, b), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    assert torch.equal(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_hog_features_match_scikit_image():
    a, _ = _maps(2)
    expected = np.stack(
        [hog(m, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(3, 3), block_norm="L2-Hys") for m in a.numpy()]
    )
    features = hog_features(a)
    assert features.shape == expected.shape
    torch.testing.assert_close(features, torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert torch.allclose(hog_correlation(a, a), torch.ones(3, dtype=torch.float64))


def test_constant_maps_are_flagged_not_averaged():
    a, b = _maps()
    b[0] = 0.25
    assert constant_maps(b).tolist() == [True, False, False]
    assert spearman(a, b)[0].isnan() and hog_correlation(a, b)[0].isnan()
    assert not spearman(a, b)[1:].isnan().any()


def test_similarity_errors_name_the_problem():
    with pytest.raises(ValueError, match="one shape"):
        spearman(torch.rand(2, 8, 8), torch.rand(2, 8, 9))
    with pytest.raises(TypeError, match="a must be a tensor"):
        ssim(np.zeros((2, 8, 8)), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="at least 11 pixels"):
        ssim(torch.rand(1, 8, 30), torch.rand(1, 8, 30))


class EdgeMap:
    """A 'saliency map' from the input alone: the gradient magnitude of the image (no model involved)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        dy = F.pad(gray[..., 1:, :] - gray[..., :-1, :], (0, 0, 0, 1))
        dx = F.pad(gray[..., :, 1:] - gray[..., :, :-1], (0, 1))
        return torch.hypot(dx, dy)[:, 0]


def _classifier_on_one_channel(model: torch.nn.Module, x: torch.Tensor, rank: int = 0) -> torch.nn.Module:
    """small_cnn with class 0 reading only one feature channel (the rank-th most active on x, so that
    no image's map is all zeros): its Grad-CAM map is that channel's activation map."""
    with torch.no_grad():
        activations = model[:5](x)  # the output of the last convolution, the Grad-CAM layer "4"
        channel = int(activations.clamp_min(0).amax((2, 3)).amin(0).argsort(descending=True)[rank])
        model[-1].weight.zero_()
        model[-1].weight[0, channel] = 1.0
    return model


def test_a_map_of_the_input_alone_passes_as_unchanged():
    model = small_cnn()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = model_randomization(model, EdgeMap, x, targets=0)
    assert result.stages == ["output layer", "last half", "all layers"]
    assert torch.equal(result.spearman, torch.ones_like(result.spearman))
    assert torch.allclose(result.ssim, torch.ones_like(result.ssim))


def test_gradcam_decorrelates_when_the_classifier_is_randomised():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _classifier_on_one_channel(small_cnn(), x)

    def sanity(seed: int, stages: list):
        return model_randomization(model, lambda m: GradCAM(m, "5"), x, targets=0, stages=stages, seed=seed)

    # seed 3 draws class-0 weights that leave every map non-constant: the maps no longer follow the channel
    result = sanity(3, [("classifier", ["8"])])
    assert result.layers == [["8"]] and not result.constant.any()
    assert float(result.mean("spearman")[0]) < 0.5
    assert float(result.mean("ssim")[0]) < 0.5
    # seed 0 draws weights that are negative on every map: all-zero maps, reported as constant, not NaN
    all_zero = sanity(0, [("classifier", ["8"])])
    assert all_zero.constant.all() and all_zero.cell(0) == "constant"
    # nothing re-initialised: the maps come back exactly
    same = sanity(0, [("nothing", [])])
    assert torch.equal(same.spearman, torch.ones_like(same.spearman)) and same.cell(0) == "1.00"


def test_cascading_adds_layers_and_independent_takes_one_group_each():
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32)
    assert layers_in_forward_order(model, x) == ["0", "2", "4", "8"]
    stages = [("classifier", ["8"]), ("last conv", ["4"]), ("first convs", ["2", "0"])]
    original = {name: model.get_submodule(name).weight.clone() for name in ("0", "2", "4", "8")}

    def recording(seen: list):
        def make(m):  # which layers of the explained model differ from the trained ones
            seen.append(sorted(n for n, w in original.items() if not torch.equal(m.get_submodule(n).weight, w)))
            return EdgeMap(m)

        return make

    seen: list = []
    cascade = model_randomization(model, recording(seen), x, 0, stages=stages)
    assert cascade.layers == [["8"], ["8", "4"], ["8", "4", "2", "0"]]
    assert seen == [[], ["8"], ["4", "8"], ["0", "2", "4", "8"]]
    seen.clear()
    independent = model_randomization(model, recording(seen), x, 0, stages=stages, cascading=False)
    assert independent.layers == [["8"], ["4"], ["2", "0"]]
    assert seen == [[], ["8"], ["4"], ["0", "2"]]
    assert cascade.maps.shape == (4, 2, 32, 32)


def test_default_stages_group_the_layers_from_the_output_down():
    names = [f"l{i}" for i in range(10)]
    stages = default_stages(names)
    assert [name for name, _ in stages] == ["output layer", "last quarter", "last half", "all layers"]
    assert [group for _, group in stages] == [["l9"], ["l7", "l8"], ["l5", "l6"], [f"l{i}" for i in range(5)]]
    with pytest.raises(ValueError, match="nothing to randomise"):
        default_stages([])


def test_the_users_model_and_random_state_come_back_unchanged():
    model = small_cnn()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    x = torch.rand(2, 3, 32, 32)
    rng = torch.get_rng_state()
    model_randomization(model, lambda m: GradCAM(m, "4"), x)
    model_randomization(model, lambda m: GradCAM(m, "4"), x, cascading=False)
    after = model_state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert count_hooks(model) == 0
    assert torch.equal(torch.get_rng_state(), rng)

    calls = []

    def failing_at_the_second_stage(m):
        calls.append(m)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return GradCAM(m, "4")

    with pytest.raises(RuntimeError, match="boom"):
        model_randomization(model, failing_at_the_second_stage, x)
    assert count_hooks(model) == 0 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[0][k], v) for k, v in model.state_dict().items())


def test_a_model_in_training_mode_keeps_its_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    ).train()
    before = model_state(model)
    x = torch.rand(3, 3, 34, 34)
    rng = torch.get_rng_state()
    model_randomization(model, lambda m: GradCAM(m, "2"), x)  # targets from the model's own top classes
    after = model_state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_stages_and_targets_are_clear_errors():
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="does not have.*'fc'"):
        model_randomization(model, EdgeMap, x, stages=[("head", ["fc"])])
    with pytest.raises(ValueError, match="targets: expected 2 class indices"):
        model_randomization(model, EdgeMap, x, targets=[1, 2, 3])
    with pytest.raises(ValueError, match="non-empty batch"):
        model_randomization(model, EdgeMap, x[:0])
    with pytest.raises(TypeError, match="must be a list of module names"):
        model_randomization(model, EdgeMap, x, stages=[("head", "84")])
    with pytest.raises(ValueError, match="non-empty list"):
        model_randomization(model, EdgeMap, x, stages=[])
    with pytest.raises(ValueError, match="reset_parameters"):
        model_randomization(model, EdgeMap, x, stages=[("relu", ["1"])])
    with pytest.raises(ValueError, match="non-empty batch"):
        data_randomization(model, model, EdgeMap, x[0])


def test_data_randomization_compares_two_models_maps():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = _classifier_on_one_channel(small_cnn(), x)
    itself = data_randomization(model, model, lambda m: GradCAM(m, "4"), x, targets=0)
    assert itself.stages == ["permuted labels"]
    assert torch.equal(itself.spearman, torch.ones(1, 4, dtype=torch.float64))
    other = _classifier_on_one_channel(small_cnn(), x, rank=1)
    moved = data_randomization(model, other, lambda m: GradCAM(m, "4"), x, targets=0)
    assert float(moved.mean()[0]) < 0.9


def test_localization_model_trained_on_permuted_labels_ships():
    """The permuted-label model learned nothing about the objects: chance on test canvases (1 pair in
    45), where the model trained on the true labels finds both classes of most canvases."""
    from torchcam_ops.localization import load_model, make_canvases

    canvases = make_canvases(200, split="test", seed=1)
    truth = canvases.labels.sort(1).values
    accuracy = {}
    for shuffled in (False, True):
        with torch.no_grad():
            top2 = load_model(shuffled_labels=shuffled)(canvases.images).topk(2, dim=1).indices.sort(1).values
        accuracy[shuffled] = float((top2 == truth).all(1).float().mean())
    assert accuracy[False] > 0.6 and accuracy[True] < 0.1
