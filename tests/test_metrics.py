"""Metrics against hand-worked cases: a model whose score is the image mean (closed-form curves),
maps with known maxima, boxes at image borders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcam_ops.metrics import (
    average_drop_increase,
    boxes_to_mask,
    deletion,
    energy_pointing_game,
    gaussian_blur,
    insertion,
    pointing_game,
)


class MeanScore(nn.Module):
    """softmax(model(x))[:, 0] = mean(x): logits (log m, log(1 - m)) with m the image mean."""

    def forward(self, x):
        m = x.mean((1, 2, 3)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([m.log(), (1 - m).log()], 1)


def test_deletion_of_a_uniform_image_is_linear():
    # Every deleted pixel lowers the mean of an all-ones image by 1 / HW: the curve goes linearly
    # from 1 to 0, and its trapezoid area is exactly 1/2, whatever the map and the step.
    x = torch.ones(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    for step in (1, 5, 64):
        result = deletion(MeanScore(), x, maps, 0, step=step, batch_size=7)
        torch.testing.assert_close(result.scores, 1 - result.fractions.expand(2, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.auc, torch.full((2,), 0.5), atol=1e-5, rtol=0)
        assert result.fractions[-1] == 1 and result.step == step and result.substrate == "zeros"


def test_deletion_follows_the_map_order():
    # Half the image is 1, half 0.5. Deleting the bright half first (a map that points at it) drops
    # the score faster than deleting the dim half first: smaller AUC.
    x = torch.full((1, 1, 4, 4), 0.5)
    x[..., :2, :] = 1.0
    bright_first = torch.zeros(1, 4, 4)
    bright_first[:, :2, :] = 1
    good = deletion(MeanScore(), x, bright_first, 0, step=1).auc
    bad = deletion(MeanScore(), x, 1 - bright_first, 0, step=1).auc
    # closed form with step 1: the curve is a sum of linear pieces; compute it independently
    mean0 = 0.75
    bright_curve = [mean0 - min(k, 8) / 16 - max(k - 8, 0) * 0.5 / 16 for k in range(17)]
    fractions = torch.arange(17) / 16
    torch.testing.assert_close(good, torch.trapezoid(torch.tensor([bright_curve]), fractions, dim=1), atol=1e-5, rtol=0)
    assert float(good) < float(bad)


def test_insertion_starts_from_the_blur_and_ends_at_the_image():
    x = torch.rand(2, 3, 12, 12) * 0.8 + 0.1
    result = insertion(MeanScore(), x, torch.rand(2, 12, 12), [0, 0], step=10)
    torch.testing.assert_close(result.scores[:, 0], gaussian_blur(x).mean((1, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.scores[:, -1], x.mean((1, 2, 3)), atol=1e-5, rtol=0)
    assert result.substrate.startswith("blur")


def test_gaussian_blur_weights():
    # An impulse in the middle of a large image spreads into the normalised 11x11 Gaussian.
    x = torch.zeros(1, 1, 31, 31)
    x[..., 15, 15] = 1
    blurred = gaussian_blur(x)
    coords = torch.arange(11.0) - 5
    g = torch.exp(-(coords**2) / 50)
    expected = torch.outer(g, g) / g.sum() ** 2
    torch.testing.assert_close(blurred[0, 0, 10:21, 10:21], expected)
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0))


def test_pointing_game_hits_and_misses():
    maps = torch.zeros(3, 60, 60)
    maps[0, 30, 30] = 1  # inside the box
    maps[1, 5, 5] = 1  # 15 px tolerance scaled to 60 px = 4.02 px: the box at x >= 8 is 3 px away in x
    maps[2, 50, 50] = 1  # far away
    masks = torch.stack(
        [
            boxes_to_mask([(20, 20, 40, 40)], 60, 60),
            boxes_to_mask([(8, 5, 20, 20)], 60, 60),
            boxes_to_mask([(0, 0, 10, 10)], 60, 60),
        ]
    )
    accuracy, per_class, hits = pointing_game(maps, masks, [1, 1, 2])
    assert hits.tolist() == [True, True, False]
    assert per_class == {1: 1.0, 2: 0.0}
    assert accuracy == 0.5
    strict = pointing_game(maps, masks, [1, 1, 2], tolerance=0)
    assert strict.hits.tolist() == [True, False, False]
    assert strict.per_class == {1: 0.5, 2: 0.0} and strict.accuracy == 0.25


def test_boxes_at_image_borders_are_clipped():
    mask = boxes_to_mask([(-5, -5, 3, 2), (8.5, 9, 20, 20)], 10, 10)
    assert mask[:2, :3].all() and mask.sum() == 6 + 2 * 1
    assert mask[9, 8] and mask[9, 9]
    with pytest.raises(ValueError, match="x1 > x0"):
        boxes_to_mask([(5, 5, 5, 9)], 10, 10)


def test_energy_pointing_game():
    maps = torch.ones(2, 10, 10)
    maps[1] = 0
    masks = boxes_to_mask([(0, 0, 5, 4)], 10, 10).expand(2, -1, -1)
    torch.testing.assert_close(energy_pointing_game(maps, masks), torch.tensor([0.2, 0.0]))


def test_average_drop_and_increase():
    # Class 0 scores mean(x), class 1 scores 1 - mean(x). Masking with a map <= 1 lowers the mean,
    # so class 0 drops and class 1 rises.
    x = torch.full((2, 1, 4, 4), 0.8)
    maps = torch.stack([torch.full((4, 4), 0.5), torch.ones(4, 4)])
    # image 0: Y = 0.8, O = 0.4 -> drop 50 %; image 1: O = Y -> no drop, no increase
    drop, increase = average_drop_increase(MeanScore(), x, maps, 0)
    assert drop == pytest.approx(25.0, abs=1e-4) and increase == 0.0
    # class 1: image 0: Y = 0.2, O = 0.6 -> increase; image 1: unchanged
    drop, increase = average_drop_increase(MeanScore(), x, maps, [1, 1])
    assert drop == pytest.approx(0.0, abs=1e-4) and increase == 50.0


def test_bad_input():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="maps: expected \\[N, h, w\\] with N = 2"):
        deletion(MeanScore(), x, torch.rand(3, 8, 8), 0)
    with pytest.raises(ValueError, match="targets: expected 2 class indices"):
        insertion(MeanScore(), x, torch.rand(2, 8, 8), [0, 1, 1])
    with pytest.raises(ValueError, match="step"):
        deletion(MeanScore(), x, torch.rand(2, 8, 8), 0, step=0)
    with pytest.raises(ValueError, match="same \\[N, H, W\\] shape"):
        pointing_game(torch.rand(2, 8, 8), torch.ones(2, 8, 9, dtype=torch.bool), [0, 1])
