"""An explainer call is a pure function of (model, x, targets): in-place ops after the target layer,
other threads running the same model, layers that run twice, and bad input never give a silent wrong
map or a changed model."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.helpers import (
    CAM_FAMILY,
    CheckpointedCnn,
    assert_same_state,
    count_hooks,
    model_state,
    needs_compiled_autograd,
)
from torchcam_ops.methods import (
    GIGCAM,
    TSGB,
    AbsCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    IntegratedGradCAM,
    LayerCAM,
    ScoreCAM,
    capture,
)
from torchcam_ops.reference import reference_cam
from torchcam_ops.reference.cam import reference_postprocess

CAM_METHODS = CAM_FAMILY  # class -> cam_reduce method


def issue_model(inplace: bool) -> nn.Module:
    """The reported case: the target conv ("2") is followed by a ReLU that may run in place."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def conv_output_by_hand(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """The raw map of the conv output A = model[:3](x), with G from the rest of the model, in float64."""
    model = model.double()
    a = model[:3](x.double()).detach().requires_grad_(True)
    scores = model[3:](torch.relu(a)).gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(scores, a)
    model.float()
    return reference_cam(a.detach(), g, method)


@pytest.mark.parametrize("cls", list(CAM_METHODS), ids=lambda c: c.__name__)
def test_inplace_relu_after_the_target_layer_does_not_change_the_map(cls):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 12, 12)
    targets = torch.tensor([3, 3])
    raw_inplace = cls(issue_model(True), ["2"])(x, targets, raw=True)
    raw_plain = cls(issue_model(False), ["2"])(x, targets, raw=True)
    expected = conv_output_by_hand(issue_model(False), x, targets, CAM_METHODS[cls])
    torch.testing.assert_close(raw_inplace.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(raw_inplace, raw_plain, rtol=0, atol=0)
    maps_inplace = cls(issue_model(True), ["2"])(x, targets)
    torch.testing.assert_close(maps_inplace, cls(issue_model(False), ["2"])(x, targets), rtol=0, atol=0)


def test_densenet_norm5_describes_the_layer_output_before_the_functional_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    raw = GradCAM(model, ["features.norm5"])(x, [7], raw=True)
    captured = {}

    def keep(module, inputs, output):
        captured["a"] = output
        return output.clone()

    handle = model.features.norm5.register_forward_hook(keep)
    try:
        score = model(x)[0, 7]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, captured["a"])
    assert bool((captured["a"] < 0).any()), "norm5's output has negative values, so ReLU would change it"
    torch.testing.assert_close(raw, reference_cam(captured["a"].detach(), g, "gradcam").float(), rtol=1e-4, atol=1e-6)


class SharedBlock(nn.Module):
    """One conv module applied twice in forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.shared(torch.relu(self.shared(torch.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def test_a_layer_called_twice_is_refused_unless_a_call_is_named():
    model = SharedBlock().eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"target layer 'shared' ran 2 times in one forward pass.*'shared@-1'"):
        GradCAM(model, ["shared"])(x, [0, 1])
    # '@k' names one call; the second call equals the map of its own output computed by hand
    captured = []

    def keep(module, inputs, output):
        captured.append(output)
        return output.clone()

    handle = model.shared.register_forward_hook(keep)
    try:
        score = model(x).gather(1, torch.tensor([[0], [1]])).sum()
    finally:
        handle.remove()
    for call, spec in ((0, "shared@0"), (1, "shared@1"), (1, "shared@-1")):
        (g,) = torch.autograd.grad(score, captured[call], retain_graph=True)
        expected = reference_cam(captured[call].detach(), g, "gradcam").float()
        torch.testing.assert_close(GradCAM(model, [spec])(x, [0, 1], raw=True), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="call 2 does not exist; the module ran 2 times"):
        GradCAM(model, ["shared@2"])(x, [0, 1])
    with pytest.raises(ValueError, match="expected a call index after '@'"):
        GradCAM(model, ["shared@last"])


# -- threads --------------------------------------------------------------------------------------


def threaded_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def test_explainers_in_threads_give_the_sequential_maps_and_leave_the_model_as_it_was():
    model = threaded_model()
    x = torch.rand(4, 3, 24, 24)
    targets = torch.tensor([1, 2, 3, 4])
    explainers = {
        "gradcam": GradCAM(model, ["3"]),
        "layercam": LayerCAM(model, ["6"]),
        "gradcam++": GradCAMPlusPlus(model, ["3", "6"]),
        "tsgb": TSGB(model),
        "guided": GuidedBackprop(model),
        "guided_gradcam": GuidedGradCAM(model, ["6"]),
    }
    expected = {name: explainer(x, targets) for name, explainer in explainers.items()}
    plain_gradient = torch.autograd.grad(
        model(x.clone().requires_grad_()).gather(1, targets[:, None]).sum(), [p for p in model.parameters()][0]
    )[0]
    before, hooks = model_state(model), count_hooks(model)
    flags = [(type(m), getattr(m, "inplace", None), m.training) for m in model.modules()]
    rounds = 8
    errors: list[BaseException] = []
    mismatches: list[str] = []

    def work(name: str) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                result = explainers[name](x, targets)
                if not torch.equal(result, expected[name]):
                    mismatches.append(name)
        except BaseException as error:  # reported below with the thread's explainer
            errors.append(error)

    def plain_training_step() -> None:
        # A thread running the model itself meanwhile gets ordinary forward values and gradients.
        try:
            start.wait()
            for _ in range(rounds):
                leaf = x.clone().requires_grad_()
                gradient = torch.autograd.grad(
                    model(leaf).gather(1, targets[:, None]).sum(), [p for p in model.parameters()][0]
                )[0]
                if not torch.allclose(gradient, plain_gradient, rtol=1e-5, atol=1e-7):
                    mismatches.append("plain model gradient")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in explainers]
    threads.append(threading.Thread(target=plain_training_step))
    start = threading.Barrier(len(threads))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert not mismatches, mismatches
    assert_same_state(before, model_state(model))
    assert count_hooks(model) == hooks
    assert [(type(m), getattr(m, "inplace", None), m.training) for m in model.modules()] == flags


def test_the_model_has_no_hook_and_pickles_while_an_explainer_is_open():
    model = threaded_model()
    hooks = count_hooks(model)
    with GradCAM(model, ["3"]) as cam:
        cam(torch.rand(1, 3, 16, 16))
        assert count_hooks(model) == hooks
        pickle.loads(pickle.dumps(model))
    assert not capture.hook_is_registered()


def test_the_capture_hook_exists_only_while_a_call_runs():
    seen_during_call = []

    class Probe(nn.Module):
        def forward(self, x):
            seen_during_call.append(capture.hook_is_registered())
            return x

    model = nn.Sequential(threaded_model(), Probe())
    first, second = GradCAM(model, ["0.3"]), LayerCAM(model, ["0.3"])
    assert not capture.hook_is_registered()  # open explainers cost other forward passes nothing
    first(torch.rand(1, 3, 8, 8))
    assert seen_during_call == [True]
    assert not capture.hook_is_registered()
    first.close()
    with pytest.raises(RuntimeError, match="the explainer was closed"):
        first(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError):
        second(torch.rand(1, 3, 8, 8), [99])
    assert not capture.hook_is_registered()  # also after a call that raised


def test_a_compiled_bystander_does_not_warn_about_global_hooks_while_explainers_are_open():
    import warnings

    bystander = torch.compile(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), backend="eager")
    with GradCAM(threaded_model(), ["3"]) as cam, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam(torch.rand(1, 3, 8, 8))
        bystander(torch.rand(1, 3, 8, 8))
    assert not [w for w in caught if "hook" in str(w.message)]


def test_a_global_hook_registered_after_the_explainer_is_seen_by_the_map():
    from torch.nn.modules.module import register_module_forward_hook

    model = threaded_model()
    x = torch.rand(2, 3, 8, 8)
    targets = torch.tensor([1, 2])
    with GradCAM(model, ["3"]) as cam:
        plain = cam(x, targets)

        def edit_layer_output(module, _inputs, output):
            return output * torch.linspace(0, 2, output.shape[-1]) if module is model[3] else None

        handle = register_module_forward_hook(edit_layer_output)
        try:
            edited = cam(x, targets)
            a = model[:4](x).detach().requires_grad_(True)  # the edited output, by hand
            (g,) = torch.autograd.grad(model[4:](a.clone()).gather(1, targets[:, None]).sum(), a)
        finally:
            handle.remove()
    expected = reference_postprocess(reference_cam(a.detach(), g, "gradcam"), (8, 8))
    torch.testing.assert_close(edited.double(), expected, rtol=1e-4, atol=1e-4)
    assert (edited - plain).abs().max() > 0.05


class _AliasingTap(nn.Module):
    """An ``nn.Identity`` tap on the input of a ReLU that then runs in place: the tapped tensor is
    changed by the model after the tap (and the head reads it through the tap's output)."""

    def __init__(self, in_place_after: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.tap = nn.Identity()
        self.in_place_after = in_place_after
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        y = self.conv(x)
        tapped = self.tap(y)
        if self.in_place_after:
            y.relu_()
        return self.head(tapped)


def test_a_target_layer_that_aliases_its_input_is_refused_when_the_model_changes_that_tensor_in_place():
    # An nn.Identity tap whose input the model then changes in place: the layers after the tap would
    # have seen the change through the alias, but received a copy: the forward was not the model's own.
    x = torch.rand(2, 3, 8, 8)
    model = _AliasingTap(in_place_after=False).eval()
    with GradCAM(model, ["tap"]) as cam:
        maps = cam(x, [1, 2])
    with GradCAM(model, ["conv"]) as cam:
        torch.testing.assert_close(maps, cam(x, [1, 2]))  # the tap is the conv's own output
    model = _AliasingTap(in_place_after=True).eval()
    with GradCAM(model, ["tap"]) as cam:
        with pytest.raises(ValueError, match=r"target layer 'tap' returns \(a view of\) its input.*in place"):
            cam(x, [1, 2])


def test_an_identity_layer_whose_own_output_is_changed_in_place_afterwards_is_explained():
    # ConvNeXt's and EfficientNet's stochastic depth in eval mode: `result = sd(result); result += input`
    # changes the layer's returned tensor (the copy the layers after it received), never the original.
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.depth = nn.Identity()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))

        def forward(self, x):
            result = self.depth(self.conv(x))
            result += x
            return self.head(result)

    model, x = Residual().eval(), torch.rand(2, 3, 8, 8)
    with GradCAM(model, ["depth"]) as cam, GradCAM(model, ["conv"]) as by_conv:
        torch.testing.assert_close(cam(x, [1, 2]), by_conv(x, [1, 2]))


def test_rules_mode_is_thread_local_and_leaves_no_mode_behind():
    model = threaded_model()
    x = torch.rand(2, 3, 16, 16)
    seen_in_other_thread = []

    class Probe(nn.Module):
        def forward(self, t):
            # The TorchFunctionMode stack is per thread: another thread sees none.
            other = threading.Thread(
                target=lambda: seen_in_other_thread.append(torch.overrides._get_current_function_mode_stack())
            )
            other.start()
            other.join()
            return t

    probed = nn.Sequential(Probe(), *model)
    TSGB(probed)(x, [1, 2])
    GuidedBackprop(probed)(x, [1, 2])
    assert seen_in_other_thread == [[], []]
    assert torch.overrides._get_current_function_mode_stack() == []


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda m: GradCAM(m, ["3"]),
        lambda m: TSGB(m),
        lambda m: GuidedBackprop(m),
        lambda m: IntegratedGradCAM(m, ["3"], steps=2),
        lambda m: GIGCAM(m, ["3"], steps=2),
        lambda m: AbsCAM(m, ["3"], phase=2),
    ],
    ids=["gradcam", "tsgb", "guided", "igcam", "gigcam", "abscam"],
)
def test_nan_and_inf_inputs_are_refused(make):
    model = threaded_model()
    x = torch.rand(2, 3, 16, 16)
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[1, 0, 3, 4] = bad
        with pytest.raises(ValueError, match="x: the input contains NaN or infinite values"):
            make(model)(x_bad, [1, 2])


def test_inference_mode_is_refused_with_a_clear_error():
    model = threaded_model()
    x = torch.rand(1, 3, 16, 16)
    for explainer in (GradCAM(model, ["3"]), TSGB(model), GuidedBackprop(model)):
        with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch.inference_mode\(\)"):
            explainer(x, [1])
    with torch.no_grad():  # no_grad is fine
        assert GradCAM(model, ["3"])(x, [1]).shape == (1, 16, 16)


def test_tsgb_says_when_no_rule_would_apply():
    no_layers = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Identity())
    with pytest.raises(ValueError, match="no nn.Conv2d and no nn.Linear classifier"):
        TSGB(no_layers)(torch.rand(1, 1, 2, 2), [0])
    convs_only = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.warns(UserWarning, match="no nn.Linear classifier"):
        TSGB(convs_only)(torch.rand(1, 3, 4, 4), [0])


def test_tsgb_beta_must_be_a_real_number():
    model = threaded_model()
    for beta in ("x", float("nan"), None):
        with pytest.raises(ValueError, match="beta: expected a real number"):
            TSGB(model, beta=beta)


def test_fixed_targets_out_of_range_name_the_model_output():
    model = threaded_model()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"class index -1 is out of range \(class indices are non-negative\)"):
        IntegratedGradCAM(model, ["3"], steps=2)(x, -1)
    with pytest.raises(ValueError, match="class index is out of range for a model with 10 outputs"):
        IntegratedGradCAM(model, ["3"], steps=2)(x, 10)
    with pytest.raises(ValueError, match="a class index is out of range for a model with 10 outputs"):
        GIGCAM(model, ["3"], steps=2)(x, torch.tensor([12]))


def test_tuple_outputs_need_a_callable_target_for_path_methods():
    class TupleModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = threaded_model()

        def forward(self, x):
            return self.net(x), None

    with pytest.raises(TypeError, match=r"the model output \(tuple\) is not \[N, classes\] logits"):
        IntegratedGradCAM(TupleModel(), ["net.3"], steps=2)(torch.rand(1, 3, 8, 8))


def test_functional_relus_take_the_guided_rule():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    model = Functional().eval().double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    grads = GuidedBackprop(model)(x, [0, 2])
    # by hand: G at the ReLU output, then the guided rule, then the conv's transpose
    z = model.conv(x).detach().requires_grad_()
    relu_out = torch.relu(z)
    g_out = torch.autograd.grad(model.fc(relu_out.mean((2, 3))).gather(1, torch.tensor([[0], [2]])).sum(), relu_out)[0]
    g_z = g_out * (z > 0) * (g_out > 0)
    leaf = x.clone().requires_grad_()
    expected = torch.autograd.grad(model.conv(leaf), leaf, g_z)[0]
    torch.testing.assert_close(grads, expected)


def test_outputs_above_the_size_limit_are_refused_before_allocation():
    from torchcam_ops import ops

    with pytest.raises(ValueError, match=r"size: 1 maps of 50000x50000 would be 2500000000 elements, above the limit"):
        ops.cam_postprocess(torch.rand(1, 1, 1), (50000, 50000))
    model = threaded_model()
    with GradCAM(model, ["3"]) as cam, pytest.raises(ValueError, match="output_size: 2 maps of 50000x50000"):
        cam(torch.rand(2, 3, 8, 8), output_size=50000)
    previous = ops.set_max_output_elements(100)
    try:
        with pytest.raises(ValueError, match="above the limit of 100"):
            ops.cam_postprocess(torch.rand(1, 2, 2), (10, 11))
        assert ops.cam_postprocess(torch.rand(1, 2, 2), (10, 10)).shape == (1, 10, 10)
    finally:
        ops.set_max_output_elements(previous)


def _conv_args(**changes):
    call = {"input": torch.rand(1, 4, 6, 6), "weight": torch.rand(3, 4, 3, 3), "bias": torch.rand(3)}
    call.update(changes)
    return call


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda: ops_module().tsgb_conv2d(**_conv_args(bias=torch.rand(3, dtype=torch.float64))),
            TypeError,
            "tsgb_conv2d: bias must have the dtype of input",
        ),
        (
            lambda: ops_module().tsgb_conv2d(**_conv_args(bias=torch.rand(5))),
            ValueError,
            r"tsgb_conv2d: bias must be \[3\]",
        ),
        (
            lambda: ops_module().tsgb_conv2d(**_conv_args(weight=torch.rand(3, 4, 9, 9))),
            ValueError,
            "tsgb_conv2d: the kernel .* is larger than the padded input",
        ),
        (
            lambda: ops_module().tsgb_conv2d(**_conv_args(weight=torch.rand(0, 4, 3, 3), bias=None)),
            ValueError,
            "tsgb_conv2d: weight must have at least one output channel",
        ),
        (
            lambda: ops_module().tsgb_linear(torch.rand(2, 4), torch.rand(3, 4), torch.rand(4)),
            ValueError,
            r"tsgb_linear: bias must be \[3\]",
        ),
        (
            lambda: ops_module().tsgb_linear(torch.rand(2, 4), [[1.0] * 4] * 3),
            TypeError,
            "tsgb_linear: weight must be a torch.Tensor, got list",
        ),
        (
            lambda: ops_module().tsgb_linear(torch.rand(2, 4), torch.rand(3, 4), beta="x"),
            TypeError,
            "tsgb_linear: beta must be a real number, got str",
        ),
        (
            lambda: ops_module().tsgb_linear(torch.rand(2, 4), torch.rand(3, 4), beta=float("nan")),
            ValueError,
            "tsgb_linear: beta must be a finite number",
        ),
        (
            lambda: ops_module().tsgb_batch_norm(
                torch.rand(2, 3, 4, 4, dtype=torch.float64), torch.zeros(3), torch.ones(3)
            ),
            TypeError,
            "tsgb_batch_norm: running_mean must have the dtype of input",
        ),
        (
            lambda: ops_module().tsgb_avg_pool2d(torch.rand(1, 2, 8, 8), 2, padding=2),
            ValueError,
            "tsgb_avg_pool2d: padding must be at most half the kernel size",
        ),
    ],
    ids=[
        "conv-bias-dtype",
        "conv-bias-length",
        "conv-kernel-too-large",
        "conv-no-output-channel",
        "linear-bias-shape",
        "linear-weight-list",
        "linear-beta-str",
        "linear-beta-nan",
        "bn-dtype",
        "avgpool-padding",
    ],
)
def test_tsgb_ops_name_the_bad_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def ops_module():
    from torchcam_ops import ops

    return ops


def test_closing_a_copied_or_unpickled_explainer_leaves_the_original_open():
    model = threaded_model()
    cam = GradCAM(model, ["3"])
    twin = copy.deepcopy(cam)  # e.g. an explainer stored on a module that AveragedModel copies
    restored = pickle.loads(pickle.dumps(cam))
    for explainer in (twin, restored):
        explainer.close()
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(cam(x, [1]), GradCAM(model, ["3"])(x, [1]))
    cam.close()
    assert not capture.hook_is_registered()


@needs_compiled_autograd
def test_graphed_calls_take_python_targets_and_refuse_create_graph():
    torch._dynamo.reset()
    model = threaded_model()
    x = torch.rand(2, 3, 8, 8)
    with GradCAM(model, ["3"]) as cam:
        graphed = cam.graphed(x, [1, 2])
        torch.testing.assert_close(graphed(x), cam(x, [1, 2]), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="create_graph: a graphed call's outputs live in buffers"):
            cam.graphed(x, [1, 2], create_graph=True)


def test_tsgb_says_which_average_pools_keep_their_gradient():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()
    with pytest.warns(UserWarning, match="keeps its ordinary gradient"):
        TSGB(model)(torch.rand(1, 3, 7, 7), [0])


def test_explain_checks_its_input_first():
    from torchcam_ops import explain

    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor batch"):
        explain(threaded_model(), [[1.0]], "gradcam", target_layers=["3"])


def test_gig_cam_diagnostics_are_returned_not_kept():
    # Diagnostics come with the call that asked for them (every chunk and scale), never as state on
    # the explainer that another thread's call could overwrite.
    model = threaded_model()
    explainer = GIGCAM(model, ["3"], steps=2, scales=(6, 8), batch_size=1)
    state = dict(vars(explainer))
    maps, diagnostics = explainer(torch.rand(3, 3, 8, 8), [1, 0, 2], diagnostics=True)
    assert maps.shape == (3, 8, 8)
    assert [tuple(end.shape) for end in diagnostics.path_ends] == [(3, 6, 6), (3, 8, 8)]
    assert diagnostics.unfinished_steps.dim() == 0 and int(diagnostics.unfinished_steps) == 0
    assert vars(explainer).keys() == state.keys() and all(vars(explainer)[k] is v for k, v in state.items())
    assert explainer(torch.rand(3, 3, 8, 8), [1, 0, 2]).shape == maps.shape


def _batch_norm_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).train()


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "guided", "eigencam"])
def test_explaining_in_the_middle_of_a_training_step_leaves_the_step_intact(method):
    # The user's step: a forward in training mode, an explanation, then the step's backward.
    model = _batch_norm_cnn()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model)
    reference(x).logsumexp(1).sum().backward()
    loss = model(x).logsumexp(1).sum()
    after_forward = {name: (b.clone(), b._version) for name, b in model.named_buffers()}
    explainer = {
        "gradcam": lambda: GradCAM(model, ["3"]),
        "scorecam": lambda: ScoreCAM(model, ["3"]),
        "guided": lambda: GuidedBackprop(model),
        "eigencam": lambda: EigenCAM(model, ["3"]),
    }[method]()
    with explainer:
        explainer(torch.rand(2, 3, 12, 12), [1, 2])
    loss.backward()  # raised "modified by an inplace operation" when the explainer restored the statistics
    for name, b in model.named_buffers():
        value, version = after_forward[name]
        assert torch.equal(b, value) and b._version == version, name  # never written by the explainer
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_a_thread_training_the_model_keeps_every_statistics_update_while_another_explains():
    # (No optimizer step: an explanation whose weights change while it runs is a race of the caller's.)
    model = _batch_norm_cnn()
    steps, errors = 40, []
    start = threading.Barrier(2)

    def train() -> None:
        try:
            start.wait()
            for _ in range(steps):
                model.zero_grad()
                model(torch.rand(4, 3, 12, 12)).logsumexp(1).sum().backward()
        except BaseException as error:
            errors.append(error)

    def explain() -> None:
        try:
            start.wait()
            with GradCAM(model, ["3"]) as cam:
                for _ in range(steps):
                    cam(torch.rand(2, 3, 12, 12), [0, 1])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=train), threading.Thread(target=explain)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert int(model[1].num_batches_tracked) == steps and int(model[4].num_batches_tracked) == steps


@pytest.mark.parametrize(
    "make",
    [
        lambda m: GradCAM(m, ["3"], batch_size=2),
        lambda m: ScoreCAM(m, ["3"], batch_size=2),
        lambda m: GIGCAM(m, ["3"], steps=2),  # one image at a time on the CPU
    ],
    ids=["gradcam", "scorecam", "gig_cam"],
)
@pytest.mark.parametrize("targets", [[1, 2], [3], torch.tensor([1, 2])], ids=["two", "one", "tensor"])
def test_targets_shorter_than_the_batch_are_refused_whatever_the_chunks(make, targets):
    model = _batch_norm_cnn().eval()
    with make(model) as explainer, pytest.raises(ValueError, match=r"targets: expected .*4"):
        explainer(torch.rand(4, 3, 12, 12), targets)


def test_output_size_true_and_class_indices_beyond_int64_are_refused_clearly():
    model = _batch_norm_cnn().eval()
    with GradCAM(model, ["3"]) as cam:
        with pytest.raises(ValueError, match=r"output_size: expected a positive int or \(height, width\), got True"):
            cam(torch.rand(1, 3, 12, 12), output_size=True)
        with pytest.raises(ValueError, match="output_size"):
            cam(torch.rand(1, 3, 12, 12), output_size=(True, 4))
    with EigenCAM(model, ["3"]) as eigen, pytest.raises(ValueError, match=r"targets: class index 9223372036854775808"):
        eigen(torch.rand(1, 3, 12, 12), 2**63)


def test_callable_targets_that_give_no_scores_or_detached_ones_are_refused_clearly():
    model = _batch_norm_cnn().eval()
    x = torch.rand(2, 3, 12, 12)
    with GradCAM(model, ["3"]) as cam:
        with pytest.raises(ValueError, match=r"targets: a callable target must return scores .* T >= 1, got \[2, 0\]"):
            cam(x, lambda out: out[:, :0])
        with pytest.raises(ValueError, match="targets: the callable target returned scores without a gradient"):
            cam(x, lambda out: out[:, 1].detach())
        with pytest.raises(TypeError, match="floating-point scores, got torch.int64"):
            cam(x, lambda out: out.argmax(1))


def test_eigen_cam_refuses_classes_the_model_does_not_have():
    model = _batch_norm_cnn().eval()
    with EigenCAM(model, ["3"]) as eigen:
        with pytest.raises(ValueError, match="class index 7 is out of range for a model with 5 outputs"):
            eigen(torch.rand(2, 3, 12, 12), 7)
        with pytest.raises(ValueError, match="out of range"):
            eigen(torch.rand(2, 3, 12, 12), torch.tensor([0, -1]))
        assert eigen(torch.rand(2, 3, 12, 12), [4, 0]).shape == (2, 12, 12)


@pytest.mark.parametrize("method", ["gradcam", "tsgb", "scorecam"])
def test_nan_logits_are_refused_alike_by_every_kind_of_explainer(method):
    model = _batch_norm_cnn().eval()
    with torch.no_grad():
        model[8].bias[2] = float("nan")
    make = {
        "gradcam": lambda: GradCAM(model, ["3"]),
        "tsgb": lambda: TSGB(model),
        "scorecam": lambda: ScoreCAM(model, ["3"]),
    }
    with make[method]() as explainer, pytest.raises(ValueError, match="a target score is NaN or infinite"):
        explainer(torch.rand(2, 3, 12, 12), [2, 2])
    with make[method]() as explainer:
        if method == "scorecam":  # softmax scores over every class: one NaN logit makes all of them NaN
            with pytest.raises(ValueError, match="NaN or infinite"):
                explainer(torch.rand(2, 3, 12, 12), [1, 3])
        else:  # the other classes are finite: explained as usual
            assert torch.isfinite(explainer(torch.rand(2, 3, 12, 12), [1, 3])).all()


class _BufferWriter(nn.Module):
    """Buffer writes that no batch norm makes: augmented assignment, out=, an in-place call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ema", torch.zeros(3))
        self.register_buffer("flags", torch.zeros(3, dtype=torch.long))
        self.register_buffer("scratch", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.ema += x.detach().mean((0, 2, 3))
            self.flags |= 1
            torch.add(self.scratch, 1.0, out=self.scratch)
        return x


def test_no_kind_of_buffer_write_reaches_the_model_and_module_bindings_come_back():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), _BufferWriter(), nn.InstanceNorm2d(3, track_running_stats=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4),
    ).train()  # fmt: skip
    buffers = {name: (b, b.clone(), b._version) for name, b in model.named_buffers()}
    with GradCAM(model, ["0"]) as cam:
        cam(torch.rand(2, 3, 8, 8), [0, 1])
    for name, b in model.named_buffers():
        original, value, version = buffers[name]
        assert b is original and torch.equal(b, value) and b._version == version, name


def test_a_hidden_linear_layer_keeps_its_exact_value_under_the_tsgb_rules():
    from torchcam_ops.nn.rules import tsgb_rules

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)).to(dtype)
        h = torch.randn(8, 64, dtype=dtype)
        with tsgb_rules(model, model[2]), torch.no_grad():
            routed = model(h)
        assert torch.equal(routed, model(h)), dtype


def test_inputs_made_under_inference_mode_are_explained_and_scripted_models_refused_clearly():
    model = _batch_norm_cnn().eval()
    with torch.inference_mode():
        x = torch.rand(2, 3, 12, 12)
    for make in (lambda: GradCAM(model, ["3"]), lambda: TSGB(model), lambda: GuidedBackprop(model)):
        with make() as explainer:
            torch.testing.assert_close(explainer(x, [1, 2]), explainer(x.clone(), [1, 2]))
    with pytest.raises(TypeError, match="model: a TorchScript module"):
        GradCAM(torch.jit.script(model), ["3"])
    with pytest.raises(TypeError, match="model: a TorchScript module"):
        TSGB(torch.jit.script(model))


def test_targets_of_segmentation_and_detection_models_say_what_is_wrong():
    from torchcam_ops.targets import BoxTarget, SegmentationTarget

    with pytest.raises(ValueError, match=r"iou: expected a value in \(0, 1\], got '0.5'"):
        BoxTarget([1], [[0, 0, 4, 4]], iou="0.5")
    target = SegmentationTarget(1, torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"a dict without 'out' \(keys \['aux', 'logits'\]\)"):
        target({"logits": torch.rand(1, 3, 4, 4), "aux": torch.rand(1, 3, 4, 4)})


def test_closing_a_copy_of_an_explainer_leaves_the_original_open():
    model = _batch_norm_cnn().eval()
    x = torch.rand(1, 3, 12, 12)
    with GradCAM(model, ["3"]) as cam:
        expected = cam(x, [1])
        duplicate = copy.copy(cam)
        torch.testing.assert_close(duplicate(x, [1]), expected)
        duplicate.close()
        torch.testing.assert_close(cam(x, [1]), expected)  # raised "closed" when the copy shared the hold
        with pytest.raises(RuntimeError):
            duplicate(x, [1])


CHECKPOINT_EXPLAINERS = {
    "tsgb": lambda model: TSGB(model),
    "guided_backprop": lambda model: GuidedBackprop(model),
    "gradcam_inside_the_checkpoint": lambda model: GradCAM(model, ["block.2"]),
    "gradcam_after_it": lambda model: GradCAM(model, ["head.0"]),
}


@pytest.mark.parametrize("name", CHECKPOINT_EXPLAINERS)
def test_activation_checkpointing_gives_the_maps_of_the_plain_model(name):
    # The rules must hold when the checkpointed block is recomputed during the backward pass.
    x = torch.rand(2, 3, 12, 12)
    plain, checkpointed = CheckpointedCnn(False).eval(), CheckpointedCnn(True).eval()
    with CHECKPOINT_EXPLAINERS[name](plain) as explainer:
        expected = explainer(x, [1, 3])
    with CHECKPOINT_EXPLAINERS[name](checkpointed) as explainer:
        torch.testing.assert_close(explainer(x, [1, 3]), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(explainer(x, torch.tensor([[1, 2], [3, 4]]))[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_many_targets_per_image_are_held_to_the_output_size_limit():
    from torchcam_ops import ops

    model = threaded_model()
    x = torch.rand(2, 3, 8, 8)
    targets = torch.arange(10).repeat(2, 1)  # 10 targets per image: 20 maps of 8x8 (60 gradient maps of TSGB)
    previous = ops.set_max_output_elements(19 * 64)
    try:
        with GradCAM(model, ["3"]) as cam, pytest.raises(ValueError, match=r"targets \(10 per image\): 20 maps"):
            cam(x, targets)
        with pytest.raises(ValueError, match=r"targets \(10 per image\): 60 maps"):
            TSGB(model)(x, targets)
        with GradCAM(model, ["3"]) as cam:
            assert cam(x, targets[:, :9]).shape == (2, 9, 8, 8)
    finally:
        ops.set_max_output_elements(previous)


def test_score_cam_and_abs_cam_make_their_masks_a_chunk_of_channels_at_a_time(monkeypatch):
    # The masks at the input size are never held all at once: with chunks of 3 channels' masks
    # (where K x H x W would exceed the output limit) the maps are those of one chunk.
    from torchcam_ops import ops
    from torchcam_ops.methods import masking

    model = threaded_model()
    x = torch.rand(2, 3, 16, 16)
    explainers = {
        "scorecam": lambda: ScoreCAM(model, ["6"], masks_per_forward=1),
        "scorecam_pytorch_grad_cam": lambda: ScoreCAM(model, ["6"], variant="pytorch-grad-cam", masks_per_forward=1),
        "abscam": lambda: AbsCAM(model, ["6"], masks_per_forward=1),
    }
    expected = {}
    for name, make in explainers.items():
        with make() as explainer:
            expected[name] = explainer(x, [1, 2])
    monkeypatch.setattr(masking, "MASK_ELEMENTS_PER_CHUNK", 3 * 16 * 16)
    previous = ops.set_max_output_elements(31 * 16 * 16)  # the 32 masks of one image would exceed it
    try:
        for name, make in explainers.items():
            with make() as explainer:
                torch.testing.assert_close(explainer(x, [1, 2]), expected[name], rtol=1e-5, atol=1e-6)
    finally:
        ops.set_max_output_elements(previous)


def test_the_users_own_tsgb_block_holds_under_activation_checkpointing_and_loss_backward():
    from torchcam_ops.nn import tsgb

    x = torch.rand(2, 3, 12, 12)
    with TSGB(CheckpointedCnn(False).eval()) as explainer:
        expected = explainer(x, [1, 3], raw=True)
    model = CheckpointedCnn(True).eval()
    leaf = x.clone().requires_grad_()
    with tsgb(model):
        model(leaf).gather(1, torch.tensor([[1], [3]])).sum().backward()
    torch.testing.assert_close((leaf * leaf.grad).sum(1), expected, rtol=1e-5, atol=1e-6)


def test_explaining_a_checkpointed_model_in_training_mode_writes_none_of_its_buffers():
    # The recomputed batch norm of the backward writes the shield's copies, as the forward did.
    model = CheckpointedCnn(True).train()
    buffers = {name: (b.clone(), b._version) for name, b in model.named_buffers()}
    with GradCAM(model, ["head.0"]) as cam:
        cam(torch.rand(2, 3, 12, 12), [1, 3])
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name][0]) and b._version == buffers[name][1], name
