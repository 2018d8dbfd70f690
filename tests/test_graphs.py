"""Explainers inside graphs and training steps: no host reads of device data (the whole call runs on
the meta device), torch.compile(fullgraph=True) equal to eager without recompiling, replayable calls,
and maps that carry gradients to the model's parameters (create_graph=True)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from tests.helpers import needs_compiled_autograd
from torchcam_ops.methods import (
    CAM,
    FEM,
    GIGCAM,
    ISCAM,
    KPCACAM,
    SESS,
    SSCAM,
    TSGB,
    AblationCAM,
    AbsCAM,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    IntegratedGradCAM,
    LayerCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
    graphs,
)
from torchcam_ops.reference import reference_cam


def cnn(dtype: torch.dtype = torch.float32, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            activation(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            activation(),
            nn.Conv2d(12, 12, 3, padding=1),
            activation(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(12, 6),
        )
        .eval()
        .to(dtype)
    )


EXPLAINERS = {
    "gradcam": lambda m: GradCAM(m, ["3"]),
    "gradcam++": lambda m: GradCAMPlusPlus(m, ["3", "5"]),
    "xgradcam": lambda m: XGradCAM(m, ["5"]),
    "layercam": lambda m: LayerCAM(m, ["5"]),
    "hirescam": lambda m: HiResCAM(m, ["5"]),
    "gradcam_elementwise": lambda m: GradCAMElementWise(m, ["5"]),
    "abscam_phase1": lambda m: AbsCAM(m, ["5"], phase=1),
    "abscam": lambda m: AbsCAM(m, ["5"], phase=2, masks_per_forward=5),
    "integrated_gradcam": lambda m: IntegratedGradCAM(m, ["5"], steps=4, points_per_forward=3),
    "gig_cam": lambda m: GIGCAM(m, ["5"], steps=3),
    "gig_cam+m": lambda m: GIGCAM(m, ["5"], steps=2, scales=(12, 16)),
    "tsgb": lambda m: TSGB(m),
    "guided": lambda m: GuidedBackprop(m),
    "guided_gradcam": lambda m: GuidedGradCAM(m, ["5"]),
    "scorecam": lambda m: ScoreCAM(m, ["5"], masks_per_forward=5),
    "scorecam_pytorch_grad_cam": lambda m: ScoreCAM(m, ["5"], variant="pytorch-grad-cam"),
    "ablationcam": lambda m: AblationCAM(m, ["5"], ablations_per_forward=5),
    "eigencam": lambda m: EigenCAM(m, ["5"]),
    "cam": lambda m: CAM(m, ["5"]),
    "eigengradcam": lambda m: EigenGradCAM(m, ["5"]),
    "fem": lambda m: FEM(m, ["5"]),
    "kpcacam": lambda m: KPCACAM(m, ["5"]),
    "shapleycam": lambda m: ShapleyCAM(m, ["5"]),
    "segeigencam": lambda m: SegEigenCAM(m, ["5"]),
    "finercam": lambda m: FinerCAM(m, ["5"]),
    # noise-free: the compiled and eager calls of a random method agree only on the same noise
    "smoothgradcam++": lambda m: SmoothGradCAMPlusPlus(m, ["5"], num_samples=2, std=0.0),
    "sscam": lambda m: SSCAM(m, ["5"], num_samples=2, std=0.0, masks_per_forward=5),
    "iscam": lambda m: ISCAM(m, ["5"], num_samples=2, variant="torchcam", masks_per_forward=5),
    "fullgrad": lambda m: FullGrad(m),
    "refinecam": lambda m: RefineCAM(m, ["3", "5"]),
    "sess": lambda m: SESS(m, ["5"], num_scales=2, window_size=8, step_size=4),
}


@pytest.mark.parametrize("name", list(EXPLAINERS))
@pytest.mark.parametrize("targets", ["none", "tensor", "tensor2d"])
def test_every_explainer_runs_on_the_meta_device(name, targets):
    # Any .item(), bool(t), int(t) or .tolist() of data raises on meta tensors: the call reads no
    # device data on the host, so it can be captured in a CUDA graph.
    model = cnn().to("meta")
    x = torch.empty(2, 3, 12, 12, device="meta")
    chosen = {
        "none": None,
        "tensor": torch.tensor([1, 4], device="meta"),
        "tensor2d": torch.tensor([[1, 2], [4, 5]], device="meta"),
    }[targets]
    with EXPLAINERS[name](model) as explainer:
        maps = explainer(x, chosen)
    assert maps.device.type == "meta"
    per_image = (2, 2) if targets == "tensor2d" else (2,)
    channels = (3,) if name in ("guided", "guided_gradcam") else ()
    assert maps.shape == per_image + channels + (12, 12)


# Inductor for the two core paths (CAM family, rules mode); the rest through aot_eager, which
# traces the same graph without code generation (minutes of compile time saved on 2 cores).
BACKENDS = {"gradcam": "inductor", "tsgb": "inductor"}


@needs_compiled_autograd
@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_compiled_fullgraph_equals_eager_and_does_not_recompile(name):
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    targets = torch.tensor([1, 4])
    with EXPLAINERS[name](model) as explainer:
        eager = explainer(x, targets)
        compiled = explainer.compiled(backend=BACKENDS.get(name, "aot_eager"))
        torch.testing.assert_close(compiled(x, targets), eager, rtol=1e-5, atol=1e-5)
        x2 = torch.rand(2, 3, 16, 16)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = compiled(x2, targets)
        torch.testing.assert_close(again, explainer(x2, targets), rtol=1e-5, atol=1e-5)


@needs_compiled_autograd
@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_every_explainer_traces_in_the_users_own_torch_compile_without_private_flags(name):
    # A user's training step or pipeline compiled with plain torch.compile(fullgraph=True) that calls
    # an explainer: the gradients are taken by torch.func while tracing, no dynamo flag is set.
    torch._dynamo.reset()
    assert not torch._dynamo.config.trace_autograd_ops
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    with EXPLAINERS[name](model) as explainer:
        function = torch.compile(lambda x, t: explainer(x, t), fullgraph=True, backend=BACKENDS.get(name, "aot_eager"))
        # the rules' ops cannot run under torch.func, nor Shapley-CAM's second-order gradients, nor FullGrad's
        # gradients to every layer: a clear refusal
        if name in (*RULE_EXPLAINERS, "shapleycam", "fullgrad"):
            with pytest.raises(
                Exception, match=r"cannot be traced inside your own torch.compile; use explainer.compiled"
            ):
                function(x, torch.tensor([1, 4]))
            return
        for targets in (torch.tensor([1, 4]), torch.tensor([[1, 2], [4, 0]])):
            torch.testing.assert_close(function(x, targets), explainer(x, targets), rtol=1e-5, atol=1e-5)
    assert x.grad is None


RULE_EXPLAINERS = ("tsgb", "guided", "guided_gradcam")


def _traces_requires_grad() -> bool:
    """Whether this torch.compile traces ``requires_grad_`` (torch 2.11 does not; 2.15 does)."""
    torch._dynamo.reset()
    try:
        torch.compile(lambda t: t.detach().requires_grad_(True).detach() * 2, fullgraph=True, backend="eager")(
            torch.ones(2)
        )
    except torch._dynamo.exc.Unsupported:
        return False
    return True


@needs_compiled_autograd
@pytest.mark.parametrize("input_requires_grad", [True, False], ids=["x_requires_grad", "plain_x"])
def test_plain_torch_compile_with_autograd_tracing_switched_on(input_requires_grad):
    # An input that requires grad is the explainer's own graph input (no requires_grad_ to trace):
    # every supported torch compiles it; a plain input needs a torch.compile that traces requires_grad_.
    if not input_requires_grad and not _traces_requires_grad():
        pytest.skip(f"torch {torch.__version__}: torch.compile cannot trace requires_grad_ (explainer.compiled() can)")
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 16, 16).requires_grad_(input_requires_grad)
    cam = GradCAM(model, ["3"])
    function = torch.compile(lambda x, t: cam(x, t), fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch.testing.assert_close(
            function(x, torch.tensor([0, 5])), cam(x, torch.tensor([0, 5])), rtol=1e-5, atol=1e-5
        )
    assert x.grad is None
    cam.close()


@needs_compiled_autograd
def test_graphed_call_on_the_cpu_is_the_compiled_one_and_refuses_other_shapes():
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    targets = torch.tensor([3, 1])
    with GradCAM(model, ["5"]) as cam:
        graphed = cam.graphed(x, targets)
        for _ in range(2):
            fresh = torch.rand(2, 3, 16, 16)
            torch.testing.assert_close(graphed(fresh), cam(fresh, targets), rtol=1e-5, atol=1e-5)
        for other in (torch.rand(3, 3, 16, 16), torch.rand(2, 3, 16, 16, dtype=torch.float64)):
            with pytest.raises(ValueError, match="this graphed call was made for"):
                graphed(other)
        with pytest.raises(TypeError, match="needs fixed targets"):
            cam.graphed(x, lambda out: out[:, 0])


@needs_compiled_autograd
def test_bad_targets_of_a_compiled_call_raise_the_explainers_own_error():
    torch._dynamo.reset()
    with GradCAM(cnn(), ["3"]) as cam:
        compiled = cam.compiled(backend="eager")
        with pytest.raises(ValueError, match="class index 9 is out of range"):
            compiled(torch.rand(2, 3, 8, 8), 9)


@needs_compiled_autograd
def test_many_explainers_compile_without_reaching_the_recompile_limit():
    # Each compiled call has its own code object: torch.compile counts recompilations per code
    # object (8 by default), so the ninth explainer would otherwise fail under fullgraph=True.
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 8, 8)
    for layer in ["0", "1", "2", "3", "4", "5", "6"]:
        for explainer in (GradCAM(model, [layer]), LayerCAM(model, [layer])):
            torch.testing.assert_close(explainer.compiled(backend="eager")(x), explainer(x), rtol=1e-5, atol=1e-5)
            explainer.close()


class CountingBackend:
    """A torch.compile backend (aot_eager underneath) that counts the graphs it compiles and the
    times their compiled code runs."""

    def __init__(self) -> None:
        self.compiled = self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        from torch._dynamo.backends.debugging import aot_eager

        self.compiled += 1
        compiled = aot_eager(graph, example_inputs)

        def run(*args):
            self.runs += 1
            return compiled(*args)

        return run


@needs_compiled_autograd
@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "abscam_phase1", "tsgb", "guided_gradcam"])
def test_explaining_a_compiled_model_runs_compiled_code_with_the_eager_maps(name):
    torch._dynamo.reset()
    model = cnn()
    backend = CountingBackend()
    compiled_model = torch.compile(model, backend=backend)
    x = torch.rand(2, 3, 16, 16)
    targets = torch.tensor([1, 4])
    with EXPLAINERS[name](compiled_model) as explainer, EXPLAINERS[name](model) as eager:
        assert explainer.model is model
        torch.testing.assert_close(explainer(x, targets), eager(x, targets), rtol=1e-5, atol=1e-5)
        assert backend.compiled >= 1 and backend.runs >= 1
        runs, graphs = backend.runs, backend.compiled
        x2 = torch.rand(2, 3, 16, 16)
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(explainer(x2, targets), eager(x2, targets), rtol=1e-5, atol=1e-5)
        assert backend.runs > runs and backend.compiled == graphs
        # bad input is refused before compiling, with the eager call's own errors
        with pytest.raises(ValueError, match="class index 99 is out of range"):
            explainer(x, [0, 99])
        with pytest.raises(ValueError, match="NaN or infinite"):
            explainer(torch.full_like(x, float("nan")), targets)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            explainer(x, targets)
        assert backend.compiled == graphs
    assert model.training is False and not any(p.grad is not None for p in model.parameters())


@needs_compiled_autograd
@pytest.mark.parametrize("name", ["abscam", "integrated_gradcam", "gig_cam"])
def test_explainers_of_many_forward_passes_compile_one_forward_pass_at_a_time(name):
    # IG-CAM and GIG-CAM compile their per-step maps, Abs-CAM phase 2 its masked forwards: a few
    # graphs reused at every step, not one graph of the whole loop.
    torch._dynamo.reset()
    model = cnn()
    backend = CountingBackend()
    x = torch.rand(2, 3, 16, 16)
    with EXPLAINERS[name](torch.compile(model, backend=backend)) as explainer, EXPLAINERS[name](model) as eager:
        torch.testing.assert_close(explainer(x, [1, 4]), eager(x, [1, 4]), rtol=1e-5, atol=1e-5)
        assert 1 <= backend.compiled <= 3 and backend.runs >= 3
        graphs = backend.compiled
        with torch._dynamo.config.patch(error_on_recompile=True):
            x2 = torch.rand(2, 3, 16, 16)
            torch.testing.assert_close(explainer(x2, [1, 4]), eager(x2, [1, 4]), rtol=1e-5, atol=1e-5)
        assert backend.compiled == graphs


@needs_compiled_autograd
def test_the_recompile_limit_falls_back_to_the_eager_module_with_a_warning():
    torch._dynamo.reset()
    model = cnn()
    with GradCAM(torch.compile(model, backend="eager", dynamic=False), ["3"]) as cam, GradCAM(model, ["3"]) as eager:
        with torch._dynamo.config.patch(recompile_limit=2), pytest.warns(RuntimeWarning, match="eager module"):
            for batch in (1, 2, 3, 4):
                x = torch.rand(batch, 3, 8, 8)
                torch.testing.assert_close(cam(x), eager(x))
        assert cam._model_compile_options is None


@needs_compiled_autograd
def test_the_explainer_of_a_compiled_model_is_released_without_the_garbage_collector():
    import gc
    import weakref

    from torchcam_ops.methods import capture

    torch._dynamo.reset()
    gc.disable()
    try:
        cam = GradCAM(torch.compile(cnn(), backend="eager"), ["3"])
        cam(torch.rand(2, 3, 8, 8))
        alive = weakref.ref(cam)
        del cam
        assert alive() is None  # freed by its reference count: no cycle through itself
        assert not capture.hook_is_registered()
    finally:
        gc.enable()


def test_a_model_compiled_in_place_is_refused_clearly():
    model = cnn()
    model.compile(backend="eager")
    with pytest.raises(ValueError, match=r"model.compile\(\).*torch.compile\(model\)"):
        GradCAM(model, ["3"])


def test_on_a_torch_that_cannot_compile_gradients_compiled_calls_are_refused_and_models_explained_eagerly(
    monkeypatch,
):
    monkeypatch.setattr(graphs, "compiler_traces_autograd", lambda: False)
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    with GradCAM(model, ["3"]) as eager:
        expected = eager(x, [1, 2])
        with pytest.raises(RuntimeError, match=r"cannot \(no torch._dynamo.config.trace_autograd_ops\)"):
            eager.compiled()
        with pytest.raises(RuntimeError, match="trace_autograd_ops"):
            eager.graphed(x, [1, 2])
    with pytest.warns(RuntimeWarning, match="explaining its eager module"):
        cam = GradCAM(torch.compile(model, backend="eager"), ["3"])
    with cam:
        assert cam.model is model
        torch.testing.assert_close(cam(x, [1, 2]), expected)


class GraphBreakingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return self.body(x)


@needs_compiled_autograd
def test_a_compiled_model_with_a_graph_break_is_explained_eagerly_with_a_warning():
    torch._dynamo.reset()
    model = GraphBreakingModel()
    x = torch.rand(2, 3, 16, 16)
    with GradCAM(torch.compile(model, backend="eager"), ["body.3"]) as cam, GradCAM(model, ["body.3"]) as eager:
        with pytest.warns(RuntimeWarning, match="cannot be explained in compiled code.*eager module"):
            maps = cam(x, [1, 2])
        torch.testing.assert_close(maps, eager(x, [1, 2]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once: later calls go straight to the eager module
            torch.testing.assert_close(cam(x, [1, 2]), eager(x, [1, 2]))


@needs_compiled_autograd
def test_an_explainer_of_a_compiled_model_copies_and_pickles():
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    with GradCAM(torch.compile(model, backend="eager"), ["3"]) as cam, GradCAM(model, ["3"]) as eager:
        expected = eager(x)
        torch.testing.assert_close(cam(x), expected)
        twin = copy.deepcopy(cam)
        torch.testing.assert_close(twin(x), expected)
        twin.close()


# -- differentiable maps ----------------------------------------------------------------------


SMOOTH = {
    "gradcam": lambda m: GradCAM(m, ["3"]),
    "layercam": lambda m: LayerCAM(m, ["3"]),
    "hirescam": lambda m: HiResCAM(m, ["3"]),
    "gradcam++": lambda m: GradCAMPlusPlus(m, ["3"]),
    "xgradcam": lambda m: XGradCAM(m, ["3"]),
    "integrated_gradcam": lambda m: IntegratedGradCAM(m, ["3"], steps=3),
    # The guided path picks which pixels move by ranking |C_t|, a choice that is piecewise
    # constant in the parameters with jumps that finite differences cannot step over; with
    # fraction=1 every pixel moves at each step and the map is smooth, so the gradients of the
    # guides that Phi accumulates can be checked.
    "gig_cam": lambda m: GIGCAM(m, ["3"], steps=3, fraction=1.0),
}


@pytest.mark.parametrize("name", list(SMOOTH))
@pytest.mark.parametrize("raw", [True, False])
def test_create_graph_maps_match_finite_differences_in_the_parameters(name, raw):
    model = cnn(torch.float64, nn.Softplus)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    weights = torch.rand(2, 10, 10, dtype=torch.float64)
    explainer = SMOOTH[name](model)

    def loss() -> torch.Tensor:
        maps = explainer(x, targets, raw=raw, create_graph=True)
        maps = F.interpolate(maps[:, None], size=(10, 10), mode="bilinear", align_corners=False)[:, 0] if raw else maps
        return (maps * weights).sum()

    parameters = [model[0].weight, model[5].weight, model[9].weight]  # before, at and after the target layer
    value = loss()
    assert value.requires_grad
    grads = torch.autograd.grad(value, parameters)
    assert any(g.abs().max() > 0 for g in grads)
    torch.manual_seed(1)
    for parameter, grad in zip(parameters, grads):
        direction = torch.randn_like(parameter)
        step = 1e-6
        with torch.no_grad():
            parameter.add_(step * direction)
            plus = loss()
            parameter.sub_(2 * step * direction)
            minus = loss()
            parameter.add_(step * direction)
        numeric = (plus - minus) / (2 * step)
        torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-4, atol=1e-7)
    explainer.close()


def test_create_graph_gradcam_equals_a_plain_pytorch_reference():
    model = cnn(torch.float64, nn.Softplus)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    targets = torch.tensor([[2], [3]])
    with GradCAM(model, ["3"]) as cam:
        raw = cam(x, targets[:, 0], raw=True, create_graph=True)
    captured = {}

    def keep(module, inputs, output):
        captured["a"] = output
        return output.clone()

    handle = model[3].register_forward_hook(keep)
    try:
        score = model(x).gather(1, targets).sum()
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, captured["a"], create_graph=True)
    expected = reference_cam(captured["a"], g, "gradcam")
    torch.testing.assert_close(raw, expected)
    for parameter in (model[0].weight, model[5].weight, model[9].weight):
        ours = torch.autograd.grad(raw.square().sum(), parameter, retain_graph=True)[0]
        theirs = torch.autograd.grad(expected.square().sum(), parameter, retain_graph=True)[0]
        torch.testing.assert_close(ours, theirs)


def test_maps_are_detached_by_default_and_parameter_grads_untouched():
    model = cnn()
    with GradCAM(model, ["3"]) as cam:
        maps = cam(torch.rand(1, 3, 8, 8), [2])
    assert not maps.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_abscam_phase_two_refuses_create_graph():
    with AbsCAM(cnn(), ["5"]) as cam, pytest.raises(ValueError, match="create_graph: Abs-CAM phase 2"):
        cam(torch.rand(1, 3, 8, 8), [0], create_graph=True)


def test_maps_never_reach_the_callers_tensor_or_its_hooks():
    # Every call starts its graph from a detached copy of x: a create_graph map carries gradients to
    # the parameters only, never upstream of x, and hooks on x never run.
    model = cnn()
    raw = torch.rand(2, 3, 16, 16, requires_grad=True)
    x = raw * 2
    with GradCAM(model, ["3"]) as cam:
        cam(x, torch.tensor([1, 2]), create_graph=True).sum().backward()
    assert raw.grad is None
    assert any(p.grad is not None for p in model.parameters())

    hooked = torch.rand(2, 3, 16, 16, requires_grad=True)
    hooked.register_hook(lambda grad: grad * 0)
    with GuidedBackprop(model) as guided:
        torch.testing.assert_close(guided(hooked, [1, 2]), guided(hooked.detach(), [1, 2]))
    assert hooked.grad is None


@needs_compiled_autograd
@pytest.mark.parametrize("name", ["gradcam", "tsgb"])
def test_a_compiled_call_takes_another_number_of_targets_per_image(name):
    torch._dynamo.reset()
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    with EXPLAINERS[name](model) as explainer:
        compiled = explainer.compiled(backend="aot_eager")
        for targets in (torch.tensor([1, 4]), torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2, 5], [0, 3, 4]])):
            torch.testing.assert_close(compiled(x, targets), explainer(x, targets), rtol=1e-5, atol=1e-5)
    with EXPLAINERS[name](model) as another:  # a new explainer is not poisoned by the first one's shapes
        targets = torch.tensor([[0, 1], [2, 3]])
        torch.testing.assert_close(another.compiled(backend="aot_eager")(x, targets), another(x, targets))


@needs_compiled_autograd
def test_past_the_recompile_limit_compiled_calls_run_eagerly_with_one_warning():
    torch._dynamo.reset()
    model = cnn()
    with GradCAM(model, ["3"]) as cam, torch._dynamo.config.patch(recompile_limit=2):
        compiled = cam.compiled(backend="eager")
        for size in (8, 10):
            compiled(torch.rand(1, 3, size, size), [1])
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            x = torch.rand(1, 3, 12, 12)
            torch.testing.assert_close(compiled(x, [1]), cam(x, [1]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once
            x = torch.rand(1, 3, 14, 14)
            torch.testing.assert_close(compiled(x, [1]), cam(x, [1]))


@needs_compiled_autograd
def test_tsgb_refuses_to_compile_what_the_compiler_would_not_route_to_its_rules():
    torch._dynamo.reset()
    model = cnn(activation=nn.Hardswish)
    with TSGB(model) as tsgb, pytest.raises(RuntimeError, match="does not route Hardswish"):
        tsgb.compiled(backend="eager")
    x = torch.rand(2, 3, 16, 16)
    with TSGB(model) as eager, TSGB(torch.compile(model, backend="eager")) as of_compiled:
        with pytest.warns(RuntimeWarning, match="explaining its eager module"):
            torch.testing.assert_close(of_compiled(x, [1, 2]), eager(x, [1, 2]))


@needs_compiled_autograd
def test_a_compiled_explainer_leaves_the_buffers_of_a_model_in_training_mode_as_they_were():
    torch._dynamo.reset()
    model = cnn().train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    with GradCAM(model, ["3"]) as cam:
        cam.compiled(backend="eager")(torch.rand(2, 3, 16, 16), [1, 2])
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name


@needs_compiled_autograd
def test_each_function_the_explainer_compiles_has_its_own_compiled_code():
    # One cache slot for every compiled call once ran the first function compiled for all of them.
    torch._dynamo.reset()
    with GradCAM(torch.compile(cnn(), backend="eager"), ["3"]) as cam:

        def doubled(explainer, x):
            return explainer.model(x) * 2

        def tripled(explainer, x):
            return explainer.model(x) * 3

        x = torch.rand(1, 3, 8, 8)
        plain = cam.model(x).detach()
        torch.testing.assert_close(cam._call_compiled(doubled, x), plain * 2)
        torch.testing.assert_close(cam._call_compiled(tripled, x), plain * 3)
        torch.testing.assert_close(cam._call_compiled(doubled, x), plain * 2)


@needs_compiled_autograd
def test_a_module_named_twice_in_the_users_own_torch_compile_gives_both_maps():
    # the torch.func route adds a zero to each named call of the shared module, not only the last one
    torch._dynamo.reset()
    relu = nn.ReLU()
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        relu,
        nn.Conv2d(4, 4, 3, padding=1),
        relu,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    with GradCAM(model, ["1@0", "1@-1"]) as cam:
        function = torch.compile(lambda x, t: cam(x, t, raw=True), fullgraph=True, backend="aot_eager")
        for compiled, eager in zip(function(x, torch.tensor([1, 2])), cam(x, torch.tensor([1, 2]), raw=True)):
            torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
            assert eager.abs().max() > 0
