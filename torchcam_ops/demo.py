"""A short demonstration of the ops: CAMs of a random batch through a small seeded CNN.

One forward pass captures the last convolution's activations, one ``torch.autograd.grad`` gives
their gradients for each image's top class, then every CAM method runs through ``cam_reduce`` and
``cam_postprocess``. The table compares each method with the same maths in eager PyTorch ops.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torchcam_ops.ops import CAM_METHODS, cam_postprocess, cam_reduce
from torchcam_ops.reference import reference_cam, reference_postprocess


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def activations_and_gradients(model: nn.Module, layer: nn.Module, x: torch.Tensor):
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    target = logits.argmax(1)
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured[0])
    return captured[0].detach(), grads, target


def alternated_timings(first, second, repeats: int = 15, synchronize=lambda: None) -> tuple[float, float]:
    """Median seconds per call of two functions, each warmed up once (the first call of an op pays
    one-off costs: loading, allocation, thread-pool start) and then called in alternation, so that
    both meet the same machine load. ``synchronize`` waits for a device's queued work."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, samples in zip((first, second), times):
            start = time.perf_counter()
            fn()
            synchronize()
            samples.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="torchcam-ops demo", description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="input image size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each implementation")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive number of calls, got {args.repeats}")

    model = small_cnn().to(args.device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device, generator=None)
    a, g, target = activations_and_gradients(model, model[6], x)
    print(f"batch {tuple(x.shape)} on {args.device}; layer activations {tuple(a.shape)}; top classes {target.tolist()}")
    header = (
        f"{'method':<21}{'ops ms':>9}{'eager ms':>10}{'speed-up':>10}{'max |ops - eager|':>19}{'mean map':>10}"
        f"{'peak (y, x) of image 0':>24}"
    )
    print(header)
    print("-" * len(header))
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for method in CAM_METHODS:
        ops = lambda: cam_postprocess(cam_reduce(a, g, method), args.size)
        eager = lambda: reference_postprocess(
            reference_cam(a, g, method, dtype=a.dtype), (args.size, args.size), dtype=a.dtype
        )
        ops_seconds, eager_seconds = alternated_timings(ops, eager, args.repeats, synchronize)
        maps, reference = ops(), eager()
        peak = divmod(int(maps[0].argmax()), args.size)
        print(
            f"{method:<21}{ops_seconds * 1e3:>9.3f}{eager_seconds * 1e3:>10.3f}{eager_seconds / ops_seconds:>9.1f}x"
            f"{float((maps - reference).abs().max()):>19.2e}{float(maps.mean()):>10.3f}{str(peak):>24}"
        )
    print(
        f"\nops: cam_reduce + cam_postprocess (fused kernels); eager: the same maths in plain PyTorch ops. "
        f"Milliseconds per call: the median of {args.repeats} calls of each, in alternation, after one warm-up "
        f"call each ({args.device}; {torch.get_num_threads()} CPU threads)."
    )


if __name__ == "__main__":
    main()
