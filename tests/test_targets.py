"""Targets beyond class indices: ClassTarget, SegmentationTarget (against pytorch-grad-cam's
SemanticSegmentationTarget) and BoxTarget (against scores computed by hand from the detector's output)."""

from __future__ import annotations

import collections

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import small_cnn
from torchcam_ops.methods import METHODS, AbsCAM, GradCAM, make_explainer
from torchcam_ops.targets import BoxTarget, ClassTarget, SegmentationTarget


def test_a_class_target_is_the_class_index():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ClassTarget(3) == 3 and isinstance(ClassTarget(3), int) and repr(ClassTarget(3)) == "ClassTarget(3)"
    for method in ("gradcam", "abscam", "scorecam"):
        with METHODS[method](model, ["3"]) as explainer:
            torch.testing.assert_close(explainer(x, ClassTarget(3)), explainer(x, 3), rtol=0, atol=0)
            torch.testing.assert_close(
                explainer(x, [ClassTarget(1), ClassTarget(5)]), explainer(x, [1, 5]), rtol=0, atol=0
            )
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="category: expected a non-negative class index"):
            ClassTarget(bad)


@pytest.fixture(scope="module")
def segmentation_models():
    torch.manual_seed(0)
    fcn = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()
    torch.manual_seed(0)
    deeplab = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    return {"fcn_resnet50": (fcn, "backbone.layer4"), "deeplabv3_mobilenet_v3_large": (deeplab, "backbone.16")}


class OutputOnly(nn.Module):
    """pytorch-grad-cam's way with torchvision's segmentation models: the "out" logits as a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_target_agrees_with_pytorch_grad_cam(segmentation_models, name):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, layer_name = segmentation_models[name]
    layer = model.get_submodule(layer_name)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(128, 128)
    mask[32:96, 40:100] = 1
    category = 12
    ours = GradCAM(model, [layer_name])(x, SegmentationTarget(category, mask))
    with pgc.GradCAM(model=OutputOnly(model), target_layers=[layer]) as cam:
        theirs = cam(input_tensor=x, targets=[SemanticSegmentationTarget(category, mask.numpy())] * 2)
    theirs = torch.from_numpy(theirs)
    assert float(theirs.std(dim=(1, 2)).min()) > 0.05
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_segmentation_target_is_the_masked_sum_of_the_category():
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    mask = torch.rand(5, 6, dtype=torch.float64)
    expected = torch.stack([sum(logits[n, 2, i, j] * mask[i, j] for i in range(5) for j in range(6)) for n in range(2)])
    torch.testing.assert_close(SegmentationTarget(2, mask)(logits), expected)
    torch.testing.assert_close(SegmentationTarget(2, mask)({"out": logits, "aux": logits * 0}), expected)
    with pytest.raises(ValueError, match="category 4 is out of range for 4 categories"):
        SegmentationTarget(4, mask)(logits)
    with pytest.raises(ValueError, match=r"the mask is \[5, 5\], the output's maps are \[5, 6\]"):
        SegmentationTarget(1, torch.ones(5, 5))(logits)
    with pytest.raises(ValueError, match=r"mask: expected a non-empty \[H, W\] mask"):
        SegmentationTarget(1, torch.ones(5))
    with pytest.raises(ValueError, match=r"expected logits \[N, C, H, W\]"):
        SegmentationTarget(1, mask)(logits[:, :, 0])


def iou_by_hand(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    # every detection kept (random weights score every class near 1/91, under the default 0.05)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval()


def test_box_target_sums_the_scores_of_the_matching_detections(detector):
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = detector(x)
    detections = output[0]
    assert len(detections["scores"]) > 10
    boxes = detections["boxes"][[0, 3]].clone()
    labels = detections["labels"][[0, 3]].clone()
    expected = 0.0
    for box, label in zip(boxes.tolist(), labels.tolist()):
        for other, other_label, score in zip(
            detections["boxes"].tolist(), detections["labels"].tolist(), detections["scores"].tolist()
        ):
            if other_label == label and iou_by_hand(box, other) >= 0.5:
                expected += score
    got = BoxTarget(labels, boxes)(output)
    assert got.shape == (1,) and float(got) >= float(detections["scores"][0])
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # a box far from every detection, or with a label no detection has, scores 0
    assert float(BoxTarget([labels[0]], torch.tensor([[0.0, 0.0, 0.5, 0.5]]))(output)) == 0
    assert float(BoxTarget([999], boxes[:1])(output)) == 0
    # per-image boxes
    torch.testing.assert_close(BoxTarget([labels], [boxes])(output), got)


def test_gradcam_of_a_detector_for_a_box_target(detector):
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        detections = detector(x)[0]
    target = BoxTarget(detections["labels"][:1], detections["boxes"][:1])
    maps = GradCAM(detector, ["backbone.body.16"])(x, target)
    assert maps.shape == (1, 160, 160) and torch.isfinite(maps).all() and float(maps.std()) > 0.01
    # the same map by hand: the gradient of the box score to the layer's output
    outputs = []
    handle = detector.backbone.body.get_submodule("16").register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        score = target(detector(x))[0]
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(score, outputs[0])
    raw = torch.relu((gradient.mean((2, 3), keepdim=True) * outputs[0]).sum(1)).detach()
    expected = torch.nn.functional.interpolate(raw[:, None], size=(160, 160), mode="bilinear")[:, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-4)


def test_box_target_refuses_bad_boxes():
    with pytest.raises(ValueError, match=r"boxes, labels: expected boxes \[B, 4\] and labels \[B\]"):
        BoxTarget([1, 2], torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"iou: expected a value in \(0, 1\]"):
        BoxTarget([1], torch.zeros(1, 4), iou=0)
    with pytest.raises(ValueError, match="BoxTarget: expected a detection model's output"):
        BoxTarget([1], torch.zeros(1, 4))(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="targets:.*needs class indices, not a callable"):
        AbsCAM(small_cnn(), ["3"])(torch.rand(1, 3, 8, 8), BoxTarget([1], torch.zeros(1, 4)))


class _ModelOutput(collections.OrderedDict):
    """What Hugging Face models return: a dict whose keys are attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _ReturnsModelOutput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return _ModelOutput(logits=self.model(pixel_values), hidden_states=None)


@pytest.mark.parametrize("method", list(METHODS))
def test_class_indices_explain_the_logits_of_a_hugging_face_style_output(method):
    # Every method takes int targets on a model returning a ModelOutput, with the maps of the bare model.
    torch.manual_seed(0)
    bare = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    wrapped = _ReturnsModelOutput(bare)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    options = {"gig_cam": {"steps": 3}, "gig_cam+m": {"steps": 2}, "integrated_gradcam": {"steps": 4}}.get(method, {})
    random = method in ("randomcam", "smoothgradcam++", "sscam")
    if random:  # the same draws for both explainers
        options = {"generator": torch.Generator().manual_seed(0)}
    with make_explainer(method, bare, ["2"], input_size=12, **options) as explainer:
        expected = explainer(x, [1, 3])
    if random:
        options = {"generator": torch.Generator().manual_seed(0)}
    with make_explainer(method, wrapped, ["model.2"], input_size=12, **options) as explainer:
        torch.testing.assert_close(explainer(x, [1, 3]), expected)
        if method not in (
            *("tsgb", "gig_cam", "gig_cam+m", "abscam", "scorecam", "ablationcam", "finercam"),
            *("eigencam", "cam", "fem", "randomcam"),  # class-agnostic or class-weighted: a callable is not called
            *("smoothgradcam++", "sscam", "iscam", "sess"),  # random draws, or class indices only
        ):
            # a callable target still gets the output as the model returned it
            torch.testing.assert_close(explainer(x, lambda out: out.logits[:, 1]), explainer(x, 1))
