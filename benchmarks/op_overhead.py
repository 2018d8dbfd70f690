"""Host cost of one call of the TSGB ops against the layers they replace, on tensors too small to compute.

    python benchmarks/op_overhead.py [--calls 3000]

Times, on a 4-channel 2x2 input (one thread; medians of --calls single calls): the forward of
``F.conv2d`` / ``F.batch_norm`` and of ``tsgb_conv2d`` / ``tsgb_batch_norm``, and forward plus
``torch.autograd.grad`` of each. What is left is per-call overhead: argument parsing, dispatch, the
autograd node and its backward. The explainers pay it once per layer (TSGB: about 110 calls per
ResNet-50 explanation), which on a GPU is host time the device waits for.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import torchcam_ops.ops  # noqa: F401  (registers the ops)


def median_us(fn, calls: int) -> float:
    for _ in range(calls // 10):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ops = torch.ops.torchcam_ops
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    weight = torch.randn(4, 4, 1, 1)
    mean, var = torch.zeros(4), torch.ones(4)
    grad = torch.ones(1, 4, 2, 2)
    layers = {
        "conv2d": (
            lambda: F.conv2d(x, weight),
            lambda: ops.tsgb_conv2d.default(x, weight, None, [1, 1], [0, 0], [1, 1], 1),
        ),
        "batch_norm": (
            lambda: F.batch_norm(x, mean, var, None, None, False, 0.0, 1e-5),
            lambda: ops.tsgb_batch_norm.default(x, None, None, mean, var, 1e-5),
        ),
    }
    print(f"torch {torch.__version__}, 1 thread, medians of {args.calls} calls, microseconds per call")
    print(f"{'layer':<11} {'native fwd':>10} {'TSGB fwd':>9} {'native fwd+bwd':>15} {'TSGB fwd+bwd':>13}")
    for name, (native, rule) in layers.items():
        row = [median_us(native, args.calls), median_us(rule, args.calls)]
        for fn in (native, rule):
            row.append(median_us(lambda fn=fn: torch.autograd.grad(fn(), x, grad), args.calls))
        print(f"{name:<11} {row[0]:>10.1f} {row[1]:>9.1f} {row[2]:>15.1f} {row[3]:>13.1f}")


if __name__ == "__main__":
    main()
