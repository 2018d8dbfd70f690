"""FullGrad: its decomposition (the input and bias terms add up to the class score), the authors'
post-processing in float64, pytorch-grad-cam's FullGrad, and its contracts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.helpers import assert_same_state, model_state, small_cnn
from torchcam_ops.methods import METHODS, FullGrad, explain
from torchcam_ops.methods.fullgrad import bias_layers, layer_bias
from torchcam_ops.reference import reference_normalize


def resnet18_with_statistics() -> nn.Module:
    """resnet18 in eval mode with random running statistics: every batch normalisation has a bias of
    its own (beta - mean gamma / sqrt(var + eps)), not just beta."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def resnet18():
    return resnet18_with_statistics()


def outputs_and_gradients(model, x, classes):
    """Every bias layer's outputs (hooks, every call), the input, and the gradients of the class
    logits to them, in x's dtype; on a copy of the model without in-place ReLUs (which would change
    the hooked outputs after the fact)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    outputs = []
    handles = [
        layer.module.register_forward_hook(lambda module, inputs, output: outputs.append((module, output)))
        for layer in bias_layers(model)
    ]
    try:
        inputs = x.clone().requires_grad_(True)
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    score = logits.gather(1, torch.tensor(classes)[:, None]).sum()
    grads = torch.autograd.grad(score, [inputs, *(out for _, out in outputs)])
    return logits.detach(), inputs.detach(), grads[0], [(m, g) for (m, _), g in zip(outputs, grads[1:])], model


def test_the_input_and_bias_terms_add_up_to_the_class_score(resnet18):
    # FullGrad's completeness on a piecewise-linear network: f(x) = x . grad_x f + sum_l b_l . grad_{z_l} f
    model = resnet18.double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes = [3, 5]
    logits, inputs, input_grad, layer_grads, model = outputs_and_gradients(model, x, classes)
    total = (input_grad * inputs).sum((1, 2, 3))
    for module, grad in layer_grads:
        total = total + (grad * layer_bias(module)[:, None, None]).sum((1, 2, 3))
    total = total + model.fc.bias[classes].detach()  # the classifier's own bias
    torch.testing.assert_close(total, logits.gather(1, torch.tensor(classes)[:, None])[:, 0], rtol=1e-10, atol=1e-10)
    resnet18.float()


@pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
def test_the_original_variant_is_the_authors_post_processing(resnet18, architecture):
    model = resnet18 if architecture == "resnet18" else small_cnn().eval()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    model.double()
    with FullGrad(model) as explainer:
        raw, maps = explainer(x.double(), [3, 5], raw=True), explainer(x.double(), [3, 5])
    _, inputs, input_grad, layer_grads, _ = outputs_and_gradients(model, x.double(), [3, 5])
    model.float()

    def post(term):  # the authors' _postProcess: |.|, one min-max per image over all channels
        term = term.abs()
        term = term - term.flatten(1).min(1).values[:, None, None, None]
        return term / (term.flatten(1).max(1).values[:, None, None, None] + 1e-6)

    expected = post(input_grad * inputs).sum(1)
    for module, grad in layer_grads:
        term = post(grad * layer_bias(module)[:, None, None])
        expected = expected + F.interpolate(term, size=(48, 48), mode="bilinear", align_corners=True).sum(1)
    assert raw.dtype == torch.float64
    torch.testing.assert_close(raw, expected, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(maps, reference_normalize(expected), rtol=0, atol=1e-9)


def test_targets_chunks_and_state():
    model = small_cnn().eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = model_state(model)
    with FullGrad(model) as explainer:
        several = explainer(x, torch.tensor([[1, 2], [0, 4], [6, 6]]))
        one = explainer(x, [1, 0, 6])
        top = explainer(x)
        callable_target = explainer(x, lambda logits: logits[:, [1, 0]].sum(1))
    with FullGrad(model, batch_size=2) as explainer:
        chunked = explainer(x, [1, 0, 6], output_size=(16, 20))
    assert several.shape == (3, 2, 32, 32) and one.shape == top.shape == (3, 32, 32)
    torch.testing.assert_close(several[:, 0], one, rtol=0, atol=1e-6)
    assert chunked.shape == (3, 16, 20)
    assert callable_target.shape == (3, 32, 32) and float(callable_target.amax((1, 2)).min()) == 1.0
    assert_same_state(before, model_state(model))
    with pytest.raises(RuntimeError, match="closed"):
        explainer(x)


def test_a_layer_that_runs_twice_adds_two_terms_and_bad_input_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.conv(torch.relu(self.conv(x))).mean((2, 3)))

    torch.manual_seed(4)
    model = Twice().eval()
    x = torch.rand(1, 3, 8, 8)
    logits = model(x)
    _, inputs, input_grad, layer_grads, _ = outputs_and_gradients(model, x, [2])
    assert len(layer_grads) == 2  # both calls
    total = (input_grad * inputs).sum() + sum((g * layer_bias(m)[:, None, None]).sum() for m, g in layer_grads)
    torch.testing.assert_close(total + model.head.bias[2], logits[0, 2].detach(), rtol=1e-5, atol=1e-5)
    assert FullGrad(model)(x, [2]).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="model: FullGrad sums the bias gradients"):
        FullGrad(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)))
    with pytest.raises(ValueError, match="variant: expected 'original' or 'pytorch-grad-cam'"):
        FullGrad(model, variant="paper")
    with pytest.raises(ValueError, match="output_size"):
        FullGrad(model)(x, output_size=0)


def test_registered_without_a_target_layer():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert type(METHODS["fullgrad"](model, None)) is FullGrad
    torch.testing.assert_close(
        explain(model, x, "fullgrad", target_layers=None, targets=[1, 2]), FullGrad(model)(x, [1, 2])
    )


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_the_pytorch_grad_cam_variant_agrees(self, resnet18, architecture):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = resnet18 if architecture == "resnet18" else small_cnn().eval()
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
        with self.pgc.FullGrad(model=model, target_layers=[]) as cam:
            expected = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (3, 5)]))
        with FullGrad(model, variant="pytorch-grad-cam") as explainer:
            ours = explainer(x, [3, 5])
        assert float(expected.std(dim=(1, 2)).min()) > 0.05
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
        original = FullGrad(model)(x, [3, 5])
        assert float((original - expected).abs().max()) > 1e-2  # per image, corner-aligned: not theirs
