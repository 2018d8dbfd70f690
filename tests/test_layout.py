"""Channels-last images on the CPU: taken by the masked forwards (Score-CAM, Abs-CAM) and GIG-CAM's
paths only where the model computes the same with them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from tests.helpers import small_cnn
from torchcam_ops.methods import GIGCAM, AbsCAM, ScoreCAM
from torchcam_ops.methods import layout as layout_module
from torchcam_ops.methods import masking as masking_module
from torchcam_ops.methods.graphs import compiler_traces_autograd
from torchcam_ops.methods.layout import (
    agree_to_rounding,
    computes_same_channels_last,
    is_channels_last,
    may_try_channels_last,
    outputs_agree,
)


class FlattensWithView(nn.Module):
    """A LeNet-style model: ``.view`` raises on a channels-last activation."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.features = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1)
            )
            self.classifier = nn.Linear(8 * 8 * 8, 5)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.features(x))
        return self.classifier(a.view(a.shape[0], 8 * 8 * 8))


class ReadsMemoryInOrder(FlattensWithView):
    """Flattens by reading the activation's memory in order: no error on a channels-last activation,
    but other logits (the elements reach the classifier in another order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.features(x))
        return self.classifier(a.as_strided((a.shape[0], 8 * 8 * 8), (8 * 8 * 8, 1)))


def images(n: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=dtype)


@contextlib.contextmanager
def record_layouts(model: nn.Module) -> Iterator[list[bool]]:
    """Whether each forward's input was channels-last (and not contiguous), while the block runs."""
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(is_channels_last(args[0])))
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(autouse=True)
def trial_from_two_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small models here have few channels: the trial runs from 2 forwards instead of 16."""
    monkeypatch.setattr(masking_module, "CHANNELS_LAST_MIN_FORWARDS", 2)


def test_agree_to_rounding_accepts_rounding_and_refuses_differences():
    expected = torch.tensor([10.0, -3.0, 0.5])
    assert agree_to_rounding(expected * (1 + 1e-6), expected)
    assert agree_to_rounding(expected + 5e-4, expected)  # within 1e-4 of the largest magnitude, 10
    assert not agree_to_rounding(expected + 2e-3, expected)
    assert not agree_to_rounding(expected[:2], expected)
    assert not agree_to_rounding(expected.double(), expected)
    assert not agree_to_rounding(torch.tensor([10.0, float("nan"), 0.5]), expected)
    infinite = torch.tensor([float("inf"), -3.0, 0.5])
    assert not agree_to_rounding(torch.tensor([float("inf"), 100.0, -7.0]), infinite)  # no infinite tolerance
    # eps of the dtype the values were computed in: half rounding passes, a real difference does not
    assert agree_to_rounding(expected + 2e-2, expected, torch.float16)
    assert not agree_to_rounding(expected + 1.0, expected, torch.float16)
    assert agree_to_rounding(torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert not agree_to_rounding(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_outputs_agree_compares_structures_leaf_by_leaf():
    out = {"out": torch.ones(2, 3), "aux": [torch.zeros(2), "label"]}
    assert outputs_agree({"out": torch.ones(2, 3), "aux": [torch.zeros(2), "label"]}, out)
    assert not outputs_agree({"out": torch.ones(2, 3), "aux": [torch.ones(2), "label"]}, out)
    assert not outputs_agree({"out": torch.ones(2, 3), "aux": [torch.zeros(2), "other"]}, out)
    assert not outputs_agree({"out": torch.ones(2, 3)}, out)
    assert not outputs_agree([torch.ones(2), 1], [torch.ones(2), 1.0])  # another type
    assert not outputs_agree([torch.ones(2), object()], [torch.ones(2), object()])  # not comparable


@pytest.mark.parametrize(
    ("model", "same"), [(small_cnn(), True), (FlattensWithView(), False), (ReadsMemoryInOrder(), False)]
)
def test_the_trial_says_whether_a_model_computes_the_same_channels_last(model, same):
    x = images(4)
    with torch.no_grad():
        expected = model(x)
    assert computes_same_channels_last(model, x, expected) is same


@pytest.mark.parametrize("variant", ["original", "pytorch-grad-cam"])
def test_scorecam_forwards_channels_last_images_to_a_model_that_computes_the_same(monkeypatch, variant):
    model, x = small_cnn().eval(), images()
    with record_layouts(model) as seen:
        maps = ScoreCAM(model, ["3"], variant=variant, masks_per_forward=2)(x, [1, 4])
    # per image: the batch-1 forward, the first chunk, its channels-last trial, then channels-last chunks
    assert seen.count(True) > len(seen) // 2, seen
    seen.clear()
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        contiguous = ScoreCAM(model, ["3"], variant=variant, masks_per_forward=2, cpu_channels_last=False)(x, [1, 4])
    finally:
        handle.remove()
    assert all(seen)
    torch.testing.assert_close(maps, contiguous, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_class", [FlattensWithView, ReadsMemoryInOrder])
def test_scorecam_keeps_contiguous_images_for_a_model_that_depends_on_the_layout(monkeypatch, model_class):
    model, x = model_class().eval(), images()
    with record_layouts(model) as seen:
        maps = ScoreCAM(model, ["features.2"], masks_per_forward=2)(x, [0, 3])
    assert seen.count(True) == 1  # one trial per call, then contiguous images only
    expected = ScoreCAM(model, ["features.2"], masks_per_forward=2, cpu_channels_last=False)(x, [0, 3])
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)


def test_no_channels_last_trial_in_training_mode_for_few_forwards_or_a_channels_last_caller(monkeypatch):
    model, x = small_cnn().train(), images(1)
    with record_layouts(model) as seen:
        ScoreCAM(model, ["3"], masks_per_forward=2)(x, 1)
        assert not any(seen)
        model.eval()
        ScoreCAM(model, ["3"], masks_per_forward=None)(x, 1)
        assert not any(seen)
        monkeypatch.setattr(masking_module, "CHANNELS_LAST_MIN_FORWARDS", 16)  # the default: 16 forwards
        ScoreCAM(model, ["3"], masks_per_forward=2)(x, 1)  # 16 channels or fewer: 8 forwards at most
        assert not any(seen)
        seen.clear()
        # the caller's channels-last images stay channels-last, without a trial
        monkeypatch.setattr(masking_module, "CHANNELS_LAST_MIN_FORWARDS", 2)
        monkeypatch.setattr(layout_module, "computes_same_channels_last", lambda *args: pytest.fail("a trial"))
        ScoreCAM(model, ["3"], masks_per_forward=1)(x.contiguous(memory_format=torch.channels_last), 1)
        assert all(seen)


def test_no_channels_last_trial_on_a_gpu_or_for_a_compiled_model():
    model = small_cnn().eval()
    assert may_try_channels_last(model, torch.device("cpu"))
    assert not may_try_channels_last(model, torch.device("cuda"))
    model[1].train()  # one module in training mode is enough
    assert not may_try_channels_last(model, torch.device("cpu"))
    model.eval()
    assert ScoreCAM(model, ["3"])._model_forward_may_try_channels_last(torch.device("cpu"))
    if compiler_traces_autograd():  # else a compiled model is explained with its eager module
        assert not ScoreCAM(torch.compile(model), ["3"])._model_forward_may_try_channels_last(torch.device("cpu"))


@pytest.mark.parametrize(
    ("model", "layer", "same"),
    [(small_cnn(), "3", True), (FlattensWithView(), "features.2", False), (ReadsMemoryInOrder(), "features.2", False)],
)
def test_abscam_phase_two_takes_channels_last_images_only_where_the_model_computes_the_same(
    monkeypatch, model, layer, same
):
    model.eval()
    with record_layouts(model) as seen:
        maps = AbsCAM(model, [layer], masks_per_forward=2)(images(1), 2)
    assert (seen.count(True) > 1) is same, seen
    expected = AbsCAM(model, [layer], masks_per_forward=2, cpu_channels_last=False)(images(1), 2)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_class", [FlattensWithView, ReadsMemoryInOrder])
def test_gig_cam_walks_contiguous_images_for_a_model_that_depends_on_the_layout(model_class):
    model, x = model_class().eval(), images()
    with record_layouts(model) as seen:
        maps = GIGCAM(model, ["features.2"], steps=4)(x, [1, 2])
    assert seen.count(True) == 1  # the trial, once per call
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()


def test_gig_cam_walks_channels_last_images_for_a_model_that_computes_the_same(monkeypatch):
    model, x = small_cnn().eval(), images()
    with record_layouts(model) as seen:
        maps = GIGCAM(model, ["3"], steps=4)(x, [1, 2])
    assert seen.count(True) > len(seen) // 2, seen
    with record_layouts(model) as seen:
        contiguous = GIGCAM(model, ["3"], steps=4, cpu_channels_last=False)(x, [1, 2])
    assert not any(seen)
    torch.testing.assert_close(maps, contiguous, rtol=0, atol=3e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda model, **o: ScoreCAM(model, ["3"], masks_per_forward=2, **o),
        lambda model, **o: AbsCAM(model, ["3"], masks_per_forward=2, **o),
        lambda model, **o: GIGCAM(model, ["3"], steps=3, **o),
    ],
    ids=["scorecam", "abscam", "gig_cam"],
)
def test_the_forward_plan_is_explicit_and_overridable(monkeypatch, make):
    # True: channels-last without a trial (the user vouches for the model); False: never, no trial;
    # anything else refused by name.
    model, x = small_cnn().eval(), images(1)
    monkeypatch.setattr(layout_module, "computes_same_channels_last", lambda *args: pytest.fail("a trial"))
    with record_layouts(model) as seen:
        forced = make(model, cpu_channels_last=True)(x, 1)
    assert seen.count(True) >= len(seen) // 2 and any(seen), seen
    with record_layouts(model) as seen:
        contiguous = make(model, cpu_channels_last=False)(x, 1)
    assert not any(seen)
    torch.testing.assert_close(forced, contiguous, rtol=0, atol=3e-3)
    with pytest.raises(ValueError, match="cpu_channels_last: expected True, False or 'auto', got 'yes'"):
        make(model, cpu_channels_last="yes")


def test_a_trial_propagates_errors_that_are_not_about_the_layout():
    class Broken(nn.Module):
        def forward(self, x):
            if x.is_contiguous():
                return x.mean((2, 3))
            raise KeyError("not a layout error")

    x = images(1)
    with pytest.raises(KeyError):
        computes_same_channels_last(Broken(), x, Broken()(x))


def test_one_forward_plan_per_call_tries_the_layout_once_whatever_the_chunks(monkeypatch):
    # batch_size=1 splits the call into 3 chunks and 2 layers: the plan is the call's, so one trial
    trials = []
    real = layout_module.computes_same_channels_last
    monkeypatch.setattr(layout_module, "computes_same_channels_last", lambda *a: trials.append(1) or real(*a))
    model = small_cnn().eval()
    with ScoreCAM(model, ["3", "5"], masks_per_forward=1, batch_size=1) as cam, record_layouts(model) as seen:
        chunked = cam(images(3), 1)
    assert len(trials) == 1
    # contiguous: the 3 chunks' own forwards and the masked forward before the trial; the rest channels-last
    assert seen.count(False) == 3 + 1, seen
    expected = ScoreCAM(model, ["3", "5"], masks_per_forward=1, cpu_channels_last=False)(images(3), 1)
    torch.testing.assert_close(chunked, expected, rtol=0, atol=3e-3)


def test_the_prefix_once_shortcut_is_checked_once_per_call_and_layer(monkeypatch):
    from torchcam_ops.methods import AblationCAM

    checks = []
    real = AblationCAM._shortcut_scores
    monkeypatch.setattr(AblationCAM, "_shortcut_scores", lambda self, *a: checks.append(1) or real(self, *a))
    model = small_cnn().eval()
    with AblationCAM(model, ["3", "5"], batch_size=2) as cam:
        maps = cam(images(4), [1, 2, 3, 4])
    assert len(checks) == 2  # one per target layer, for 4 images in 2 chunks
    copies_only = AblationCAM(model, ["3", "5"], ablations_per_forward=None)(images(4), [1, 2, 3, 4])
    torch.testing.assert_close(maps, copies_only, rtol=0, atol=1e-4)


def test_a_forward_plan_counts_the_forwards_it_expects_before_it_decides():
    plan = layout_module.ForwardPlan("auto", True, forwards=1, min_forwards=4, images_per_forward="auto")
    assert not plan.applies and plan.decided is False  # too few forwards for a trial, so far
    plan.expect(3)
    assert plan.applies and plan.decided is None
    model, batch = small_cnn().eval(), images(2)
    with torch.no_grad():
        expected = model(batch)
    assert plan.channels_last(model, batch, expected) is True
    plan.expect(100)
    assert plan.decided is True  # kept for the rest of the call
    never = layout_module.ForwardPlan(False, True, forwards=100)
    assert not never.applies and never.channels_last(model, batch, expected) is False
    assert plan.per_forward(torch.device("cpu"), 100, 224 * 224) == 4
    assert layout_module.ForwardPlan("auto", True, images_per_forward=None).per_forward(torch.device("cpu"), 9, 1) == 9
