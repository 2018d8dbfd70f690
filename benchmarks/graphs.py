"""Explainer calls eager, compiled or replayed, against the limit of what any explainer must do.

    python benchmarks/graphs.py [--device cpu|cuda] [--batches 1,16] [--methods gradcam,layercam,tsgb]

ResNet-50 (random weights: the cost is the same), 224x224, target layer4, one class per image given as
a tensor on the device. For each method and batch size, in one run:

- eager: the explainer call as users make it;
- compiled: ``explainer.compiled()`` (``torch.compile(fullgraph=True)``, Inductor) on the CPU, or
  ``explainer.graphed(x, targets)`` (one CUDA graph replayed) on CUDA;
- limit: the model's forward plus the gradient of the target scores to layer4's output alone
  (``torch.autograd.grad``), no map arithmetic: no explainer of layer4 can do less. For input-gradient
  methods (TSGB, guided) the limit is the forward plus the gradient to the input.

Goals: on the CPU, eager within 1.15x of the limit; on an H100/H200, Grad-CAM at batch 1 graphed <= 1.3 ms
and >= 3.5x faster than eager.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import median_seconds, print_table, record_figures

from torchcam_ops.methods import TSGB, GradCAM, GradCAMPlusPlus, GuidedBackprop, HiResCAM, LayerCAM

EXPLAINERS = {
    "gradcam": lambda m: GradCAM(m, ["layer4"]),
    "gradcam++": lambda m: GradCAMPlusPlus(m, ["layer4"]),
    "layercam": lambda m: LayerCAM(m, ["layer4"]),
    "hirescam": lambda m: HiResCAM(m, ["layer4"]),
    "tsgb": lambda m: TSGB(m),
    "guided": lambda m: GuidedBackprop(m),
}
INPUT_GRADIENT = {"tsgb", "guided"}


def limit_call(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, to_input: bool):
    """The forward plus the gradient of the target scores to layer4's output (or to the input)."""
    captured = {}
    handle = model.layer4.register_forward_hook(lambda module, inputs, output: captured.__setitem__("a", output))

    def call() -> torch.Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            scores = model(leaf).gather(1, targets[:, None]).sum()
            return torch.autograd.grad(scores, leaf if to_input else captured["a"])[0]

    return call, handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,hirescam,tsgb,guided")
    parser.add_argument(
        "--compiled-methods",
        default="gradcam,tsgb",
        help="methods also timed compiled/graphed (compiling ResNet-50 costs about a minute on a CPU)",
    )
    parser.add_argument("--repeats", type=int, default=0, help="default: 20 on CUDA, 5 on the CPU")
    parser.add_argument("--figures", help="append the goal figures to this JSON-lines file (gpu_summary.py)")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"ResNet-50 (random weights), 224x224, layer4, {name}, torch {torch.__version__}; medians of {repeats}")
    rows = []
    figures = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.rand(batch, 3, 224, 224, device=device)
        targets = torch.randint(0, 1000, (batch,), device=device)
        limits = {}
        for to_input in (False, True):
            call, handle = limit_call(model, x, targets, to_input)
            try:
                limits[to_input] = median_seconds(call, device, repeats)
            finally:
                handle.remove()
        for method in args.methods.split(","):
            with EXPLAINERS[method](model) as explainer:
                eager = median_seconds(lambda: explainer(x, targets), device, repeats)
                fast = None
                if method in args.compiled_methods.split(","):
                    torch._dynamo.reset()
                    if device.type == "cuda":
                        graphed = explainer.graphed(x, targets)
                        fast = median_seconds(lambda: graphed(x), device, repeats)
                    else:
                        compiled = explainer.compiled()
                        fast = median_seconds(lambda: compiled(x, targets), device, repeats)
            limit = limits[method in INPUT_GRADIENT]
            if device.type == "cuda" and method == "gradcam" and batch == 1 and fast:
                figures += [
                    {
                        "figure": "Grad-CAM ResNet-50 batch 1, graphed",
                        "value": f"{fast * 1e3:.2f} ms",
                        "goal": "<= 1.3 ms",
                        "met": fast <= 1.3e-3,
                    },
                    {
                        "figure": "Grad-CAM ResNet-50 batch 1, eager / graphed",
                        "value": f"{eager / fast:.2f}x ({eager * 1e3:.2f} ms eager)",
                        "goal": ">= 3.5x",
                        "met": eager / fast >= 3.5,
                    },
                ]
            rows.append(
                [
                    method,
                    str(batch),
                    f"{eager * 1e3:.2f}",
                    f"{fast * 1e3:.2f}" if fast else "-",
                    f"{limit * 1e3:.2f}",
                    f"{eager / limit:.2f}x",
                    f"{eager / fast:.2f}x" if fast else "-",
                ]
            )
    kind = "graphed" if device.type == "cuda" else "compiled"
    print_table(["method", "batch", "eager ms", f"{kind} ms", "limit ms", "eager / limit", f"eager / {kind}"], rows)
    record_figures(args.figures, figures)


if __name__ == "__main__":
    main()
