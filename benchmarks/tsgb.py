"""TSGB explanations against a plain input gradient and against the same rules as plain PyTorch.

    python benchmarks/tsgb.py [--device cpu] [--repeats 3] [--size 224] [--batches 1,8]

For ResNet-50 and VGG-16 (random weights, frozen parameters), at each batch size, prints the median
time of: a TSGB explanation (one forward, one backward, the map); a plain input gradient (forward
+ backward of the target logit); and the rules written as plain PyTorch autograd Functions
(torchcam_ops/reference/tsgb.py). Goals: TSGB within 1.5x of the plain gradient at batch 1 and 1.3x at
batch 16 (issue 13, on an H100/H200), at least 2x faster than the plain-PyTorch rules.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import median_seconds, print_table, record_figures

from torchcam_ops.methods import TSGB
from torchcam_ops.reference import reference_tsgb_model


def input_gradient(model, x, targets):
    leaf = x.detach().requires_grad_(True)
    logits = model(leaf)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), leaf)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--figures", help="append the goal figures to this JSON-lines file (gpu_summary.py)")
    parser.add_argument("--profile", action="store_true", help="then where one ResNet-50 TSGB call spends its time")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"device={device}, {torch.get_num_threads()} threads, {args.size}x{args.size}, median of {args.repeats}, "
        f"torch {torch.__version__}"
    )
    rows = []
    figures = []
    for arch, classifier in (("resnet50", "fc"), ("vgg16", "classifier.6")):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        reference = reference_tsgb_model(model, classifier)
        explainer = TSGB(model)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.rand(batch, 3, args.size, args.size, device=device)
            targets = torch.randint(0, 1000, (batch,), device=device)
            tsgb_s = median_seconds(lambda: explainer(x, targets), device, args.repeats, warmup=3)
            plain_s = median_seconds(lambda: input_gradient(model, x, targets), device, args.repeats, warmup=3)
            reference_s = median_seconds(lambda: input_gradient(reference, x, targets), device, args.repeats, warmup=3)
            rows.append(
                [
                    arch,
                    str(batch),
                    f"{tsgb_s * 1e3:.1f}",
                    f"{plain_s * 1e3:.1f}",
                    f"{reference_s * 1e3:.1f}",
                    f"{tsgb_s / plain_s:.2f}x",
                    f"{reference_s / tsgb_s:.2f}x",
                ]
            )
            goal = 1.5 if batch == 1 else 1.3
            figures.append(
                {
                    "figure": f"TSGB / plain input gradient, {arch} batch {batch}",
                    "value": f"{tsgb_s / plain_s:.2f}x ({tsgb_s * 1e3:.1f} vs {plain_s * 1e3:.1f} ms)",
                    "goal": f"<= {goal}x",
                    "met": tsgb_s / plain_s <= goal,
                }
            )
    print_table(
        ["model", "batch", "TSGB ms", "plain grad ms", "PyTorch rules ms", "TSGB / plain", "rules / TSGB"], rows
    )
    if device.type == "cuda":
        record_figures(args.figures, figures)
    if args.profile:
        profile(device, max(int(b) for b in args.batches.split(",")), args.size)


def profile(device: torch.device, batch: int, size: int) -> None:
    """The operators and kernels of one TSGB call on ResNet-50, by total time."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, 3, size, size, device=device)
    targets = torch.randint(0, 1000, (batch,), device=device)
    explainer = TSGB(model)
    explainer(x, targets)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            explainer(x, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nResNet-50 TSGB, batch {batch}, 3 calls:")
    print(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
