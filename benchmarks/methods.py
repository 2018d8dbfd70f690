"""Explainers on ResNet-50 (random weights, 224x224): time per image of each method, T targets in
one call vs T calls, and GIG-CAM batched vs a straightforward per-image reference loop.

    python benchmarks/methods.py [--device cpu] [--batch 16] [--gig-batch 8] [--steps-ig 50]

Random weights change nothing about the cost. Abs-CAM phase 2 runs K = 2048 masked forwards per
image on layer4; it is timed on one image with --abscam-phase2. --peer-methods times the methods that
pytorch-grad-cam also has and that were added here (Eigen-Grad-CAM, FEM, KPCA-CAM, Shapley-CAM, Seg-Eigen-CAM,
Finer-CAM, Random-CAM, FullGrad, the smoothing options, Refine-CAM, SESS, Deep Feature Factorization) and ROAD,
ours against theirs; --torchcam-methods times Smooth Grad-CAM++, SS-CAM and IS-CAM against torchcam's.
--gradient-free times only Score-CAM
(both variants) and Ablation-CAM (K = 2048 masked or ablated forwards per image) on one image, next to
pytorch-grad-cam's ScoreCAM and AblationCAM when it is installed (pip install ".[bench]"), in
alternation, --repeats calls each.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
import torchvision
from _timing import median_seconds, print_table

from torchcam_ops.methods import GIGCAM, METHODS, DeepFeatureFactorization, GradCAM
from torchcam_ops.metrics import road
from torchcam_ops.reference import reference_gig_cam


def reference_gig_cam_loop(model, layer, x, target, steps):
    """GIG-CAM for one image, the straightforward way (tests/test_gig_cam.py): host-side control
    flow, a quantile per inner iteration, one forward and backward per step at batch 1."""
    explainer = GradCAM(model, [layer])

    def guide_of(z, target_class):
        raw = explainer(z[None], [target_class], raw=True)
        return torch.nn.functional.interpolate(raw[None], size=z.shape[-2:], mode="bilinear", align_corners=False)[0, 0]

    return reference_gig_cam(guide_of, x, target, steps=steps)[0]


def pytorch_grad_cam_cam(model, name: str):
    """pytorch-grad-cam's explainer (a context manager that removes its hooks on exit), or None."""
    try:
        import pytorch_grad_cam as pgc
    except ImportError:
        return None
    return {"scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}[name](model=model, target_layers=[model.layer4])


MASKED_IMAGES = 2048  # ResNet-50's layer4 channels: one masked or ablated image each


def gradient_free_table(model, x, repeats: int) -> None:
    """Score-CAM and Ablation-CAM on one image (K = 2048 forwards each), ours and pytorch-grad-cam's,
    timed in alternation (ours, theirs, ours, ...; medians of ``repeats`` calls each): this machine's
    speed drifts by tens of percent over minutes, more than the difference between two libraries
    running the same forwards. No warm-up call: first-call costs are milliseconds against a minute.
    Each library's explainer exists only while it is timed: pytorch-grad-cam's hooks record the
    layer's output on every forward, ours included."""
    classes = model(x).argmax(1)
    rows = []
    for label, name, options, peer in (
        ("scorecam (original)", "scorecam", {}, None),
        ("scorecam (pytorch-grad-cam variant)", "scorecam", {"variant": "pytorch-grad-cam"}, "scorecam"),
        ("ablationcam", "ablationcam", {}, "ablationcam"),
    ):
        ours, theirs = [], []
        for _ in range(repeats):
            with METHODS[name](model, [model.layer4], **options) as explainer:
                ours.append(median_seconds(lambda explainer=explainer: explainer(x, classes), x.device, 1, warmup=0))
            peer_cam = pytorch_grad_cam_cam(model, peer) if peer else None
            if peer_cam is not None:
                from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

                with peer_cam:
                    targets = [ClassifierOutputTarget(int(c)) for c in classes]
                    theirs.append(
                        median_seconds(lambda: peer_cam(input_tensor=x, targets=targets), x.device, 1, warmup=0)
                    )
        mine, peer_time = statistics.median(ours), statistics.median(theirs) if theirs else None
        rows.append(
            [
                label,
                f"{mine:.1f}",
                f"{peer_time:.1f}" if peer_time else "-",
                f"{peer_time / mine:.2f}x" if peer_time else "-",
                f"{1 / mine:.4f}" + (f" | {1 / peer_time:.4f}" if peer_time else ""),
                f"{MASKED_IMAGES / mine:.1f}" + (f" | {MASKED_IMAGES / peer_time:.1f}" if peer_time else ""),
                " ".join(f"{t:.1f}" for t in ours) + (" | " + " ".join(f"{t:.1f}" for t in theirs) if theirs else ""),
            ]
        )
    print(f"\nGradient-free CAMs, one image, K = {MASKED_IMAGES} forwards each, medians of {repeats} alternated calls")
    print_table(
        [
            "method",
            "ours s / image",
            "pytorch-grad-cam s / image",
            "ours faster by",
            "images / s: ours | theirs",
            "masked or ablated images / s",
            "each call: ours | theirs",
        ],
        rows,
    )


#: The added methods that pytorch-grad-cam also has: our name -> its class.
NEW_METHOD_PEERS = {
    "eigengradcam": "EigenGradCAM",
    "fem": "FEM",
    "kpcacam": "KPCA_CAM",
    "shapleycam": "ShapleyCAM",
    "segeigencam": "SegEigenCAM",
    "finercam": "FinerCAM",
    "randomcam": "RandomCAM",
    "fullgrad": "FullGrad",
}


def _alternated(ours, theirs, device, repeats: int) -> tuple[list[float], list[float]]:
    """``repeats`` timings of each of two calls, in alternation, each after one warm-up call."""
    mine, peer = [], []
    for _ in range(repeats):
        mine.append(median_seconds(ours, device, 1, warmup=1))
        peer.append(median_seconds(theirs, device, 1, warmup=1))
    return mine, peer


def peer_methods_table(x, repeats: int) -> None:
    """The methods and options of pytorch-grad-cam 1.5.x that we added, and ROAD, on one image of
    ResNet-50's layer4: ours and theirs in alternation (one warm-up call each, medians of ``repeats``)."""
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.metrics.road import ROADCombined
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("pytorch-grad-cam is not installed: pip install '.[bench]'")
        return
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(x.device)  # parameters with gradients, for theirs
    with torch.no_grad():
        classes = model(x).argmax(1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    layer4, both = [model.layer4], [model.layer3, model.layer4]
    rows = []
    for name, peer_name in NEW_METHOD_PEERS.items():
        peer_targets = None if name == "finercam" else targets
        peer_layers = [] if name == "fullgrad" else layer4
        with METHODS[name](model, layer4) as explainer, getattr(pgc, peer_name)(model, peer_layers) as cam:
            rows.append(
                _ratio_row(
                    name,
                    *_alternated(
                        lambda: explainer(x, classes),
                        lambda: cam(input_tensor=x, targets=peer_targets),
                        x.device,
                        repeats,
                    ),
                )
            )
    calls = {
        "gradcam eigen_smooth": ({"eigen_smooth": True}, {"eigen_smooth": True}),
        "gradcam aug_smooth": ({"aug_smooth": True}, {"aug_smooth": True}),
    }
    with METHODS["gradcam"](model, layer4) as explainer, pgc.GradCAM(model, layer4) as cam:
        for label, (ours_call, their_call) in calls.items():
            rows.append(
                _ratio_row(
                    label,
                    *_alternated(
                        lambda ours_call=ours_call: explainer(x, classes, **ours_call),
                        lambda their_call=their_call: cam(input_tensor=x, targets=targets, **their_call),
                        x.device,
                        repeats,
                    ),
                )
            )
    refine, their_refine = METHODS["refinecam"](model, both), pgc.RefineCAM(model, both)
    rows.append(
        _ratio_row(
            "refinecam (layer3, layer4)",
            *_alternated(lambda: refine(x, classes), lambda: their_refine(x, targets), x.device, repeats),
        )
    )
    sess, their_sess = METHODS["sess"](model, layer4), pgc.SESS(model, layer4)
    rows.append(
        _ratio_row(
            "sess (12 scales, 122 patches)",
            *_alternated(lambda: sess(x, classes), lambda: their_sess(x, targets), x.device, max(1, repeats // 2)),
        )
    )
    dff = DeepFeatureFactorization(model, model.layer4, components=16, classifier=model.fc)
    their_dff = pgc.DeepFeatureFactorization(model=model, target_layer=model.layer4, computation_on_concepts=model.fc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning at 200 sweeps
        rows.append(
            _ratio_row(
                "deep feature factorization (16)",
                *_alternated(lambda: dff(x), lambda: their_dff(x, 16), x.device, repeats),
            )
        )
    with METHODS["gradcam"](model, [model.layer4]) as explainer:
        maps = explainer(x, classes)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(median_seconds(lambda: road(model, x, maps, classes), x.device, 1, warmup=0))
        theirs.append(
            median_seconds(lambda: ROADCombined()(x, maps.cpu().numpy(), targets, model), x.device, 1, warmup=0)
        )
    rows.append(_ratio_row("ROAD (both orders, 9 percentiles)", ours, theirs))
    print(f"\nMethods and options pytorch-grad-cam also has, one image, medians of {repeats} alternated calls")
    print_table(["method", "ours s", "pytorch-grad-cam s", "ours faster by", "each call: ours | theirs"], rows)


def torchcam_methods_table(device: torch.device, repeats: int) -> None:
    """torchcam 0.5's Smooth Grad-CAM++, SS-CAM and IS-CAM against ours (their variant, the same
    work), ResNet-18's layer4 at 112 px, one image: few samples, as each sample of SS-CAM and IS-CAM
    costs 512 masked forwards."""
    try:
        import torchcam.methods as torchcam
    except ImportError:
        print("torchcam is not installed: pip install '.[bench]'")
        return
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.rand(1, 3, 112, 112, device=device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    rows = []
    for name, peer_name, options in (
        ("smoothgradcam++", "SmoothGradCAMpp", {"num_samples": 4}),
        ("sscam", "SSCAM", {"num_samples": 1}),
        ("iscam", "ISCAM", {"num_samples": 2}),
    ):
        extractor = getattr(torchcam, peer_name)(model, "layer4", input_shape=(3, 112, 112), **options)

        def theirs(extractor=extractor, name=name):
            with torch.set_grad_enabled(name == "smoothgradcam++"):
                scores = model(x)
            return extractor(classes.tolist(), scores)

        with METHODS[name](model, ["layer4"], variant="torchcam", **options) as explainer:
            mine, peer = _alternated(lambda explainer=explainer: explainer(x, classes), theirs, device, repeats)
        extractor.remove_hooks()
        rows.append(_ratio_row(f"{name} ({options['num_samples']} samples)", mine, peer))
    print(f"\ntorchcam's methods, ResNet-18 layer4, 112 px, one image, medians of {repeats} alternated calls")
    print_table(["method", "ours s", "torchcam s", "ours faster by", "each call: ours | theirs"], rows)


def _ratio_row(label: str, ours: list[float], theirs: list[float]) -> list[str]:
    mine, peer = statistics.median(ours), statistics.median(theirs)
    calls = " ".join(f"{t:.3f}" for t in ours) + " | " + " ".join(f"{t:.3f}" for t in theirs)
    return [label, f"{mine:.3f}", f"{peer:.3f}", f"{peer / mine:.2f}x", calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps-ig", type=int, default=50)
    parser.add_argument(
        "--ig-batch", type=int, default=2, help="images for Integrated Grad-CAM (steps x images forwards)"
    )
    parser.add_argument("--gig-batch", type=int, default=8)
    parser.add_argument("--gig-steps", type=int, default=30)
    parser.add_argument("--abscam-phase2", action="store_true")
    parser.add_argument("--gradient-free", action="store_true")
    parser.add_argument(
        "--peer-methods", action="store_true", help="the methods pytorch-grad-cam also has, and ROAD, against it"
    )
    parser.add_argument(
        "--torchcam-methods", action="store_true", help="Smooth Grad-CAM++, SS-CAM and IS-CAM against torchcam"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternated calls per library with --gradient-free")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)

    def seconds(fn, repeats: int = 1) -> float:
        """Median time after one warm-up call (allocator and first-call costs)."""
        return median_seconds(fn, device, repeats, warmup=1)

    model = torchvision.models.resnet50(weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    layer = [model.layer4]
    print(
        f"ResNet-50 (random weights), {args.size}x{args.size}, device={device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )

    if args.gradient_free:
        gradient_free_table(model, x[:1], args.repeats)
        return
    if args.peer_methods:
        peer_methods_table(x[:1], args.repeats)
        return
    if args.torchcam_methods:
        torchcam_methods_table(device, args.repeats)
        return
    rows = []
    for name in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam_elementwise", "abscam"):
        options = {"phase": 1} if name == "abscam" else {}
        explainer = METHODS[name](model, layer, **options)
        t = seconds(lambda: explainer(x))
        rows.append([name + (" (phase 1)" if name == "abscam" else ""), str(args.batch), f"{t / args.batch * 1e3:.1f}"])
    ig = METHODS["integrated_gradcam"](model, layer, steps=args.steps_ig)
    t = seconds(lambda: ig(x[: args.ig_batch]), repeats=1)
    rows.append([f"integrated_gradcam ({args.steps_ig} steps)", str(args.ig_batch), f"{t / args.ig_batch * 1e3:.1f}"])
    if args.abscam_phase2:
        abscam = METHODS["abscam"](model, layer, phase=2)
        t = seconds(lambda: abscam(x[:1]), repeats=1)
        rows.append(["abscam (phase 2, K=2048 masked forwards)", "1", f"{t * 1e3:.1f}"])
    print("\nTime per image")
    print_table(["method", "batch", "ms / image"], rows)

    targets = torch.randint(0, 1000, (args.batch, 5), device=device)
    cam = GradCAM(model, layer)
    together = seconds(lambda: cam(x, targets))
    separate = seconds(lambda: [cam(x, targets[:, t]) for t in range(5)])
    print(
        f"\nT = 5 targets per image, batch {args.batch}: one call {together:.2f} s, five calls {separate:.2f} s, "
        f"speed-up {separate / together:.2f}x"
    )

    xg = x[: args.gig_batch]
    classes = cam.model(xg).argmax(1)
    gig = GIGCAM(model, layer, steps=args.gig_steps, batch_size=None)  # the whole batch at once
    batched = seconds(lambda: gig(xg, classes), repeats=1)
    _, diagnostics = gig(xg, classes, diagnostics=True)
    loop = seconds(
        lambda: [
            reference_gig_cam_loop(model, model.layer4, xg[n], int(classes[n]), args.gig_steps)
            for n in range(xg.shape[0])
        ],
        repeats=1,
    )
    print(
        f"GIG-CAM ({args.gig_steps} steps), batch {xg.shape[0]}: batched {batched / xg.shape[0]:.2f} s / image, "
        f"per-image reference loop {loop / xg.shape[0]:.2f} s / image, speed-up {loop / batched:.2f}x "
        f"(unfinished steps: {int(diagnostics.unfinished_steps)})"
    )


if __name__ == "__main__":
    main()
