"""This library next to its peers on the same model, input and targets: time per call and agreement.

    pip install ".[bench]"      # pytorch-grad-cam, torchcam, captum (never runtime dependencies)
    python benchmarks/peers.py [--device cpu|cuda] [--batches 1,16] [--methods gradcam,gradcam++,layercam]

ResNet-50 (random weights, eval), 224x224, target layer4, one class per image. For each method and
batch size: the median ms per call of each library that is installed (peers that are missing are
listed, not timed), the ratio to this library's eager call (and its graphed call on CUDA), and the
largest absolute difference of the maps from pytorch-grad-cam's, the most used peer (its maps are
normalised, resized and normalised again, which equals ours to float32 precision).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torchvision
from _timing import median_seconds, print_table

from torchcam_ops.methods import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM

OURS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}


def pytorch_grad_cam(model, method: str) -> Callable | None:
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    cls = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
    }[method]
    cam = cls(model=model, target_layers=[model.layer4])

    def call(x, targets):
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.from_numpy(maps)

    return call


def torchcam(model, method: str) -> Callable | None:
    try:
        from torchcam import methods as tc
    except ImportError:
        return None
    cls = {"gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "xgradcam": tc.XGradCAM, "layercam": tc.LayerCAM}[method]
    extractor = cls(model, target_layer="layer4")

    def call(x, targets):
        # torchcam returns low-resolution maps [N, 7, 7]; one backward per call with a list of classes
        return extractor(targets.tolist(), model(x))[0]

    return call


def captum(model, method: str) -> Callable | None:
    if method != "gradcam":
        return None
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        return None
    attribution = LayerGradCam(model, model.layer4)

    def call(x, targets):
        raw = attribution.attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(raw, x.shape[-2:], interpolate_mode="bilinear")[:, 0]

    return call


PEERS = {"pytorch-grad-cam": pytorch_grad_cam, "torchcam": torchcam, "captum": captum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam")
    parser.add_argument("--repeats", type=int, default=0, help="default: 20 on CUDA, 5 on the CPU")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"ResNet-50 (random weights), 224x224, layer4, {name}, torch {torch.__version__}; medians of {repeats}")
    missing = [peer for peer, make in PEERS.items() if make(model, "gradcam") is None]
    if missing:
        print(f"not installed (pip install '.[bench]'): {', '.join(missing)}")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.rand(batch, 3, 224, 224, device=device)
        targets = torch.randint(0, 1000, (batch,), device=device)
        for method in args.methods.split(","):
            with OURS[method](model, ["layer4"]) as ours:
                our_maps = ours(x, targets)
                ours_s = median_seconds(lambda: ours(x, targets), device, repeats)
                graphed_s = None
                if device.type == "cuda":
                    graphed = ours.graphed(x, targets)
                    graphed_s = median_seconds(lambda: graphed(x), device, repeats)
            row = [method, str(batch), f"{ours_s * 1e3:.2f}", f"{graphed_s * 1e3:.2f}" if graphed_s else "-"]
            reference = None
            for peer, make in PEERS.items():
                call = make(model, method)
                if call is None:
                    row.append("-")
                    continue
                maps = call(x, targets)
                peer_s = median_seconds(lambda: call(x, targets), device, repeats)
                if peer == "pytorch-grad-cam":
                    reference = maps.to(our_maps.device, our_maps.dtype)
                row.append(f"{peer_s * 1e3:.2f} ({peer_s / ours_s:.1f}x)")
            row.append(f"{float((our_maps - reference).abs().max()):.1e}" if reference is not None else "-")
            rows.append(row)
    print_table(
        [
            "method",
            "batch",
            "ours ms",
            "ours graphed ms",
            *[f"{p} ms (vs ours)" for p in PEERS],
            "max |ours - pytorch-grad-cam|",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
