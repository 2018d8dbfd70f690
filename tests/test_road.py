"""ROAD: the imputation against its defining equations in float64 (both solvers), the removal masks
against numpy's percentiles, and the scores against pytorch-grad-cam's ROAD on resnet18 and a small CNN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from tests.helpers import small_cnn
from torchcam_ops.metrics import PERCENTILES, ROADResult, noisy_linear_imputation, removal_masks, road

WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6, (1, -1): 1 / 12}
WEIGHTS |= {(1, 0): 1 / 6, (1, 1): 1 / 12}


def smooth_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth maps in [0, 1] without ties (an upsampled map repeats its border values: a little noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return (smooth + 1e-3 * torch.rand(n, size, size, generator=generator)) / 1.001


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_each_imputed_pixel_is_the_weighted_mean_of_its_neighbours(solver):
    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    removed = torch.rand(2, 12, 10, generator=torch.Generator().manual_seed(2)) < 0.6
    removed[:, 0, 0] = True  # a corner: three neighbours inside the image
    imputed = noisy_linear_imputation(x, removed, noise=0.0, solver=solver, tolerance=1e-12)
    assert imputed.dtype == torch.float64
    torch.testing.assert_close(
        imputed[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)], rtol=0, atol=0
    )
    for b, i, j in removed.nonzero().tolist():
        total, mean = 0.0, torch.zeros(3, dtype=torch.float64)
        for (dy, dx), weight in WEIGHTS.items():
            if 0 <= i + dy < 12 and 0 <= j + dx < 10:
                total += weight
                mean += weight * imputed[b, :, i + dy, j + dx]
        torch.testing.assert_close(imputed[b, :, i, j], mean / total, rtol=1e-7, atol=1e-9)


def test_the_two_solvers_agree_and_the_noise_is_reproducible_and_only_where_removed():
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    removed = removal_masks(smooth_maps(3, 24, 4), (70,), "most")[:, 0]
    direct = noisy_linear_imputation(x, removed, noise=0.0, solver="direct")
    iterative = noisy_linear_imputation(x, removed, noise=0.0, solver="cg")
    torch.testing.assert_close(iterative, direct, rtol=1e-5, atol=1e-5)
    noisy = noisy_linear_imputation(x, removed, generator=torch.Generator().manual_seed(5))
    again = noisy_linear_imputation(x, removed, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(noisy, again, rtol=0, atol=0)
    difference = (noisy - direct)[removed[:, None].expand_as(x)]
    assert 0.008 < float(difference.std()) < 0.012  # noise of standard deviation 0.01
    assert float((noisy - direct)[~removed[:, None].expand_as(x)].abs().max()) == 0


def test_removal_masks_follow_numpys_percentiles():
    maps = smooth_maps(2, 32, 6)
    most, least = removal_masks(maps, PERCENTILES, "most"), removal_masks(maps, PERCENTILES, "least")
    for n in range(2):
        for k, p in enumerate(PERCENTILES):
            values = maps[n].numpy()
            assert np.array_equal(most[n, k].numpy(), ~(values < np.percentile(values, p)))
            assert np.array_equal(least[n, k].numpy(), ~((1 - values) < np.percentile(1 - values, p)))
            assert abs(float(most[n, k].float().mean()) - (1 - p / 100)) < 0.01


def test_ties_are_ranked_by_position_where_the_peers_threshold_removes_every_pixel():
    # A map that is 0 on 30% of the image (a ReLU'd CAM): at p = 10 the 10th percentile is 0, and
    # "at or above it" is every pixel, which leaves the imputation nothing to start from. Ranked
    # removal takes the 90% most relevant: all of the positive pixels and the first zeros by position.
    maps = smooth_maps(1, 20, 10) + 0.1
    maps[0, 14:] = 0  # 6 of 20 rows
    most = removal_masks(maps, (10, 50), "most")[0]
    values = maps[0].numpy()
    assert bool((values >= np.percentile(values, 10)).all())  # the peer's rule: everything removed
    assert int(most[0].sum()) == 400 - math.ceil(0.1 * 399) == 360
    assert bool(most[0][:14].all()) and int(most[0][14:].sum()) == 80  # the first 80 zeros, row-major
    assert bool(most[0][14:].flatten()[:80].all())
    # at p = 50 there are no ties at the threshold: the peer's pixels
    assert np.array_equal(most[1].numpy(), values >= np.percentile(values, 50))
    # and the scores are defined
    result = road(small_cnn(), torch.rand(1, 3, 20, 20), maps, 1, noise=0.0)
    assert bool(result.most_relevant_first.isfinite().all() & result.least_relevant_first.isfinite().all())


def test_road_refuses_bad_input():
    model, x = small_cnn(), torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match=r"percentiles: expected numbers in \(0, 100\)"):
        road(model, x, maps, [1, 2], percentiles=(0, 50))
    with pytest.raises(ValueError, match="maps: expected"):
        road(model, x, maps[0], [1, 2])
    with pytest.raises(ValueError, match="targets: expected 2 class indices"):
        road(model, x, maps, [1, 2, 3])
    with pytest.raises(ValueError, match="removed: every pixel of an image is removed"):
        noisy_linear_imputation(x, torch.ones(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="solver: expected 'auto', 'direct' or 'cg'"):
        noisy_linear_imputation(x, torch.zeros(2, 16, 16, dtype=torch.bool), solver="lu")


def test_a_map_on_the_evidence_scores_better_than_its_inverse():
    # A model that sums the top-left quarter: removing it first (MoRF) moves the logit, keeping it
    # (LeRF) does not; the inverse map has the opposite scores, so its combined score is lower.
    class TopLeft(torch.nn.Module):
        def forward(self, x):
            score = x[:, :, :8, :8].mean((1, 2, 3)) * 10
            return torch.stack([score, -score], 1)

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)) + 1  # bright: imputation changes it
    x[:, :, 8:, :] = 0
    x[:, :, :, 8:] = 0
    good = torch.zeros(2, 16, 16)
    good[:, :8, :8] = 1
    good += torch.linspace(0, 0.1, 256).view(16, 16)  # no ties
    ours = road(TopLeft(), x, good, 0, noise=0.0)
    inverse = road(TopLeft(), x, 1.1 - good, 0, noise=0.0)
    assert isinstance(ours, ROADResult) and ours.most_relevant_first.shape == (2, 9)
    assert bool((ours.combined > inverse.combined).all())


class TestAgainstPytorchGradCam:
    pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_road_scores_agree_without_noise(self, architecture, monkeypatch):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        torch.manual_seed(0)
        if architecture == "resnet18":
            model, size = torchvision.models.resnet18(weights=None, num_classes=10).eval(), 64
        else:
            model, size = small_cnn(), 32
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(8))
        maps = smooth_maps(2, size, 9)
        ours = road(model, x, maps, [1, 4], noise=0.0)
        # their imputation adds torch.randn_like noise: zero here, so both solve the same systems
        monkeypatch.setattr(torch, "randn_like", lambda t, *args, **kwargs: torch.zeros_like(t))
        targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
        morf = np.stack(
            [self.pgc_road.ROADMostRelevantFirst(p)(x, maps.numpy(), targets, model) for p in PERCENTILES], 1
        )
        lerf = np.stack(
            [self.pgc_road.ROADLeastRelevantFirst(p)(x, maps.numpy(), targets, model) for p in PERCENTILES], 1
        )
        combined = self.pgc_road.ROADCombined(list(PERCENTILES))(x, maps.numpy(), targets, model)
        assert float(np.abs(morf).max()) > 1e-3, "the removals must move the logits"
        torch.testing.assert_close(ours.most_relevant_first, torch.from_numpy(morf), rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.least_relevant_first, torch.from_numpy(lerf), rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.combined, torch.from_numpy(combined), rtol=0, atol=1e-4)
