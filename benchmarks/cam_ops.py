"""Fused CAM ops against the same maths in eager PyTorch, torch.compile, and a bandwidth floor.

    python benchmarks/cam_ops.py [--device cpu|cuda] [--dtype float32] [--methods gradcam,layercam]

For each shape typical of a real network it prints the median time of:
  fused     cam_reduce + cam_postprocess (this library; the whole A, G -> [N, 224, 224] maps)
  reduce    cam_reduce alone
  eager     the same maths as eager PyTorch ops
  compiled  that eager function through torch.compile (Inductor)
  floor     one read of A and G (A.sum() + G.sum()): what any method must at least pay
and the ratios eager/fused, compiled/fused, fused/floor. On CUDA every time is device time: ten
calls captured in one CUDA graph and replayed (the host launches two small ops more slowly than the
device runs them, so timing single calls would time the host), and the table adds the achieved
bandwidth of the fused ops (A and G read once, the maps written once) as a fraction of the device's
measured copy bandwidth. Goals (issue 13): >= 60% of copy bandwidth, and fused >= 1.5x faster than
torch.compile of the eager formula on every shape.
"""

from __future__ import annotations

import argparse

import torch
from _timing import graph_seconds, median_seconds, print_table, record_figures

import torchcam_ops
from torchcam_ops.reference import reference_cam, reference_postprocess

SHAPES = {
    "resnet50.layer4": (64, 2048, 7, 7, 224),
    "vgg16.conv5_3": (32, 512, 14, 14, 224),
    "early layer (56x56)": (16, 256, 56, 56, 224),
}


def eager_pipeline(a: torch.Tensor, g: torch.Tensor, method: str, size: int) -> torch.Tensor:
    """The same maths as eager PyTorch ops, in the inputs' dtype (the references' formulas)."""
    return reference_postprocess(reference_cam(a, g, method, dtype=a.dtype), (size, size), dtype=a.dtype)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--methods", default="gradcam,layercam")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--figures", help="append the goal figures to this JSON-lines file (gpu_summary.py)")
    parser.add_argument("--profile", action="store_true", help="then the kernels of the fused ops on the first shape")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device={device} ({where}), dtype={args.dtype}, torch {torch.__version__}, median of {args.repeats}")
    copy_bw = None
    if device.type == "cuda":
        copy_bw = copy_bandwidth(device, 1 << 30, args.repeats)
        print(f"measured copy bandwidth: {copy_bw / 1e9:.0f} GB/s (1 GiB device-to-device copy, read + write)")

    headers = [
        "shape",
        "method",
        "fused ms",
        "reduce ms",
        "eager ms",
        "compiled ms",
        "floor ms",
        "eager/fused",
        "compiled/fused",
        "fused/floor",
    ]
    if copy_bw:
        headers.append("fused % copy bw")

    def timed(fn) -> float:
        return graph_seconds(fn, args.repeats) if device.type == "cuda" else median_seconds(fn, device, args.repeats)

    rows = []
    figures = []
    for name, (n, k, h, w, size) in SHAPES.items():
        a = torch.rand(n, k, h, w, device=device, dtype=dtype)
        g = torch.randn(n, k, h, w, device=device, dtype=dtype) / (h * w)
        floor = timed(lambda: a.sum() + g.sum())
        for method in args.methods.split(","):
            fused = timed(lambda: torchcam_ops.cam_postprocess(torchcam_ops.cam_reduce(a, g, method), size))
            reduce_only = timed(lambda: torchcam_ops.cam_reduce(a, g, method))
            eager = timed(lambda: eager_pipeline(a, g, method, size))
            compiled = float("nan")
            if not args.no_compile:
                torch._dynamo.reset()
                fn = torch.compile(lambda x, y: eager_pipeline(x, y, method, size), fullgraph=True)
                compiled = timed(lambda: fn(a, g))
            row = [
                name,
                method,
                f"{fused * 1e3:.3f}",
                f"{reduce_only * 1e3:.3f}",
                f"{eager * 1e3:.3f}",
                f"{compiled * 1e3:.3f}",
                f"{floor * 1e3:.3f}",
                f"{eager / fused:.2f}x",
                f"{compiled / fused:.2f}x",
                f"{fused / floor:.2f}x",
            ]
            label = f"cam_reduce+cam_postprocess {method} {name} ({n}x{k}x{h}x{w} -> {size}, {args.dtype})"
            if copy_bw:
                moved = 2 * a.numel() * a.element_size() + n * size * size * a.element_size()
                share = moved / fused / copy_bw
                row.append(f"{100 * share:.0f}%")
                figures.append(
                    {
                        "figure": label + ", % of copy bandwidth",
                        "value": f"{100 * share:.0f}% ({fused * 1e3:.3f} ms)",
                        "goal": ">= 60%",
                        "met": share >= 0.6,
                    }
                )
            if not args.no_compile:
                figures.append(
                    {
                        "figure": label + ", compiled / fused",
                        "value": f"{compiled / fused:.2f}x",
                        "goal": ">= 1.5x",
                        "met": compiled / fused >= 1.5,
                    }
                )
            rows.append(row)
    print_table(headers, rows)
    if device.type == "cuda":
        record_figures(args.figures, figures)
    if args.profile:
        n, k, h, w, size = next(iter(SHAPES.values()))
        a = torch.rand(n, k, h, w, device=device, dtype=dtype)
        g = torch.randn(n, k, h, w, device=device, dtype=dtype) / (h * w)
        for method in args.methods.split(","):
            torchcam_ops.cam_postprocess(torchcam_ops.cam_reduce(a, g, method), size)
        with torch.profiler.profile() as prof:
            for method in args.methods.split(","):
                for _ in range(10):
                    torchcam_ops.cam_postprocess(torchcam_ops.cam_reduce(a, g, method), size)
            if device.type == "cuda":
                torch.cuda.synchronize()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n{next(iter(SHAPES))}, 10 calls per method:")
        print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=70))


if __name__ == "__main__":
    main()
