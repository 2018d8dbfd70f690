"""The "add a method" walkthrough of docs/design.md, run as written: its class, defined from the doc's
code block, explains like every method (T targets per image, raw maps) and equals its formula computed
independently in float64."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from tests.helpers import small_cnn
from torchcam_ops.methods.base import BaseCAM, LayerEvidence
from torchcam_ops.reference import reference_normalize

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def walkthrough_class() -> type[BaseCAM]:
    section = DESIGN.read_text().split("## Add a method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the walkthrough has one code block"
    code = "\n".join(line[3:] if line.startswith("   ") else line for line in blocks[0].splitlines())
    namespace = {"BaseCAM": BaseCAM, "LayerEvidence": LayerEvidence, "Tensor": torch.Tensor, "torch": torch}
    exec(compile(code, str(DESIGN), "exec"), namespace)
    (cls,) = [
        value
        for value in namespace.values()
        if isinstance(value, type) and value not in (BaseCAM, LayerEvidence) and issubclass(value, BaseCAM)
    ]
    return cls


def squared_gradient_cam(model, layer, x, classes):
    """w_k = mean_hw G_k^2, L = norm(Up(ReLU(sum_k w_k A_k))), with a forward hook and autograd in float64."""
    model = model.double()
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        logits = model(x.double())
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), captured["a"])
    raw = (gradient.square().mean((2, 3))[:, :, None, None] * captured["a"]).sum(1).relu()
    up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return reference_normalize(up, torch.float64)


def test_the_walkthrough_method_explains_as_its_formula_says():
    torch.manual_seed(0)
    cls = walkthrough_class()
    model, x = small_cnn().eval(), torch.rand(3, 3, 16, 16)
    classes = torch.tensor([1, 4, 6])
    with cls(model, ["3"]) as cam:
        maps = cam(x, classes)
        several = cam(x, torch.stack([classes, classes.flip(0)], 1))
        raw = cam(x, classes, raw=True)
    reference_model = small_cnn()  # the same seeded weights, turned float64 by the reference
    expected = squared_gradient_cam(reference_model, reference_model[3], x, classes)
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-4)
    assert maps.shape == (3, 16, 16) and several.shape == (3, 2, 16, 16)
    torch.testing.assert_close(several[:, 0], maps)
    assert raw.shape[0] == 3 and raw.dim() == 3
