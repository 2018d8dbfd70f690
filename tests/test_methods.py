"""The explainers against independent computations (hooks + autograd + the docs/design.md formula +
F.interpolate), a hand-computed case, and the guarantees about the user's model."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.helpers import CAM_FAMILY, assert_same_state, count_hooks, model_state, needs_compiled_autograd, small_cnn
from torchcam_ops import explain
from torchcam_ops.methods import (
    GIGCAM,
    METHODS,
    AbsCAM,
    GradCAM,
    HiResCAM,
    IntegratedGradCAM,
    LayerCAM,
)
from torchcam_ops.methods import masking as masking_module
from torchcam_ops.reference import reference_cam, reference_normalize


def norm(m: torch.Tensor) -> torch.Tensor:
    return reference_normalize(m, torch.float32).to(m.dtype)


def independent_maps(model, layers, x, classes, method):
    """Hooks + autograd + the formula + F.interpolate, in float64, for classes [N, T]. The hook keeps
    the layer's own output and passes a copy on, so an in-place ReLU after the layer cannot change it."""
    model = model.double()
    captured = {}

    def keep(key):
        def hook(module, inputs, output):
            captured[key] = output
            return output.clone()

        return hook

    handles = [layer.register_forward_hook(keep(id(layer))) for layer in layers]
    try:
        logits = model(x.double())
    finally:
        for h in handles:
            h.remove()
    per_target = []
    for t in range(classes.shape[1]):
        score = logits.gather(1, classes[:, t : t + 1]).sum()
        outs = [captured[id(layer)] for layer in layers]
        grads = torch.autograd.grad(score, outs, retain_graph=True)
        maps = []
        for a, g in zip(outs, grads):
            cam = torch.relu(reference_cam(a.detach(), g, method))
            maps.append(
                norm(F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
            )
        fused = maps[0] if len(maps) == 1 else norm(torch.stack(maps).mean(0))
        per_target.append(fused)
    model.float()
    return torch.stack(per_target, 1)


@pytest.mark.parametrize("cls", list(CAM_FAMILY), ids=lambda c: c.__name__)
def test_cam_family_on_small_cnn(cls):
    model = small_cnn()
    x = torch.rand(3, 3, 17, 15)
    classes = torch.tensor([[1], [4], [6]])
    with cls(model, target_layers=[model[2]]) as cam:
        maps = cam(x, classes[:, 0])
    expected = independent_maps(model, [model[2]], x, classes, CAM_FAMILY[cls])[:, 0]
    assert maps.shape == (3, 17, 15) and maps.dtype == torch.float32
    torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", list(CAM_FAMILY), ids=lambda c: c.__name__)
@pytest.mark.parametrize("arch,layers", [("resnet18", ["layer4", "layer3.1"]), ("vgg11", ["features.19"])])
def test_cam_family_on_torchvision_models(cls, arch, layers):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    classes = torch.tensor([[3, 10], [7, 999]])
    maps = cls(model, target_layers=layers)(x, classes)
    modules = [model.get_submodule(name) for name in layers]
    expected = independent_maps(model, modules, x, classes, CAM_FAMILY[cls])
    assert maps.shape == (2, 2, 64, 64)
    torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=1e-5)


def test_hand_computed_gradcam():
    # One 1x1 conv (1 -> 2 channels, weights 1 and 2, no bias), global average pooling, and a
    # linear layer with weights [-1, 1]: score = mean(-A_0 + A_1). So G_0 = -1/16, G_1 = 1/16,
    # w = (-1/16, 1/16), L = (-x + 2x) / 16 = x / 16, and the map is norm(x / 16).
    conv = nn.Conv2d(1, 2, 1, bias=False)
    linear = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
        linear.weight[:] = torch.tensor([[-1.0, 1.0]])
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    raw = GradCAM(model, [conv])(x, 0, raw=True)
    torch.testing.assert_close(raw[0], x[0, 0] / 16)
    maps = GradCAM(model, [conv])(x, 0)
    torch.testing.assert_close(maps[0], (x[0, 0] / 16) / (15 / 16))


def test_t_targets_equal_t_calls_and_batch_equals_images():
    model = small_cnn()
    x = torch.rand(4, 3, 16, 16)
    classes = torch.tensor([[0, 3, 5], [1, 1, 2], [6, 0, 4], [2, 5, 3]])
    cam = LayerCAM(model, [model[4]])
    together = cam(x, classes)
    for t in range(3):
        torch.testing.assert_close(together[:, t], cam(x, classes[:, t]), rtol=0, atol=1e-6)
    for n in range(4):
        torch.testing.assert_close(together[n], cam(x[n : n + 1], classes[n : n + 1])[0], rtol=0, atol=1e-6)
    # batch_size splits the forward passes, not the result
    torch.testing.assert_close(LayerCAM(model, [model[4]], batch_size=3)(x, classes), together, rtol=0, atol=1e-6)


def test_target_forms():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = GradCAM(model, "2")
    top = model(x).argmax(1)
    torch.testing.assert_close(cam(x), cam(x, top))
    torch.testing.assert_close(cam(x, [int(top[0]), int(top[1])]), cam(x, top))
    torch.testing.assert_close(cam(x, 3), cam(x, torch.tensor([3, 3])))
    # a callable on the output: models returning dicts, or any score
    dict_model = DictOutput(model)
    torch.testing.assert_close(GradCAM(dict_model, "net.2")(x, lambda out: out["logits"][:, 3]), cam(x, 3))
    # class indices index a dict's "logits" (as a Hugging Face ModelOutput's); any other output needs a callable
    torch.testing.assert_close(GradCAM(dict_model, "net.2")(x, 3), cam(x, 3))
    dict_model.key = "out"
    with pytest.raises(TypeError, match="not \\[N, classes\\] logits; pass targets as a callable"):
        GradCAM(dict_model, "net.2")(x)


class DictOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    key = "logits"

    def forward(self, x):
        return {self.key: self.net(x)}


def test_functional_form_matches_class():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(
        explain(model, x, "hirescam", target_layers=["2"], targets=[1, 2]), HiResCAM(model, ["2"])(x, [1, 2])
    )
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        explain(model, x, "nope", target_layers=["2"])


def test_raw_and_output_size():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    raw = GradCAM(model, ["2", "4"])(x, raw=True)
    assert [r.shape for r in raw] == [(2, 8, 8), (2, 8, 8)]
    assert GradCAM(model, ["4"])(x, output_size=(5, 7)).shape == (2, 5, 7)


def test_model_untouched_frozen_and_no_grad():
    model = torchvision.models.resnet18(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.layer2.train()  # a mixed state must come back as it was
    before, hooks = model_state(model), count_hooks(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = GradCAM(model, [model.layer4])(x)
    assert maps.shape == (2, 64, 64) and not maps.requires_grad and maps.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert count_hooks(model) == hooks
    assert_same_state(before, model_state(model))
    assert not x.requires_grad


def test_no_graph_kept_and_memory_stable():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    seen = []
    probe = model[4].register_forward_hook(lambda m, i, o: seen.append(weakref.ref(o)))
    cam = GradCAM(model, [model[2]])
    maps = cam(x)
    probe.remove()
    gc.collect()
    assert seen and all(ref() is None for ref in seen), "an intermediate of the forward pass is still alive"
    del maps

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for _ in range(5):
        cam(x)
    baseline = live_tensors()
    for _ in range(200):
        cam(x)
    assert live_tensors() <= baseline


def test_exceptions_leave_the_model_clean():
    model = small_cnn()
    hooks, before = count_hooks(model), model_state(model)
    with pytest.raises(ValueError, match="class index 99 is out of range for a model with 7 outputs"):
        GradCAM(model, [model[2]])(torch.rand(1, 3, 8, 8), 99)
    with pytest.raises(RuntimeError):
        GradCAM(model, [model[2]])(torch.rand(1, 5, 8, 8))  # wrong channel count fails inside forward
    assert count_hooks(model) == hooks
    assert_same_state(before, model_state(model))


def test_two_explainers_do_not_interfere():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with GradCAM(model, [model[2]]) as first, LayerCAM(model, [model[4]]) as second:
        a1, b1 = first(x), second(x)
        a2, b2 = first(x), second(x)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(b1, b2)
    torch.testing.assert_close(a1, GradCAM(model, [model[2]])(x))


@needs_compiled_autograd
def test_compiled_model_gives_eager_maps():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(GradCAM(compiled, [model[2]])(x), GradCAM(model, [model[2]])(x))
    torch.testing.assert_close(GradCAM(compiled, ["2"])(x), GradCAM(model, ["2"])(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype):
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    reference = GradCAM(model, [model[2]])(x, [1, 2])
    half = GradCAM(small_cnn().to(dtype), ["2"])(x.to(dtype), [1, 2])
    assert half.dtype == torch.float32
    assert (half - reference).abs().max() < 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = GradCAM(model, [model[2]])(x, [1, 2])
    assert (autocast - reference).abs().max() < 0.1


class TestBadInput:
    model = small_cnn()

    def test_layer_not_in_model(self):
        with pytest.raises(ValueError, match="the model has no submodule 'layer9'"):
            GradCAM(self.model, "layer9")
        with pytest.raises(ValueError, match="Conv2d module is not part of the model"):
            GradCAM(self.model, nn.Conv2d(1, 1, 1))

    def test_target_out_of_range(self):
        with pytest.raises(ValueError, match="class index -1 is out of range"):
            GradCAM(self.model, "2")(torch.rand(2, 3, 8, 8), [0, -1])

    @pytest.mark.parametrize(
        "targets,message",
        [
            (torch.zeros(3, dtype=torch.long), r"shape \[N\] or \[N, T\] with N = 2, got \[3\]"),
            (torch.zeros(2, 2, 2, dtype=torch.long), r"got \[2, 2, 2\]"),
            (torch.zeros(2), "integer tensor"),
            ([1, 2, 3], "expected 2 class indices"),
            ("cat", "expected None, an int"),
        ],
    )
    def test_target_shapes_and_types(self, targets, message):
        with pytest.raises((ValueError, TypeError), match=message):
            GradCAM(self.model, "2")(torch.rand(2, 3, 8, 8), targets)

    def test_no_gradient_to_layer(self):
        class Detached(nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                features = self.net[:4](x).detach()
                return self.net[4:](features)

        with pytest.raises(ValueError, match="no gradient to this layer"):
            GradCAM(Detached(small_cnn()), "net.2")(torch.rand(1, 3, 8, 8))

    @pytest.mark.parametrize(
        "x,message",
        [
            (torch.rand(3, 8, 8), "4-D batch"),
            (torch.rand(0, 3, 8, 8), "empty"),
            (torch.ones(1, 3, 8, 8, dtype=torch.long), "floating-point"),
            ([[1.0]], "torch.Tensor"),
        ],
    )
    def test_bad_input_batch(self, x, message):
        with pytest.raises((ValueError, TypeError), match=message):
            GradCAM(self.model, "2")(x)

    def test_bad_options(self):
        with pytest.raises(ValueError, match="steps"):
            IntegratedGradCAM(self.model, "2", steps=0)
        with pytest.raises(ValueError, match="phase"):
            AbsCAM(self.model, "2", phase=3)
        with pytest.raises(ValueError, match="batch_size"):
            GradCAM(self.model, "2", batch_size=0)


# -- Abs-CAM and Integrated Grad-CAM --------------------------------------------------------------


def test_abscam_phase_one_is_the_abscam_weighting():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    classes = torch.tensor([[2], [5]])
    expected = independent_maps(model, [model[2]], x, classes, "abscam")[:, 0]
    torch.testing.assert_close(
        AbsCAM(model, [model[2]], phase=1)(x, classes[:, 0]).double(), expected, rtol=1e-5, atol=1e-5
    )


def test_abscam_phase_two_against_the_formula():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    classes = [2, 5]
    maps = AbsCAM(model, [model[2]], phase=2, masks_per_forward=5)(x, classes)
    raw_a = {}
    # the conv's own output: the in-place ReLU after it gets a copy
    handle = model[2].register_forward_hook(lambda m, i, o: (raw_a.__setitem__("a", o), o.clone())[1])
    logits = model(x)
    handle.remove()
    grads = torch.autograd.grad(logits.gather(1, torch.tensor([[2], [5]])).sum(), raw_a["a"])[0]
    a = raw_a["a"].detach()
    for n in range(2):
        w = grads[n].abs().mean((1, 2))
        masks = norm(
            F.interpolate((w[:, None, None] * a[n])[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        )
        with torch.no_grad():
            s = torch.softmax(model(x[n] * masks[:, None]), 1)[:, classes[n]]
        expected = norm(torch.relu(torch.einsum("k,khw->hw", s, masks)))
        torch.testing.assert_close(maps[n], expected, rtol=1e-4, atol=1e-4)


def test_integrated_gradcam_one_step_is_gradcam_of_the_baseline():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    top = model(x).argmax(1)
    ig = IntegratedGradCAM(model, [model[4]], steps=1)(x)
    torch.testing.assert_close(ig, GradCAM(model, [model[4]])(torch.zeros_like(x), top))


def test_integrated_gradcam_against_the_path_sum():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    classes = torch.tensor([3, 1])
    steps = 6
    total = 0
    for m in range(steps):
        total = total + torch.relu(GradCAM(model, [model[4]])((m / steps) * x, classes, raw=True))
    expected = norm(F.interpolate(total[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0])
    maps = IntegratedGradCAM(model, [model[4]], steps=steps, points_per_forward=5)(x, classes)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)


def test_every_method_is_registered():
    assert set(METHODS) >= {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "gradcam_elementwise",
        "abscam",
        "abscam_phase1",
        "integrated_gradcam",
        "gig_cam",
        "gig_cam+m",
        "tsgb",
    }


@pytest.mark.parametrize("method", ["tsgb", "gig_cam+m", "abscam_phase1"])
def test_explain_reaches_every_registered_method(method):
    # one table serves explain(), the CLI and the evaluation: explain(..., "tsgb") works as the CLI does
    model = small_cnn()
    x = torch.rand(1, 3, 16, 16)
    options = {"steps": 2} if method == "gig_cam+m" else {}
    maps = explain(model, x, method, target_layers=["4"], targets=[3], **options)
    assert maps.shape == (1, 16, 16) and 0 <= float(maps.min()) and float(maps.max()) <= 1


def test_abscam_phase_two_scores_only_masks_that_are_not_all_zero():
    """After the in-place ReLU some channels are all zero on these images: their masks add nothing to
    the map, are not forwarded, and the map is that of scoring every mask."""
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        activations = model[:4](x)
    dead = (activations.flatten(2) == activations.flatten(2)[..., :1]).all(2)  # [N, K] constant channels
    assert dead.any(), "the test needs constant channels"
    images_scored = []
    handle = model.register_forward_pre_hook(lambda m, args: images_scored.append(args[0].shape[0]))
    maps = AbsCAM(model, ["3"], phase=2, masks_per_forward=64)(x, [2, 5])
    handle.remove()
    # one forward for the gradients, then one per image with its live channels only
    assert images_scored == [2, *(int((~d).sum()) for d in dead)]
    # every mask scored, as the formula reads
    expected = []
    for n, target in enumerate([2, 5]):
        leaf = x[n : n + 1].clone().requires_grad_()
        with torch.enable_grad():
            a = model[:4](leaf)
            logits = model[4:](a)
            (g,) = torch.autograd.grad(logits[0, target], a)
        weighted = g[0].abs().mean((1, 2))[:, None, None] * a[0].detach()
        masks = norm(F.interpolate(weighted[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0])
        with torch.no_grad():
            scores = torch.softmax(model(x[n : n + 1] * masks[:, None]), 1)[:, target]
        expected.append(norm(torch.relu(torch.einsum("k,khw->hw", scores, masks))[None])[0])
    torch.testing.assert_close(maps, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_masked_images_per_forward_by_default_follow_the_image_size_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [masking_module.resolve_masks_per_forward("auto", cpu, 100, s * s) for s in (512, 224, 128, 16)] == [
        4,
        4,
        8,
        64,
    ]
    assert masking_module.resolve_masks_per_forward("auto", cuda, 100, 128 * 128) == 64
    assert masking_module.resolve_masks_per_forward(6, cpu, 100, 128 * 128) == 6
    assert masking_module.resolve_masks_per_forward(None, cpu, 100, 128 * 128) == 100


def test_abscam_phase_two_on_the_cpu_scores_four_masked_images_of_224_px_per_forward_by_default(monkeypatch):
    # without the channels-last trial forward (tests/test_layout.py), whose images would count here
    model = small_cnn()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    images_per_forward = []
    handle = model.register_forward_pre_hook(lambda m, args: images_per_forward.append(args[0].shape[0]))
    try:
        by_default = AbsCAM(model, ["3"], cpu_channels_last=False)(x, 2)
        live = images_per_forward[1:]
        images_per_forward.clear()
        all_at_once = AbsCAM(model, ["3"], masks_per_forward=None, cpu_channels_last=False)(x, 2)
    finally:
        handle.remove()
    assert sum(live) > 4 and max(live) == 4 and all(n == 4 for n in live[:-1])
    assert images_per_forward[1:] == [sum(live)]
    torch.testing.assert_close(by_default, all_at_once, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "eight"])
def test_abscam_refuses_a_bad_masks_per_forward(bad):
    with pytest.raises(ValueError, match="masks_per_forward: expected a positive int, 'auto' or None"):
        AbsCAM(small_cnn(), ["3"], masks_per_forward=bad)


def test_gig_cam_on_the_cpu_walks_one_image_at_a_time_by_default_with_the_maps_of_separate_calls():
    model = small_cnn().double()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    batches = []
    handle = model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        maps = GIGCAM(model, ["3"], steps=4, scales=[16, 24])(x, [1, 2, 3])
    finally:
        handle.remove()
    assert set(batches) == {1}, batches
    separate = [GIGCAM(model, ["3"], steps=4, scales=[16, 24])(x[n : n + 1], t) for n, t in enumerate([1, 2, 3])]
    torch.testing.assert_close(maps, torch.cat(separate), rtol=0, atol=0)
    together = GIGCAM(model, ["3"], steps=4, scales=[16, 24], batch_size=None)(x, [1, 2, 3])
    torch.testing.assert_close(maps, together, rtol=1e-9, atol=1e-9)
