"""Explainers inside graphs and training steps: no host reads of device data (the whole call runs on
the meta device), torch.compile(fullgraph=True) equal to eager without recompiling, replayable calls,
and maps that carry gradients to the model's parameters (create_graph=True)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from tests.reference import reference_cam
from torchcam_ops.methods import (
    GIGCAM,
    TSGB,
    AbsCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    IntegratedGradCAM,
    LayerCAM,
    XGradCAM,
)


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
    "abscam": lambda m: AbsCAM(m, ["5"], phase=2, batch_size=5),
    "integrated_gradcam": lambda m: IntegratedGradCAM(m, ["5"], steps=4, batch_size=3),
    "gig_cam": lambda m: GIGCAM(m, ["5"], steps=3),
    "gig_cam+m": lambda m: GIGCAM(m, ["5"], steps=2, scales=(12, 16)),
    "tsgb": lambda m: TSGB(m),
    "guided": lambda m: GuidedBackprop(m),
    "guided_gradcam": lambda m: GuidedGradCAM(m, ["5"]),
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
