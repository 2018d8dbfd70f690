"""TSGB's promise on the networks people use: relevance conserved through every layer of torchvision's
classification families (random weights, fixed seed, float64, eval mode with their in-place
activations) and the shipped EfficientNet-Lite0, checked against the classifier's z+ computed apart;
the budget helper that names the layers which break it."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from torchcam_ops.methods import TSGB
from torchcam_ops.nn import relevance_budget

# (family, constructor, input size): the smallest size each family takes
FAMILIES = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), 64),
    "vgg11": (lambda: tvm.vgg11(num_classes=10), 64),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), 64),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=10), 64),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), 64),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), 64),
    "efficientnet_v2_s": (lambda: tvm.efficientnet_v2_s(num_classes=10), 128),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(num_classes=10), 64),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), 64),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), 64),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(num_classes=10), 64),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(num_classes=10), 64),
    "googlenet": (lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=False), 64),
    "inception_v3": (lambda: tvm.inception_v3(num_classes=10, aux_logits=False, init_weights=False), 160),
}


def _model(family: str) -> tuple[nn.Module, torch.Tensor]:
    """The family's model in float64 and eval mode, its batch norms' statistics taken from one batch of
    random images (the default statistics shrink a random network's activations towards 0, where
    rounding, not the rules, would decide the budget), and an image."""
    constructor, size = FAMILIES[family]
    torch.manual_seed(0)
    model = constructor().double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    images = torch.rand(5, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.train()(images[1:])
    return model.eval(), images[:1]


def _z_plus(model: nn.Module, x: torch.Tensor, target: int) -> float:
    """h . W+[c] at the classifier, from a plain forward pass: the seed TSGB-FC gives with beta=0."""
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen = []
    handle = classifier.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return float((seen[0] @ classifier.weight.detach().clamp_min(0)[target]).sum())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_relevance_is_conserved_through_every_layer(family):
    model, x = _model(family)
    target = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer kind has a rule: no fallback warning
        warnings.filterwarnings("ignore", "TSGB: the model has no nn.Linear classifier")  # squeezenet
        zero = relevance_budget(model, x, target, beta=0.0)
        one = relevance_budget(model, x, target, beta=1.0)
    if family == "squeezenet1_1":  # no linear classifier: the seed is the logit, which a conv computes
        with torch.no_grad():
            expected = float(model(x)[0, target])
    else:
        expected = _z_plus(model, x, target)
    assert zero.seed == pytest.approx(expected, rel=1e-9)
    assert zero.conserved(1e-4), (zero.seed, zero.input, zero.lossy_layers())
    assert abs(zero.input - expected) <= 1e-4 * abs(expected)
    assert zero.input_absolute > 0
    assert one.conserved(1e-4), (one.seed, one.input, one.lossy_layers())
    if family != "squeezenet1_1":
        assert abs(one.input) <= 1e-4 * one.input_absolute
    assert not zero.lossy_layers() and abs(zero.between_layers) <= 1e-4 * zero.scale


def test_the_explainer_runs_on_every_family_with_in_place_activations():
    # efficientnet_b0 (SiLU(inplace=True) after the squeeze-excitation conv) raised in autograd before
    for family in ("efficientnet_b0", "mobilenet_v3_small", "densenet121", "convnext_tiny"):
        model, x = _model(family)
        model = model.float()
        with TSGB(model) as tsgb:
            maps = tsgb(x.float(), 3)
        assert maps.shape == (1, *x.shape[2:]) and torch.isfinite(maps).all()
        assert 0 <= float(maps.min()) and float(maps.max()) == 1.0


def test_relu6_passes_the_relevance_of_its_strongest_units():
    # Activations above 6, where ReLU6's gradient is 0: the plain gradient would pass nothing from them.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).double()
    with torch.no_grad():
        model[0].weight.abs_().mul_(20)
        model[4].weight.abs_()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert (model[0](x) > 6).float().mean() > 0.5
    budget = relevance_budget(model, x, 1, beta=0.0)
    assert budget.conserved(1e-9)
    assert budget.input == pytest.approx(_z_plus(model, x, 1), rel=1e-9)


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def test_a_layer_without_a_rule_is_named_in_a_warning_and_in_the_budget():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), Square(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="TSGB: no relevance rule for Square"):
        budget = relevance_budget(model, x, 0)
    # the gradient of x * x is 2x: the layer doubles the relevance it passes on
    assert not budget.conserved()
    [square] = budget.lossy_layers()
    assert (square.name, square.kind) == ("1", "Square")
    assert square.passed == pytest.approx(2 * square.received, rel=1e-9)
    assert budget.lost == pytest.approx(sum(layer.lost for layer in budget.layers), rel=1e-9)
    with pytest.warns(UserWarning, match="Square"), TSGB(model) as tsgb:
        tsgb(x, 0)


def test_the_budget_leaves_the_model_as_it_was_and_checks_its_arguments():
    model, x = _model("resnet18")
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    relevance_budget(model, x, 0)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    with pytest.raises(ValueError, match=r"target: expected a class in \[0, 10\)"):
        relevance_budget(model, x, 10)
    with pytest.raises(ValueError, match="x: expected a batch"):
        relevance_budget(model, x[:0], 0)
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        relevance_budget(model, x.long(), 0)
    with pytest.raises(ValueError, match="classifier: the model has no submodule 'head'"):
        relevance_budget(model, x, 0, classifier="head")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


def test_relevance_is_conserved_on_the_shipped_model_and_photos():
    import skimage.data

    from torchcam_ops import models
    from torchcam_ops.cli import DEFAULT_PHOTOS

    model, preprocess = models.load("efficientnet_lite0")
    model = model.double().eval()
    for name in DEFAULT_PHOTOS:
        x = preprocess(getattr(skimage.data, name)())[None].double()
        with torch.no_grad():
            target = int(model(x).argmax())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            zero = relevance_budget(model, x, target, beta=0.0)
        assert zero.conserved(1e-4), (name, zero.seed, zero.input, zero.lossy_layers())
        assert zero.input == pytest.approx(_z_plus(model, x, target), rel=1e-4)
        one = relevance_budget(model, x, target, beta=1.0)
        assert abs(one.input) <= 1e-4 * one.input_absolute, (name, one.input, one.input_absolute)


class StandardisedConv2d(nn.Conv2d):
    """A weight-standardised convolution (BiT, NFNet): its weight is computed in every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.weight.mean((1, 2, 3), keepdim=True)
        std = self.weight.std((1, 2, 3), keepdim=True)
        return self._conv_forward(x, (self.weight - mean) / std, self.bias)


def _cnn(conv: type[nn.Conv2d] = nn.Conv2d) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            conv(3, 6, 3, padding=1),
            nn.ReLU(),
            conv(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )
        .double()
        .eval()
    )


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "standardised"])
def test_layers_whose_weight_is_computed_per_call_take_the_rules(kind):
    from torch.nn.utils import parametrizations

    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    if kind == "standardised":
        model = _cnn(StandardisedConv2d)
        plain = _cnn()
        with torch.no_grad():
            for ours, theirs in zip(model, plain):
                if isinstance(ours, nn.Conv2d):
                    w = ours.weight
                    theirs.weight.copy_((w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True))
    else:
        model = _cnn()
        wrap = getattr(parametrizations, kind)
        for index in (0, 2, 6):
            wrap(model[index])
        model.eval()
        with torch.no_grad():
            model(x)  # spectral norm's power iteration settles in eval mode on its stored vectors
        plain = _cnn()
        with torch.no_grad():
            for index in (0, 2, 6):
                plain[index].weight.copy_(model[index].weight)
    with TSGB(model) as ours, TSGB(plain) as theirs:
        torch.testing.assert_close(ours(x, [1, 3], raw=True), theirs(x, [1, 3], raw=True))
    assert relevance_budget(model, x, 1).conserved(1e-6)


class _Split(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2], x[:, 2:]


class _SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.split, self.relu = nn.Conv2d(3, 4, 3, padding=1), _Split(), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.split(self.conv(x))
        return self.fc(self.pool(self.relu(input=torch.cat([a, b], 1))).flatten(1))


def test_the_budget_follows_layers_that_return_tuples_or_take_keyword_inputs():
    torch.manual_seed(0)
    model = _SplitNet().double().eval()
    with pytest.warns(UserWarning, match="_Split"):  # a leaf without a rule, named
        budget = relevance_budget(model, torch.rand(1, 3, 8, 8, dtype=torch.float64), 1)
    assert budget.conserved(1e-9) and not budget.lossy_layers() and abs(budget.between_layers) < 1e-9
    received = {layer.name: layer.received for layer in budget.layers}
    assert received["split"] != 0 and received["relu"] != 0
