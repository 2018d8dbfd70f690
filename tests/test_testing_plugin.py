"""The saliency assertions and the pytest plugin, as a user's test suite would use them."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from torchcam_ops.testing import assert_explanation_in_region, explanation_energy


def corner_detector() -> nn.Module:
    """Class 0 responds to the image's top-left quadrant: a 1x1 conv, then a linear layer that
    reads only the top-left 4x4 of the 8x8 feature map."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            f = self.conv(x)
            return torch.stack([f[:, 0, :4, :4].mean((1, 2)), f[:, 0, 4:, 4:].mean((1, 2))], 1)

    return Net().eval()


def test_energy_and_assertion():
    model = corner_detector()
    x = torch.rand(1, 8, 8) + 0.5
    energy = explanation_energy(model, x, 0, (0, 0, 4, 4), method="hirescam", target_layers="conv")
    assert energy == pytest.approx(1.0, abs=1e-6)
    assert assert_explanation_in_region(model, x, 0, (0, 0, 4, 4), method="hirescam", target_layers="conv") > 0.99
    with pytest.raises(
        AssertionError,
        match=r"hirescam explanation of class 0: 0\.0% of its energy lies in "
        r"\[4, 4, 8, 8\], expected at least 50%",
    ):
        assert_explanation_in_region(model, x, 0, (4, 4, 8, 8), method="hirescam", target_layers="conv")
    with pytest.raises(ValueError, match="one image"):
        assert_explanation_in_region(model, torch.rand(2, 1, 8, 8), 0, (0, 0, 4, 4), target_layers="conv")


def test_plugin_fixtures_in_a_users_suite(pytester):
    pytester.makepyfile(
        """
        import torch
        from tests_helper import corner_detector

        def test_looks_top_left(assert_explanation_in_region):
            x = torch.rand(1, 8, 8) + 0.5
            assert_explanation_in_region(corner_detector(), x, 0, (0, 0, 4, 4), method="hirescam",
                                         target_layers="conv", min_energy=0.9)

        def test_looks_bottom_right_fails(assert_explanation_in_region):
            x = torch.rand(1, 8, 8) + 0.5
            assert_explanation_in_region(corner_detector(), x, 0, (4, 4, 8, 8), method="hirescam",
                                         target_layers="conv")

        def test_explain_fixture(torchcam_explain):
            maps = torchcam_explain(corner_detector(), torch.rand(2, 1, 8, 8), "gradcam", target_layers="conv")
            assert maps.shape == (2, 8, 8)
        """
    )
    # the user's suite imports the same model as this file, from a module of its own
    pytester.makepyfile(tests_helper="import torch\nfrom torch import nn\n\n\n" + inspect.getsource(corner_detector))
    result = pytester.runpytest_subprocess("-p", "no:torchcam_ops", "-p", "pytest_torchcam_ops", "-q")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*0.0% of its energy lies in [[]4, 4, 8, 8[]]*"])
