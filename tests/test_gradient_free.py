"""Score-CAM, Eigen-CAM and CAM: the formulas against plain-PyTorch float64 references, the
agreement with pytorch-grad-cam, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.helpers import assert_same_state, count_hooks, model_state, small_cnn
from torchcam_ops.methods import CAM, METHODS, AblationCAM, EigenCAM, GradCAM, ScoreCAM
from torchcam_ops.reference import reference_normalize


def upsample(maps: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=align_corners)[:, 0]


def layer_activations(model: nn.Module, x: torch.Tensor, stop: int) -> torch.Tensor:
    with torch.no_grad():
        return model[:stop](x)


def scorecam_original_reference(model, x, classes, stop):
    """Score-CAM as the authors' code computes it, one channel at a time, in float64."""
    maps = []
    for image, c in zip(x, classes):
        a = layer_activations(model, image[None], stop)[0]
        size = tuple(image.shape[-2:])
        total = torch.zeros(size, dtype=torch.float64)
        for k in range(a.shape[0]):
            saliency = upsample(a[k : k + 1], size)[0]
            if saliency.max() == saliency.min():
                continue
            mask = (saliency - saliency.min()) / (saliency.max() - saliency.min())
            with torch.no_grad():
                score = torch.softmax(model(image[None] * mask), 1)[0, c]
            total += score * saliency
        maps.append(reference_normalize(torch.relu(total)[None], torch.float64)[0])
    return torch.stack(maps)


def scorecam_pytorch_grad_cam_reference(model, x, classes, stop):
    """pytorch-grad-cam's Score-CAM: align-corners masks, softmax over channels of the masked logits."""
    maps = []
    for image, c in zip(x, classes):
        a = layer_activations(model, image[None], stop)[0]
        size = tuple(image.shape[-2:])
        up = upsample(a, size, align_corners=True)
        low, high = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
        masks = (up - low) / (high - low + 1e-8)
        with torch.no_grad():
            logits = torch.stack([model(image[None] * m)[0, c] for m in masks])
        weights = torch.softmax(logits, 0)
        raw = torch.relu((weights[:, None, None] * a).sum(0))
        maps.append(reference_normalize(upsample(raw[None], size), torch.float64)[0])
    return torch.stack(maps)


@pytest.fixture
def model64():
    return small_cnn().double()


@pytest.fixture
def x64():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


@pytest.mark.parametrize("masks_per_forward", ["auto", 3, None])
def test_scorecam_original_against_the_authors_formula_in_float64(model64, x64, masks_per_forward):
    classes = [1, 4, 6]
    maps = ScoreCAM(model64, ["3"], masks_per_forward=masks_per_forward)(x64, classes)
    expected = scorecam_original_reference(model64, x64, classes, stop=4)
    assert maps.dtype == torch.float64
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_scorecam_pytorch_grad_cam_variant_against_its_formula_in_float64(model64, x64):
    classes = [0, 2, 5]
    maps = ScoreCAM(model64, ["3"], variant="pytorch-grad-cam")(x64, classes)
    expected = scorecam_pytorch_grad_cam_reference(model64, x64, classes, stop=4)
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_scorecam_skips_dead_channels_without_forwarding_them(model64, x64):
    a = layer_activations(model64, x64[:1], 4)[0]
    live = int((a.flatten(1).amax(1) > a.flatten(1).amin(1)).sum())
    assert live < a.shape[0], "the test needs a dead channel"
    images = []
    handle = model64.register_forward_pre_hook(lambda m, args: images.append(args[0].shape[0]))
    try:
        ScoreCAM(model64, ["3"], masks_per_forward=None)(x64[:1], 2)
        original = images[1:]
        images.clear()
        ScoreCAM(model64, ["3"], variant="pytorch-grad-cam", masks_per_forward=None)(x64[:1], 2)
        variant = images[1:]
    finally:
        handle.remove()
    assert original == [live]
    assert variant == [live + 1]  # the zero image once, for every dead channel's logit


def test_scorecam_scores_several_classes_with_the_same_forwards(model64, x64):
    classes = torch.tensor([[1, 3], [0, 6], [2, 2]])
    cam = ScoreCAM(model64, ["3"])
    together = cam(x64, classes)
    assert together.shape == (3, 2, 16, 16)
    for t in range(2):
        torch.testing.assert_close(together[:, t], cam(x64, classes[:, t]), rtol=0, atol=0)


def test_eigencam_is_the_first_principal_component_with_the_stated_sign(model64, x64):
    maps = EigenCAM(model64, ["3"])(x64, 0)
    raw = EigenCAM(model64, ["3"])(x64, 0, raw=True)
    a = layer_activations(model64, x64, 4)
    for n in range(3):
        pixels = a[n].flatten(1).T  # [hw, K]
        centred = pixels - pixels.mean(0)
        # the first principal direction from the covariance's eigenvectors, independently of the SVD
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, -1]
        mean = pixels.mean(1)
        if (projection * (mean - mean.mean())).sum() < 0:
            projection = -projection
        torch.testing.assert_close(raw[n].flatten(), projection, rtol=1e-7, atol=1e-9)
        expected = reference_normalize(upsample(torch.relu(projection.reshape(1, *a.shape[2:])), (16, 16)))[0]
        torch.testing.assert_close(maps[n], expected.to(maps.dtype), rtol=1e-9, atol=1e-9)


def test_cam_equals_gradcam_on_a_global_average_pooling_head():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cam = CAM(model, ["layer4"])(x, [3, 700])
    gradcam = GradCAM(model, ["layer4"])(x, [3, 700])
    assert cam.std() > 0.05
    torch.testing.assert_close(cam, gradcam, rtol=1e-5, atol=1e-5)
    # the classifier named explicitly is the same one
    torch.testing.assert_close(CAM(model, ["layer4"], fc="fc")(x, [3, 700]), cam, rtol=0, atol=0)
    # in float64 the two differ by rounding only
    model64, x64 = model.double(), x.double()
    torch.testing.assert_close(CAM(model64, ["layer4"])(x64, [3, 700]), GradCAM(model64, ["layer4"])(x64, [3, 700]))


def test_cam_refuses_a_classifier_that_does_not_fit(model64):
    with pytest.raises(ValueError, match="fc: the model has no submodule 'head'"):
        CAM(model64, ["3"], fc="head")
    with pytest.raises(ValueError, match="fc: expected an nn.Linear classifier, got Conv2d"):
        CAM(model64, ["3"], fc="0")
    with pytest.raises(ValueError, match="fc: the module is not part of the model"):
        CAM(model64, ["3"], fc=nn.Linear(12, 7))
    with pytest.raises(ValueError, match="fc: the model has no nn.Linear"):
        CAM(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), ["0"])
    with pytest.raises(ValueError, match="fc: the classifier takes 12 features, but the target layer has 8 channels"):
        CAM(model64, ["1"])(torch.rand(1, 3, 8, 8, dtype=torch.float64), 0)


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM, EigenCAM, CAM])
def test_gradient_free_cams_refuse_create_graph_and_callable_targets_and_leave_the_model_as_it_was(cls):
    model = small_cnn()
    state = model_state(model)
    hooks = count_hooks(model)
    x = torch.rand(2, 3, 16, 16)
    with cls(model, ["5"]) as explainer:
        with pytest.raises(ValueError, match="create_graph:.*without gradients"):
            explainer(x, 1, create_graph=True)
        if cls is EigenCAM:  # class-agnostic: a callable target is not called
            torch.testing.assert_close(explainer(x, lambda out: out[:, 0]), explainer(x), rtol=0, atol=0)
        else:
            with pytest.raises(ValueError, match="targets:.*needs class indices, not a callable"):
                explainer(x, lambda out: out[:, 0])
        maps = explainer(x.half().float(), [1, 2])
    assert maps.shape == (2, 16, 16) and 0 <= float(maps.min()) and float(maps.max()) <= 1
    assert_same_state(state, model_state(model))
    assert count_hooks(model) == hooks


@pytest.mark.parametrize("bad", [0, "all", 2.0])
def test_scorecam_refuses_bad_options(bad):
    with pytest.raises(ValueError, match="masks_per_forward: expected a positive int, 'auto' or None"):
        ScoreCAM(small_cnn(), ["3"], masks_per_forward=bad)
    with pytest.raises(ValueError, match="variant: expected 'original' or 'pytorch-grad-cam'"):
        ScoreCAM(small_cnn(), ["3"], variant="wang")


def test_the_gradient_free_cams_are_registered_by_name():
    for name, cls in (("scorecam", ScoreCAM), ("ablationcam", AblationCAM), ("eigencam", EigenCAM), ("cam", CAM)):
        with METHODS[name](small_cnn(), ["5"]) as explainer:
            assert type(explainer) is cls


def test_half_precision_inputs_give_float32_maps_close_to_float32_ones():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    for cls in (ScoreCAM, AblationCAM, EigenCAM, CAM):
        single = cls(model, ["5"])(x, [1, 2])
        half = cls(model.half(), ["5"])(x.half(), [1, 2])
        model.float()
        assert half.dtype == torch.float32 and float(single.std()) > 0.05
        torch.testing.assert_close(half, single, rtol=0, atol=0.05, msg=cls.__name__)


def ablationcam_reference(model, x, classes, stop):
    """Ablation-CAM by hand in float64: zero channel k between model[:stop] and model[stop:]."""
    maps = []
    with torch.no_grad():
        for image, c in zip(x, classes):
            a = model[:stop](image[None])
            y = model[stop:](a)[0, c]
            weights = []
            for k in range(a.shape[1]):
                ablated = a.clone()
                ablated[:, k] = 0
                weights.append((y - model[stop:](ablated)[0, c]) / y)
            raw = torch.relu((torch.stack(weights)[:, None, None] * a[0]).sum(0))
            maps.append(reference_normalize(upsample(raw[None], tuple(image.shape[-2:])), torch.float64)[0])
    return torch.stack(maps)


@pytest.mark.parametrize("ablations_per_forward", [None, 5])
def test_ablationcam_against_the_formula_in_float64(model64, x64, ablations_per_forward):
    classes = [1, 4, 6]
    maps = AblationCAM(model64, ["5"], ablations_per_forward=ablations_per_forward)(x64, classes)
    expected = ablationcam_reference(model64, x64, classes, stop=6)
    assert float(expected.std()) > 0.05
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_ablationcam_forwards_only_channels_that_are_not_all_zero(model64, x64):
    a = layer_activations(model64, x64[:1], 4)[0]
    live = int(a.flatten(1).ne(0).any(1).sum())
    assert live < a.shape[0], "the test needs a dead channel"
    images = []
    handle = model64.register_forward_pre_hook(lambda m, args: images.append(args[0].shape[0]))
    try:
        AblationCAM(model64, ["3"], ablations_per_forward=100)(x64[:1], 2)
    finally:
        handle.remove()
    assert images == [1, live]


class SharedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        return self.head(self.act(self.conv2(self.act(self.conv1(x)))).mean((2, 3)))


def test_ablationcam_ablates_only_the_named_call_of_a_shared_module():
    model = SharedActivation().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a = model.act(model.conv2(model.act(model.conv1(x))))
        y = model.head(a.mean((2, 3)))[0, 2]
        weights = []
        for k in range(5):
            ablated = a.clone()
            ablated[:, k] = 0
            weights.append((y - model.head(ablated.mean((2, 3)))[0, 2]) / y)
    raw = torch.relu((torch.stack(weights)[:, None, None] * a[0]).sum(0))
    expected = reference_normalize(upsample(raw[None], (8, 8)), torch.float64)
    torch.testing.assert_close(AblationCAM(model, ["act@-1"])(x, 2), expected, rtol=1e-9, atol=1e-9)


class AroundTheLayer(nn.Module):
    """A tensor computed before the target layer ``act`` meets its output after it: added (a residual
    connection), concatenated (as DenseNet does), or, with ``batch_dependent``, shifted by each image's
    position in the batch (a model whose layers before the target depend on the batch)."""

    def __init__(self, join: str = "add", batch_dependent: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.join, self.batch_dependent = join, batch_dependent
        self.stem, self.body = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(12 if join == "cat" else 6, 5)

    def skip(self, x):
        skip = self.stem(x)
        if self.batch_dependent:
            skip = skip + 0.5 * torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1)
        return skip

    def after(self, a, skip):
        joined = torch.cat([a, skip], 1) if self.join == "cat" else a + skip
        return self.head(joined.mean((2, 3)))

    def forward(self, x):
        skip = self.skip(x)
        return self.after(self.act(self.body(skip)), skip)


def stem_batches(model: nn.Module, explain) -> list[int]:
    """The batch sizes the model's first layer sees while ``explain()`` runs."""
    batches = []
    handle = model.stem.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        explain()
    finally:
        handle.remove()
    return batches


@pytest.mark.parametrize("join", ["add", "cat"])
def test_ablationcam_runs_the_layers_before_the_target_once_where_the_result_is_the_same(join):
    model = AroundTheLayer(join).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        skip = model.skip(x)
        a = model.act(model.body(skip))
        y = model.after(a, skip)[0, 2]
        weights = []
        for k in range(6):
            ablated = a.clone()
            ablated[:, k] = 0
            weights.append((y - model.after(ablated, skip)[0, 2]) / y)
    raw = torch.relu((torch.stack(weights)[:, None, None] * a[0]).sum(0))
    expected = reference_normalize(upsample(raw[None], (8, 8)), torch.float64)
    assert int(a[0].flatten(1).ne(0).any(1).sum()) == 6, "the test needs six live channels"
    maps = []
    batches = stem_batches(model, lambda: maps.append(AblationCAM(model, ["act"])(x, 2)))
    torch.testing.assert_close(maps[0], expected, rtol=1e-9, atol=1e-9)
    # the explained forward, 4 ablations on copies (the check's reference), then the check: all 6 from
    # one image, kept; a concatenation with the batch of one raises, so the last 2 run on copies
    assert batches == ([1, 4, 1] if join == "add" else [1, 4, 1, 2])


class FlattenWithView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)  # raises on an empty batch: [0, -1] is ambiguous


def test_ablationcam_shortcut_runs_no_empty_forward_for_a_model_that_flattens_with_view():
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), FlattenWithView(), nn.Linear(96, 5))
        .double()
        .eval()
    )
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    batches = []
    handle = model[0].register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        maps = AblationCAM(model, ["1"])(x, [2])
    finally:
        handle.remove()
    assert 0 not in batches and batches[-1] == 1  # the shortcut ran, on the image alone
    torch.testing.assert_close(maps, ablationcam_reference(model, x, [2], stop=2), rtol=1e-9, atol=1e-9)


def test_ablationcam_forwards_copies_when_the_layers_before_the_target_depend_on_the_batch():
    model = AroundTheLayer(batch_dependent=True).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    explainer = AblationCAM(model, ["act"])
    assert stem_batches(model, lambda: explainer(x, 2)) == [1, 4, 1, 2]


def test_ablationcam_forwards_copies_when_the_layers_after_the_target_depend_on_the_batch():
    model = AroundTheLayer().double().eval()
    model.norm = nn.BatchNorm2d(6, track_running_stats=False).double()  # batch statistics in eval mode
    model.after = lambda a, skip: model.head(model.norm(a + skip).mean((2, 3)))
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    explainer = AblationCAM(model, ["act"])
    # the check runs the shortcut on all 6 ablations, the batch size it would use: their statistics
    # differ from those of the 4 copies, so the last 2 run on copies too
    assert stem_batches(model, lambda: explainer(x, 2)) == [1, 4, 1, 2]


def test_ablationcam_refuses_a_callable_layout_and_a_zero_logit():
    with pytest.raises(ValueError, match="reshape: AblationCAM zeroes channels of the layer's own output"):
        AblationCAM(small_cnn(), ["5"], reshape=lambda t: t)
    model = small_cnn()
    with torch.no_grad():
        model[8].weight.zero_()
        model[8].bias.zero_()
    with pytest.raises(ValueError, match=r"a class logit is 0, so Ablation-CAM's relative drop"):
        AblationCAM(model, ["5"])(torch.rand(1, 3, 8, 8), 0)


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()

    def forward(self, x):
        return {"out": self.body(x)}


def test_eigencam_explains_models_with_any_output_and_the_others_say_they_need_logits():
    model = DictOutput()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    expected = EigenCAM(model.body, ["5"])(x)
    torch.testing.assert_close(EigenCAM(model, ["body.5"])(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(EigenCAM(model, ["body.5"])(x, 3), expected, rtol=0, atol=0)
    assert EigenCAM(model, ["body.5"])(x, torch.tensor([[1, 2, 3]] * 2)).shape == (2, 3, 16, 16)
    with pytest.raises(TypeError, match="targets: expected None, an int"):
        EigenCAM(model, ["body.5"])(x, "cat")
    for cls in (ScoreCAM, AblationCAM, CAM):
        with pytest.raises(
            TypeError, match=r"the model output \(dict\) is not \[N, classes\] logits; .* explains classifiers"
        ):
            cls(model, ["body.5"])(x, 1)
