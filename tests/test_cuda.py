"""CUDA kernels against the CPU kernels (and the references). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DTYPES
from tests.helpers import activations_and_gradients as _inputs
from tests.helpers import assert_matches, small_cnn, tolerance
from torchcam_ops import CAM_METHODS, cam_postprocess, cam_reduce
from torchcam_ops.reference import reference_cam, reference_postprocess

pytestmark = pytest.mark.cuda

SHAPES = [
    (1, 1, 1, 1),
    (3, 5, 7, 7),  # fewer channels than a block has warps
    (2, 300, 14, 14),
    (4, 2048, 7, 7),
    (2, 64, 56, 56),  # larger maps: weights, then tiles of 4-pixel loads
    (1, 9000, 3, 5),  # many chunks for one image
    (700, 8, 2, 2),
    (2, 333, 13, 13),
    (2, 50, 10, 11),  # 110 pixels: 4 per lane
    (3, 40, 16, 16),  # 256 pixels: the largest maps held in registers
    (2, 33, 1, 257),  # 257 pixels: the smallest tiled maps, one pixel per thread
    (3, 70, 32, 32),
    (2, 20, 33, 33),
]


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cam_reduce_cuda_matches_cpu(method, shape, dtype):
    a, g = _inputs(shape, dtype)
    cuda = cam_reduce(a.cuda(), g.cuda(), method)
    assert cuda.device.type == "cuda" and cuda.dtype == dtype
    assert_matches(cuda.cpu(), reference_cam(a, g, method), dtype)
    assert_matches(cuda.cpu(), cam_reduce(a, g, method).double(), dtype)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
@pytest.mark.parametrize("shape", [(2, 40, 7, 7), (2, 24, 16, 16)], ids=lambda s: "x".join(map(str, s)))
def test_cam_reduce_cuda_inputs_not_aligned_to_vector_loads(method, shape):
    """Contiguous inputs one element past an aligned address: the kernels fall back to narrow loads."""
    a, g = _inputs(shape, torch.float32)
    count = a.numel()
    a_cuda = torch.empty(count + 1, device="cuda")[1:].view(shape).copy_(a)
    g_cuda = torch.empty(count + 1, device="cuda")[1:].view(shape).copy_(g)
    assert a_cuda.is_contiguous() and a_cuda.data_ptr() % 16 != 0
    assert_matches(cam_reduce(a_cuda, g_cuda, method).cpu(), reference_cam(a, g, method), torch.float32)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_reduce_cuda_channels_last_and_reproducible(method):
    a, g = _inputs((8, 96, 14, 14), torch.float32)
    a_cl, g_cl = (t.cuda().to(memory_format=torch.channels_last) for t in (a, g))
    first = cam_reduce(a_cl, g_cl, method)
    assert torch.equal(first, cam_reduce(a_cl, g_cl, method))
    assert_matches(first.cpu(), reference_cam(a, g, method), torch.float32)


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cam_reduce_backward_cuda_matches_cpu(method, dtype):
    a, g = _inputs((3, 40, 7, 7), dtype)
    a = a + 0.5
    grad = torch.randn(3, 7, 7, dtype=dtype)
    cpu = torch.ops.torchcam_ops.cam_reduce_backward(grad, a, g, method)
    cuda = torch.ops.torchcam_ops.cam_reduce_backward(grad.cuda(), a.cuda(), g.cuda(), method)
    tol = tolerance(dtype) * 4
    for x, y in zip(cuda, cpu):
        scale = float(y.double().abs().max())
        torch.testing.assert_close(x.cpu().double(), y.double(), rtol=tol, atol=tol * scale, equal_nan=True)


@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize(
    "resize",
    [
        ((7, 7), (224, 224)),  # the write blocks find the extremes themselves
        ((40, 40), (224, 224)),  # an extrema launch first, then bands of rows
        ((56, 56), (28, 28)),
        ((5, 9), (31, 17)),
        ((1, 1), (3, 3)),
        ((2000, 30), (50, 100)),  # too many source rows per band for the shared table: pixel by pixel
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cam_postprocess_cuda_matches_cpu(resize, relu, normalize, dtype):
    (h, w), size = resize
    cam = torch.randn(5, h, w, dtype=torch.float64).to(dtype)
    cuda = cam_postprocess(cam.cuda(), size, relu=relu, normalize=normalize)
    assert_matches(cuda.cpu(), reference_postprocess(cam, size, relu, normalize), dtype)
    assert_matches(cuda.cpu(), cam_postprocess(cam, size, relu=relu, normalize=normalize).double(), dtype)


def test_cam_postprocess_cuda_large_batch_and_constant_maps():
    cam = torch.randn(300, 7, 7, device="cuda")
    cam[7] = 0.123
    out = cam_postprocess(cam, (224, 224))
    assert torch.equal(out[7], torch.zeros_like(out[7]))
    assert_matches(out.cpu(), reference_postprocess(cam.cpu(), (224, 224)), torch.float32)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_gradcheck_cuda(method):
    a = (torch.rand(2, 3, 4, 5, dtype=torch.float64, device="cuda") + 0.5).requires_grad_()
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64, device="cuda")
    g = (g + 0.2 * g.sign()).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: cam_postprocess(cam_reduce(x, y, method), (6, 7)), (a, g))


def test_opcheck_cuda():
    a = torch.rand(2, 3, 5, 4, device="cuda", requires_grad=True)
    g = torch.randn(2, 3, 5, 4, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.torchcam_ops.cam_reduce.default, (a, g, "gradcam"))
    cam = torch.randn(2, 5, 4, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.torchcam_ops.cam_postprocess.default, (cam, 9, 7, True, True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_nmf_sweep_cuda_matches_cpu_without_synchronising(dtype):
    from tests.test_nmf_sweep import problem
    from torchcam_ops.ops import nmf_sweep

    factor, gram, products = problem(rows=3000, columns=40, components=16, dtype=dtype)
    expected, expected_violation = nmf_sweep(factor, gram, products)
    args = (factor.cuda(), gram.cuda(), products.cuda())
    torch.library.opcheck(torch.ops.torchcam_ops.nmf_sweep.default, args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        updated, violation = nmf_sweep(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(updated.cpu(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(violation.cpu(), expected_violation, rtol=tol, atol=tol)


def test_feature_factorization_cuda_matches_cpu():
    from torchcam_ops.methods import DeepFeatureFactorization

    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with DeepFeatureFactorization(model, "5", components=4) as dff:
        expected = dff(x)
    model.cuda()
    with DeepFeatureFactorization(model, "5", components=4) as dff:
        ours = dff(x.cuda())
    torch.testing.assert_close(ours.concepts.cpu(), expected.concepts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.maps.cpu(), expected.maps, rtol=1e-3, atol=1e-3)


def test_compile_cuda_matches_eager():
    torch._dynamo.reset()

    def pipeline(a, g):
        return cam_postprocess(cam_reduce(a, g, "layercam"), 64) * 3.0

    a, g = _inputs((4, 32, 7, 7), torch.float32)
    a, g = a.cuda(), g.cuda()
    compiled = torch.compile(pipeline, fullgraph=True)
    torch.testing.assert_close(compiled(a, g), pipeline(a, g))


def test_device_mismatch_is_a_clear_error():
    a = torch.rand(1, 2, 3, 3, device="cuda")
    with pytest.raises(ValueError, match="gradients must be on the device of activations"):
        cam_reduce(a, a.cpu())


def test_no_host_synchronisation():
    a, g = _inputs((16, 256, 7, 7), torch.float32)
    a, g = a.cuda(), g.cuda()
    cam_postprocess(cam_reduce(a, g, "gradcam"), 224)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cam_postprocess(cam_reduce(a, g, "gradcam++"), 224)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "name",
    ["gradcam", "gradcam++", "layercam", "integrated_gradcam", "gig_cam", "abscam"]
    + ["scorecam", "ablationcam", "eigencam", "cam"],
)
def test_explainers_cuda_match_cpu(name):
    from torchcam_ops.methods import METHODS

    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    options = {"steps": 4} if name in ("integrated_gradcam", "gig_cam") else {}
    cpu = METHODS[name](model, ["4"], **options)(x, [1, 2])
    # without TF32 convolutions: Ablation-CAM's (y - y_k) / y would amplify their rounding
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cuda = METHODS[name](model.cuda(), ["4"], **options)(x.cuda(), [1, 2])
    model.cpu()
    assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
    # GIG-CAM's pixel selection is discontinuous in its guide: compare loosely there
    tol = 5e-2 if name == "gig_cam" else 1e-4
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)


TSGB_CONV_CONFIGS = [
    ((4, 6, 1), 3, 1, 1, 1),
    ((4, 6, 2), 3, 2, 1, 1),
    ((6, 6, 6), 3, 1, 1, 2),
    ((3, 8, 1), 7, 2, 3, 1),
    ((8, 4, 1), 1, 1, 0, 1),
]


@pytest.mark.parametrize("config", TSGB_CONV_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_tsgb_conv2d_backward_cuda_matches_cpu(config, dtype):
    (c_in, c_out, groups), k, s, p, d = config
    x = torch.randn(2, c_in, 13, 11, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64)
    z = torch.nn.functional.conv2d(x, weight, None, s, p, d, groups)
    g = torch.randn_like(z)
    args = ([k, k], [s, s], [p, p], [d, d], groups)
    cpu = torch.ops.torchcam_ops.tsgb_conv2d_backward(g.to(dtype), x.to(dtype), z.to(dtype), *args)
    cuda = torch.ops.torchcam_ops.tsgb_conv2d_backward(
        g.to(dtype).cuda(), x.to(dtype).cuda(), z.to(dtype).cuda(), *args
    )
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2}[dtype]
    scale = float(cpu.double().abs().max())
    torch.testing.assert_close(cuda.cpu().double(), cpu.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("pixels", [(7, 7), (20, 20)], ids=["7x7", "20x20"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_tsgb_conv2d_backward_cuda_deep_layers_match_cpu(pixels, kernel):
    # many channels over few pixels: the channel sums split over whole blocks
    x = torch.randn(3, 300, *pixels, dtype=torch.float64)
    weight = torch.randn(200, 300, kernel, kernel, dtype=torch.float64)
    z = torch.nn.functional.conv2d(x, weight, None, 1, kernel // 2)
    g = torch.randn_like(z)
    args = ([kernel, kernel], [1, 1], [kernel // 2] * 2, [1, 1], 1)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        cpu = torch.ops.torchcam_ops.tsgb_conv2d_backward(g.to(dtype), x.to(dtype), z.to(dtype), *args)
        cuda = torch.ops.torchcam_ops.tsgb_conv2d_backward(
            g.to(dtype).cuda(), x.to(dtype).cuda(), z.to(dtype).cuda(), *args
        )
        scale = float(cpu.double().abs().max())
        torch.testing.assert_close(cuda.cpu().double(), cpu.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("plane", [(5, 7), (8, 8)], ids=["odd-planes", "planes-of-packs"])
def test_tsgb_batch_norm_backward_cuda_matches_cpu(affine, dtype, plane):
    x = torch.randn(4, 6, *plane, dtype=torch.float64)
    x[0, 0, :2] = 0.0  # the rule's X == 0 case
    g = torch.randn_like(x)
    mean, var = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.1
    weight, bias = (
        (torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)) if affine else (None, None)
    )

    def run(device):
        def on(t):
            return None if t is None else t.to(dtype).to(device)

        return torch.ops.torchcam_ops.tsgb_batch_norm_backward(
            on(g), on(x), on(weight), on(bias), on(mean), on(var), 1e-5
        ).cpu()

    cpu, cuda = run("cpu"), run("cuda")
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    scale = float(cpu.double().abs().max())
    torch.testing.assert_close(cuda.double(), cpu.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("mode", ["guided", "deconvnet", "plain"])
def test_rectified_relu_backward_cuda(mode):
    x, g = torch.randn(1000), torch.randn(1000)
    cpu = torch.ops.torchcam_ops.rectified_relu_backward(g, x, mode)
    assert torch.equal(torch.ops.torchcam_ops.rectified_relu_backward(g.cuda(), x.cuda(), mode).cpu(), cpu)


def test_tsgb_method_cuda_matches_cpu():
    import torchvision

    from torchcam_ops.methods import TSGB

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    cpu = TSGB(model)(x, [1, 2])
    # Full float32 convolutions: with TF32 (cuDNN's default on Ampere and later) the forward's
    # rounding alone moves the maps by about 1e-2.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cuda = TSGB(model.cuda())(x.cuda(), [1, 2])
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["tsgb", "guided_backprop", "gradcam_inside_the_checkpoint"])
def test_activation_checkpointing_on_autograds_device_thread_gives_the_cpu_maps(name):
    # On CUDA the backward runs on autograd's device thread: the recomputed checkpointed block must
    # still take the rules (and the capture must not record it again).
    from tests.helpers import CheckpointedCnn
    from torchcam_ops.methods import TSGB, GradCAM, GuidedBackprop

    make = {
        "tsgb": TSGB,
        "guided_backprop": GuidedBackprop,
        "gradcam_inside_the_checkpoint": lambda model: GradCAM(model, ["block.2"]),
    }[name]
    x = torch.rand(2, 3, 12, 12)
    cpu = make(CheckpointedCnn(False).eval())(x, [1, 3])
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cuda = make(CheckpointedCnn(True).eval().cuda())(x.cuda(), [1, 3])
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


def _graph_explainers(model):
    from torchcam_ops.methods import (
        CAM,
        GIGCAM,
        TSGB,
        AblationCAM,
        AbsCAM,
        GradCAM,
        GradCAMPlusPlus,
        GuidedBackprop,
        GuidedGradCAM,
        IntegratedGradCAM,
        LayerCAM,
        ScoreCAM,
    )

    return {
        "gradcam": GradCAM(model, ["4"]),
        "gradcam++": GradCAMPlusPlus(model, ["4"]),
        "layercam": LayerCAM(model, ["4"]),
        "abscam": AbsCAM(model, ["4"], masks_per_forward=8),
        "integrated_gradcam": IntegratedGradCAM(model, ["4"], steps=4),
        "gig_cam": GIGCAM(model, ["4"], steps=3),
        "gig_cam+m": GIGCAM(model, ["4"], steps=2, scales=(16, 24)),
        "tsgb": TSGB(model),
        "guided": GuidedBackprop(model),
        "guided_gradcam": GuidedGradCAM(model, ["4"]),
        # the gradient-free CAMs that need no host read (Eigen-CAM's SVD waits for the device)
        "scorecam": ScoreCAM(model, ["4"], masks_per_forward=8),
        "scorecam_pytorch_grad_cam": ScoreCAM(model, ["4"], variant="pytorch-grad-cam"),
        "ablationcam": AblationCAM(model, ["4"]),
        "cam": CAM(model, ["4"]),
    }


def test_explainers_never_synchronise_the_host():

    model = small_cnn().cuda()
    x = torch.rand(2, 3, 16, 16, device="cuda")
    for targets in (None, torch.tensor([1, 2], device="cuda"), torch.tensor([[1, 2], [3, 4]], device="cuda")):
        for name, explainer in _graph_explainers(model).items():
            explainer(x, targets)  # warm-up: lazy initialisation may synchronise once
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                explainer(x, targets)
            except RuntimeError as error:
                raise AssertionError(f"{name} synchronised the host: {error}") from error
            finally:
                torch.cuda.set_sync_debug_mode("default")


def test_graphed_gradcam_replays_bitwise_equal_to_eager():
    from torchcam_ops.methods import TSGB, GradCAM

    model = small_cnn().cuda()
    targets = torch.tensor([1, 2, 3], device="cuda")
    for explainer in (GradCAM(model, ["4"]), TSGB(model)):
        graphed = explainer.graphed(torch.rand(3, 3, 16, 16, device="cuda"), targets)
        for _ in range(3):
            x = torch.rand(3, 3, 16, 16, device="cuda")
            assert torch.equal(graphed(x), explainer(x, targets))
        # Python ints become a device tensor before the capture (a copy during capture would sync)
        from_ints = explainer.graphed(x, [1, 2, 3])
        assert torch.equal(from_ints(x), explainer(x, targets))
        with pytest.raises(ValueError, match="this graphed call was made for"):
            graphed(torch.rand(2, 3, 16, 16, device="cuda"))


def test_graphed_sess_and_refinecam_replay_equal_to_eager():
    from torchcam_ops.methods import SESS, RefineCAM

    model = small_cnn().cuda()
    targets = torch.tensor([1, 2], device="cuda")
    explainers = (SESS(model, ["4"], num_scales=2, window_size=16, step_size=8), RefineCAM(model, ["2", "4"]))
    for explainer in explainers:
        graphed = explainer.graphed(torch.rand(2, 3, 24, 24, device="cuda"), targets)
        x = torch.rand(2, 3, 24, 24, device="cuda")
        torch.testing.assert_close(graphed(x), explainer(x, targets), rtol=1e-5, atol=1e-5)


def test_compiled_explainers_equal_eager_on_cuda():

    model = small_cnn().cuda()
    x = torch.rand(2, 3, 16, 16, device="cuda")
    targets = torch.tensor([1, 2], device="cuda")
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for name, explainer in _graph_explainers(model).items():
                torch._dynamo.reset()
                tol = 5e-2 if name.startswith("gig_cam") else 1e-5  # GIG-CAM's pixel ranking is discontinuous
                torch.testing.assert_close(
                    explainer.compiled()(x, targets), explainer(x, targets), rtol=tol, atol=tol, msg=name
                )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def test_explaining_a_compiled_model_on_cuda_runs_inductor_code_with_the_eager_maps():
    from torchcam_ops.methods import TSGB, GradCAM

    torch._dynamo.reset()
    model = small_cnn().cuda()
    x = torch.rand(4, 3, 16, 16, device="cuda")
    targets = torch.tensor([1, 2, 3, 0], device="cuda")
    compiled_model = torch.compile(model)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for explainer, eager in (
                (GradCAM(compiled_model, ["4"]), GradCAM(model, ["4"])),
                (TSGB(compiled_model), TSGB(model)),
            ):
                torch.testing.assert_close(explainer(x, targets), eager(x, targets), rtol=1e-5, atol=1e-5)
                with torch._dynamo.config.patch(error_on_recompile=True):
                    x2 = torch.rand_like(x)
                    torch.testing.assert_close(explainer(x2, targets), eager(x2, targets), rtol=1e-5, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_reduce_backward_non_finite_upstream_gradients_as_on_the_cpu(method):
    # The shared formulas (kernels/cam_formulas.h): a NaN or inf upstream reaches the same elements on
    # both devices; Grad-CAM++'s dG stays 0 wherever G <= 0.
    torch.manual_seed(0)
    a = torch.rand(2, 3, 4, 5) + 0.5
    g = torch.randn(2, 3, 4, 5)
    g[0, :, 0, :2] = 0.0
    for bad in (float("nan"), float("inf")):
        grad_cam = torch.ones(2, 4, 5)
        grad_cam[0, 1, 2] = bad
        cpu = torch.ops.torchcam_ops.cam_reduce_backward(grad_cam, a, g, method)
        cuda = torch.ops.torchcam_ops.cam_reduce_backward(grad_cam.cuda(), a.cuda(), g.cuda(), method)
        for on_cpu, on_cuda in zip(cpu, cuda):
            on_cuda = on_cuda.cpu()
            assert torch.equal(on_cpu.isfinite(), on_cuda.isfinite()), (method, bad)
            finite = on_cpu.isfinite()
            torch.testing.assert_close(on_cuda[finite], on_cpu[finite], rtol=1e-5, atol=1e-5)
        if method == "gradcam++":
            assert (cuda[1].cpu()[g <= 0] == 0).all()
