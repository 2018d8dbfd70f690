"""Agreement with pytorch-grad-cam (installed by ``./run test``): the six Grad-CAM variants on
vision transformers through ``reshape``, and the gradient-free CAMs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import small_cnn
from torchcam_ops import cam_postprocess
from torchcam_ops.methods import METHODS, AblationCAM, EigenCAM, ScoreCAM

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

GRADCAM_VARIANTS = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam_elementwise": pgc.GradCAMElementWise,
}


def vit_tokens_to_maps(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, 14 x 14 grid, channels first."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), 14, 14, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_to_maps(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


def theirs(cls, model, layer, x, classes, **options):
    with cls(model=model, target_layers=[layer], **options) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes]))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    # torchvision initialises the head to zeros: every class score would be 0 and every map empty
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("method", list(GRADCAM_VARIANTS))
def test_vit_tokens_agree_with_pytorch_grad_cam(vit, images, method):
    layer = vit.encoder.layers[-1].ln_1
    classes = [3, 500]
    with METHODS[method](vit, [layer], reshape="tokens") as explainer:
        ours = explainer(images, classes)
    expected = theirs(GRADCAM_VARIANTS[method], vit, layer, images, classes, reshape_transform=vit_tokens_to_maps)
    # with random weights some (image, method) maps are flat (a ReLU of gradients that are all
    # negative); the other image's is not
    assert float(expected.std(dim=(1, 2)).max()) > 0.05, "the peer's maps must not be flat"
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    # a callable reshape is the same
    with METHODS[method](vit, [layer], reshape=vit_tokens_to_maps) as explainer:
        torch.testing.assert_close(explainer(images, classes), ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", list(GRADCAM_VARIANTS))
def test_swin_channels_last_agrees_with_pytorch_grad_cam(swin, images, method):
    # the final norm: with random weights, the last block's norm1 gives some classes an empty
    # Grad-CAM++ or LayerCAM map (ReLU of gradients that are all negative), which agree trivially
    layer = swin.norm
    classes = [7, 300]
    with METHODS[method](swin, [layer], reshape="channels_last") as explainer:
        ours = explainer(images, classes)
    expected = theirs(GRADCAM_VARIANTS[method], swin, layer, images, classes, reshape_transform=swin_to_maps)
    assert float(expected.std(dim=(1, 2)).min()) > 0.05, "the peer's maps must not be flat"
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_scorecam_pytorch_grad_cam_variant_agrees_with_pytorch_grad_cam():
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = ScoreCAM(model, [model[5]], variant="pytorch-grad-cam")(x, [1, 4])
    expected = theirs(pgc.ScoreCAM, model, model[5], x, [1, 4])
    assert float(expected.std()) > 0.05
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_eigencam_agrees_with_pytorch_grad_cam_up_to_the_sign():
    model = small_cnn()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with EigenCAM(model, [model[5]]) as explainer:
        ours, raw = explainer(x, 0), explainer(x, 0, raw=True)
    flipped = cam_postprocess(-raw, (32, 32))
    expected = theirs(pgc.EigenCAM, model, model[5], x, [0, 0, 0])
    for n in range(3):
        assert float(expected[n].std()) > 0.05
        same = (ours[n] - expected[n]).abs().max()
        opposite = (flipped[n] - expected[n]).abs().max()
        assert min(same, opposite) <= 1e-4, (float(same), float(opposite))


def test_ablationcam_agrees_with_pytorch_grad_cam_after_a_relu():
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = AblationCAM(model, [model[5]])(x, [1, 4])
    expected = theirs(pgc.AblationCAM, model, model[5], x, [1, 4])
    assert float(expected.std(dim=(1, 2)).min()) > 0.05
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
