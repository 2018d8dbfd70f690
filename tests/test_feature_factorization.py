"""Deep Feature Factorization: its NMF against scikit-learn's, its concepts and maps against
pytorch-grad-cam's, and the concept picture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.helpers import small_cnn
from torchcam_ops import viz
from torchcam_ops.methods import DeepFeatureFactorization
from torchcam_ops.methods.feature_factorization import nonnegative_factorization
from torchcam_ops.reference import reference_normalize


def nonnegative_rows(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(40, 5, generator=generator) @ torch.rand(5, 30, generator=generator)).relu()


def test_the_factorisation_is_nonnegative_and_fits_better_than_its_start():
    x = nonnegative_rows()
    w, h, sweeps = nonnegative_factorization(x, 5, max_iter=300)
    assert w.shape == (40, 5) and h.shape == (5, 30) and 1 <= sweeps <= 300
    assert float(w.min()) >= 0 and float(h.min()) >= 0
    # a rank-5 non-negative matrix: the factorisation reconstructs it closely
    assert float((x - w @ h).norm() / x.norm()) < 0.02
    w1, h1, _ = nonnegative_factorization(x, 5, max_iter=1)
    assert float((x - w @ h).norm()) < float((x - w1 @ h1).norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_factorisation_is_scikit_learns(dtype):
    sklearn = pytest.importorskip("sklearn.decomposition")
    x = nonnegative_rows(2).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its ConvergenceWarning at max_iter
        model = sklearn.NMF(n_components=6, init="random", random_state=3)
        expected_w = model.fit_transform(x.numpy())
    w, h, sweeps = nonnegative_factorization(x, 6, seed=3)
    assert sweeps == model.n_iter_
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(w.numpy(), expected_w, rtol=0, atol=tolerance * np.abs(expected_w).max())
    np.testing.assert_allclose(h.numpy(), model.components_, rtol=0, atol=tolerance * np.abs(model.components_).max())


def test_bad_options_are_refused_by_name():
    model = small_cnn()
    for options, message in (
        ({"components": 0}, "components: expected a positive int"),
        ({"max_iter": 1.5}, "max_iter: expected a positive int"),
        ({"tol": -1.0}, "tol: expected a finite number >= 0"),
        ({"classifier": 3}, "classifier: expected a callable"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            DeepFeatureFactorization(model, "5", **options)
    with pytest.raises(ValueError, match="target_layer: expected one layer"):
        DeepFeatureFactorization(model, ["3", "5"])
    with pytest.raises(ValueError, match="call 3 does not exist"):
        DeepFeatureFactorization(model.eval(), "5@3")(torch.rand(1, 3, 16, 16))


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_concepts_maps_and_scores_agree(self, resnet18, architecture):
        pytest.importorskip("sklearn")
        if architecture == "resnet18":
            model, layer, classifier = resnet18, resnet18.layer4, resnet18.fc
            x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
        else:
            model = small_cnn().eval()
            layer, classifier = model[5], model[8]
            x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = self.pgc.DeepFeatureFactorization(
                model=model, target_layer=layer, computation_on_concepts=classifier
            )
            concepts, maps, scores = theirs(x, 4)
            del theirs
        with DeepFeatureFactorization(model, layer, components=4, classifier=classifier) as dff:
            ours = dff(x)
        scale = np.abs(concepts).max()
        np.testing.assert_allclose(ours.concepts.T.numpy(), concepts, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(ours.concept_scores.numpy(), scores, rtol=0, atol=1e-4 * np.abs(scores).max())
        # theirs: normalised at the layer's size, then resized; ours the other way round, which a
        # min-max of theirs gives back (bilinear resizing keeps affine maps affine)
        expected = reference_normalize(torch.from_numpy(np.stack(maps))).float()
        assert ours.maps.shape == expected.shape == (2, 4, *x.shape[-2:])
        torch.testing.assert_close(ours.maps, expected, rtol=0, atol=1e-4)


def test_the_concept_picture():
    pytest.importorskip("matplotlib")
    model = small_cnn().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    result = DeepFeatureFactorization(model, "5", components=3, classifier=model[8])(x)
    picture = viz.concepts(x[0], result.maps[0])
    assert picture.size == (32, 32)
    labelled = viz.concepts(x[0], result.maps[0], [f"concept {c}" for c in range(3)])
    assert labelled.size == (64, 32)
    # each pixel takes its strongest concept's colour times that map's value: where every map is 0 the image
    # shows through, dimmed by alpha; where one concept is 1, its colour is blended in
    maps = torch.zeros(2, 8, 8)
    maps[0, :, :4] = 1.0
    image = torch.full((3, 8, 8), 0.5)
    pixels = np.asarray(viz.concepts(image, maps, alpha=0.5)).astype(float)
    np.testing.assert_allclose(pixels[:, 4:], 0.5 * 128, atol=1)
    colour = np.asarray(viz._colormap("gist_rainbow")(0.0)[:3]) * 255
    np.testing.assert_allclose(pixels[:, :4], np.broadcast_to(0.5 * 128 + 0.5 * colour, (8, 4, 3)), atol=1)
    with pytest.raises(ValueError, match="labels: expected 3 labels"):
        viz.concepts(x[0], result.maps[0], ["one"])
