"""The host cost of one eager Grad-CAM call, next to the peers' and a floor, where compute is negligible.

    pip install ".[bench]"      # pytorch-grad-cam, torchcam, captum (never runtime dependencies)
    python benchmarks/eager_overhead.py [--rounds 15] [--calls 20] [--profile]

A 3-layer CNN on 16x16 inputs (one image, one thread, CPU), so that what is timed is each library's own
work per call. Each library explains its own copy of the model; the libraries take turns, --rounds
rounds of --calls calls each, and the table gives each one's median ms per call over the rounds and its
ratio to the floor: a bare forward hook, the forward pass, ``torch.autograd.grad``, the Grad-CAM formula,
ReLU and a bilinear resize to the input (the least any Grad-CAM call does). Peers that are not installed
are listed, not timed. ``--profile`` prints where this library's call spends its time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import print_table
from torch import nn

from torchcam_ops.methods import GradCAM

SIZE = 16
CLASS = 3


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def floor(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    layer = model[4]
    recorded: list[torch.Tensor] = []
    layer.register_forward_hook(lambda _m, _i, out: recorded.append(out))

    def call(x: torch.Tensor) -> torch.Tensor:
        recorded.clear()
        scores = model(x)[:, CLASS].sum()
        (a,) = recorded
        (g,) = torch.autograd.grad(scores, a)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return call


def ours(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    cam = GradCAM(model, ["4"])
    return lambda x: cam(x, CLASS)


def torchcam(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM
    except ImportError:
        return None
    cam = TorchcamGradCAM(model, target_layer=model[4])

    def call(x: torch.Tensor) -> torch.Tensor:
        scores = model(x)
        return cam(CLASS, scores)[0]

    return call


def captum(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        return None
    cam = LayerGradCam(model, model[4])

    def call(x: torch.Tensor) -> torch.Tensor:
        attribution = cam.attribute(x, target=CLASS, relu_attributions=True)
        return LayerAttribution.interpolate(attribution, x.shape[-2:], interpolate_mode="bilinear")

    return call


def pytorch_grad_cam(model: nn.Module) -> Callable[[torch.Tensor], object] | None:
    try:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    cam = PgcGradCAM(model=model, target_layers=[model[4]])
    targets = [ClassifierOutputTarget(CLASS)]
    return lambda x: cam(input_tensor=x, targets=targets)


LIBRARIES: dict[str, Callable[[nn.Module], Callable | None]] = {
    "floor": floor,
    "torchcam-ops": ours,
    "torchcam": torchcam,
    "captum": captum,
    "pytorch-grad-cam": pytorch_grad_cam,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="profile this library's call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    x = torch.rand(1, 3, SIZE, SIZE)
    calls, missing = {}, []
    for name, make in LIBRARIES.items():
        call = make(copy.deepcopy(small_cnn()))
        if call is None:
            missing.append(name)
        else:
            calls[name] = call
    for call in calls.values():  # warm-up
        for _ in range(args.calls):
            call(x)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                call(x)
            samples[name].append((time.perf_counter() - start) / args.calls)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = [[name, f"{medians[name] * 1e3:.3f}", f"{medians[name] / medians['floor']:.2f}"] for name in calls]
    print(f"Eager Grad-CAM call, 3-layer CNN, 1x3x{SIZE}x{SIZE}, CPU, 1 thread; {args.rounds} rounds of {args.calls}")
    print_table(["library", "ms per call", "x floor"], rows)
    if missing:
        print("not installed (pip install '.[bench]'):", ", ".join(missing))
    if args.profile:
        call = calls["torchcam-ops"]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(200):
                call(x)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
