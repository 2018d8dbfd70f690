"""The training example (examples/explanation_loss.py): its loss terms and that the explanation loss
trains every layer of the network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from torchcam_ops.localization import TARGET_LAYER, load_model, make_canvases
from torchcam_ops.methods import GradCAM

_spec = importlib.util.spec_from_file_location(
    "explanation_loss", Path(__file__).resolve().parent.parent / "examples" / "explanation_loss.py"
)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def test_box_masks_and_energy_outside_by_hand():
    masks = example.box_masks(torch.tensor([[[1, 0, 3, 2], [0, 2, 4, 4]]]), 4)  # x0, y0, x1, y1
    assert masks.shape == (1, 2, 4, 4)
    assert torch.equal(masks[0, 0], torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).float())
    assert torch.equal(masks[0, 1], torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]).float())
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 0, 1] = 3.0  # inside the first box
    maps[0, 0, 3, 3] = 1.0  # outside
    maps[0, 1, 3, 0] = 2.0  # inside the second box
    torch.testing.assert_close(example.energy_outside(maps, masks), torch.tensor([[0.25, 0.0]]))


def test_the_explanation_loss_reaches_every_layer():
    model = load_model()
    canvases = make_canvases(4, split="train", seed=3)
    masks = example.box_masks(canvases.boxes, 96)
    with GradCAM(model, [TARGET_LAYER]) as cam:
        classification, explanation = example.losses(model, cam, canvases, masks)
    assert 0 < explanation.item() < 1 and classification.item() > 0
    grads = torch.autograd.grad(
        explanation, [model.features[0].weight, model.features[12].weight, model.classifier.weight]
    )
    # before the layer (through A), at it, and after it (second order, through G)
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
