"""target_layers=None: the layer found, what the explainers do with it, and the model left as it was."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import assert_same_state, count_hooks, model_state, small_cnn
from tests.test_reshape import TinyTokens
from torchcam_ops.methods import GradCAM, ScoreCAM
from torchcam_ops.methods.layer_search import FoundLayer, find_target_layer


def test_explainers_find_resnets_layer4_and_log_it(caplog):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="torchcam_ops"), GradCAM(model, None) as found:
        maps = found(x, [1, 2])
    assert [layer.name for layer in found.layers] == ["layer4"]
    assert "target layer: layer4 (found with target_layers=None)" in caplog.text
    with GradCAM(model, "layer4") as named:
        torch.testing.assert_close(maps, named(x, [1, 2]), rtol=0, atol=0)


def test_a_token_model_gets_its_last_token_layer_and_the_tokens_layout():
    model = TinyTokens(True).eval()
    assert find_target_layer(model) == FoundLayer("norm", "tokens")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with ScoreCAM(model, None) as found, ScoreCAM(model, "norm", reshape="tokens") as named:
        assert found.reshape == "tokens"
        torch.testing.assert_close(found(x, [3]), named(x, [3]))


def test_the_layers_after_the_last_token_mixing_are_passed_over():
    # the head reads token 0 only: after the attention-like mixing, the other tokens get no gradient
    class ReadsOneToken(TinyTokens):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            mixed = self.block(tokens).softmax(1).transpose(1, 2) @ tokens  # [N, C, C]: every token mixed
            return self.head(self.norm(mixed)[:, 0])

    assert find_target_layer(ReadsOneToken(False).eval()).name == "block"


def test_the_probe_leaves_a_training_model_as_it_was():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).train()
    before = model_state(model)
    assert find_target_layer(model, torch.rand(2, 3, 12, 12)).name == "2"
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters()) and count_hooks(model) == 0


def test_what_cannot_be_found_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no layer has a spatial output"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.rand(1, 3, 2, 2))
    model = small_cnn()[:6]  # ends in a 4-D map, no class scores
    with pytest.raises(ValueError, match=r"output is not class scores"):
        find_target_layer(nn.Sequential(*model, nn.AdaptiveAvgPool2d(1), nn.Flatten(0)), torch.rand(1, 3, 8, 8))
    fixed = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))  # takes 8 x 8 images only
    with pytest.raises(
        ValueError, match=r"did not run on a \[1, 3, 224, 224\] probe .*find_target_layer\(model, example\)"
    ):
        GradCAM(fixed, None)
    assert count_hooks(fixed) == 0
    assert find_target_layer(fixed, torch.rand(1, 3, 8, 8)) == FoundLayer("0", None)


def test_a_layer_that_runs_twice_is_named_with_its_call():
    class SharedActivation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.first, self.second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.second(self.act(self.first(x)))).mean((2, 3)))

    model = SharedActivation().eval()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert find_target_layer(model, x) == FoundLayer("act@1", None)
    with GradCAM(model, None) as found, GradCAM(model, "act@1") as named:
        torch.testing.assert_close(found(x, [0]), named(x, [0]), rtol=0, atol=0)
