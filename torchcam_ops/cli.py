"""``torchcam-ops`` / ``python -m torchcam_ops``: explain images from the command line.

    torchcam-ops explain [IMAGE...] [--model efficientnet_lite0|module:factory] [--methods gradcam,hirescam]
                         [--targets 281,285] [--layer NAME] [--out DIR]
    torchcam-ops evaluate [--benchmark photos|localization] [--methods ...] [--step PIXELS] [--count N]
                          [--chunk N] [--device cpu|cuda] [--out DIR]
    torchrun --nproc-per-node 2 -m torchcam_ops evaluate ...   (the same result, the objects shared out)
    torchcam-ops demo    (the ops on a random batch, as a table)

With no image, ``explain`` runs on photos shipped with scikit-image (chelsea the cat, coffee,
astronaut, rocket) and the shipped EfficientNet-Lite0.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from torchcam_ops import models
from torchcam_ops.evaluation import all_methods, make_explainer

DEFAULT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _check_methods(command: str, names: str) -> list[str]:
    methods = [m.strip() for m in names.split(",") if m.strip()]
    unknown = [m for m in methods if m not in all_methods()]
    if unknown:
        raise SystemExit(f"{command}: unknown methods {unknown}; expected some of {all_methods()}")
    return methods


DEFAULT_METHODS = "gradcam,gradcam++,xgradcam,layercam,hirescam,gradcam_elementwise"


def _load_images(paths: list[str]) -> list[tuple[str, np.ndarray]]:
    if not paths:
        try:
            import skimage.data
        except ImportError as err:
            raise SystemExit("explain: give image paths, or pip install scikit-image for the default photos") from err
        return [(name, getattr(skimage.data, name)()) for name in DEFAULT_PHOTOS]
    from PIL import Image

    images = []
    for path in paths:
        try:
            images.append((Path(path).stem, np.asarray(Image.open(path).convert("RGB"))))
        except OSError as err:
            raise SystemExit(f"explain: cannot read image {path!r}: {err}") from err
    return images


def _load_model(spec: str):
    """A shipped model name, or ``module:factory`` returning (model, preprocess, target_layer)."""
    if ":" in spec:
        module_name, _, factory = spec.partition(":")
        model, preprocess, layer = getattr(importlib.import_module(module_name), factory)()
        return model.eval(), preprocess, layer, None
    model, preprocess = models.load(spec)
    return model, preprocess, models.spec(spec).target_layer, models.imagenet_categories()


def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map for values in [0, 1], as uint8 RGB."""
    v = values[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return ((1 - alpha) * image + alpha * jet(saliency)).astype(np.uint8)


def _titled(tile: np.ndarray, title: str):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (tile.shape[1], tile.shape[0] + 16), "white")
    canvas.paste(Image.fromarray(tile), (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), title[:36], fill="black")
    return canvas


def explain(args: argparse.Namespace) -> None:
    from PIL import Image

    model, preprocess, layer, categories = _load_model(args.model)
    methods = _check_methods("explain", args.methods)
    images = _load_images(args.images)
    x = torch.stack([preprocess(image) for _, image in images])
    size = x.shape[-1]
    shown = [np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for _, image in images]
    label = (lambda c: categories[c]) if categories else str

    with torch.no_grad():
        probabilities = model(x).softmax(1)
    top = probabilities.topk(3, dim=1)
    if args.targets:
        targets = torch.tensor([int(t) for t in args.targets.split(",")])
        if targets.numel() == 1:
            targets = targets.expand(len(images))
        if targets.numel() != len(images):
            raise SystemExit(f"explain: --targets needs 1 or {len(images)} class indices")
    else:
        targets = top.indices[:, 0]
    for (name, _), p, c in zip(images, top.values, top.indices):
        print(f"{name}: " + ", ".join(f"{label(int(i))} ({float(q):.2f})" for q, i in zip(p, c)))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [[_titled(tile, f"{name}: {label(int(t))}")] for (name, _), tile, t in zip(images, shown, targets)]
    timings = []
    for method in methods:
        explainer = make_explainer(method, model, args.layer or layer, size)
        start = time.perf_counter()
        maps = explainer(x, targets).numpy()
        timings.append((method, (time.perf_counter() - start) / len(images)))
        for i, ((name, _), tile) in enumerate(zip(images, shown)):
            blended = overlay(tile, maps[i])
            Image.fromarray(blended).save(out / f"{name}_{method}.png")
            rows[i].append(_titled(blended, method))
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * len(rows[0]), height * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * width, r * height))
    grid.save(out / "explain_grid.png")
    print(f"\n{'method':<22}{'ms / image':>12}")
    for method, seconds in timings:
        print(f"{method:<22}{seconds * 1e3:>12.1f}")
    print(f"\nwrote {out / 'explain_grid.png'} and {len(images) * len(methods)} overlays in {out}/")


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (255, 200, 0),
           (0, 0, 255), (128, 0, 64)]


def _plot_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Mean deletion and insertion curves per method, two panels, drawn with PIL."""
    from PIL import Image, ImageDraw

    panel_w, panel_h, margin = 420, 300, 40
    canvas = Image.new("RGB", (2 * panel_w, panel_h + 20 * len(curves) + 10), "white")
    draw = ImageDraw.Draw(canvas)
    for panel, title in enumerate(("deletion (lower is better)", "insertion (higher is better)")):
        left = panel * panel_w + margin
        right, top, bottom = (panel + 1) * panel_w - 15, 25, panel_h - margin
        draw.text((left, 5), title, fill="black")
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left - 12, bottom - 6), "0", fill="black")
        draw.text((left - 12, top - 6), "1", fill="black")
        draw.text((right - 40, bottom + 5), "fraction", fill="black")
        for index, (fractions, deletion_mean, insertion_mean) in enumerate(curves.values()):
            colour = PALETTE[index % len(PALETTE)]
            ys = deletion_mean if panel == 0 else insertion_mean
            points = [(left + f * (right - left), bottom - y * (bottom - top)) for f, y in zip(fractions, ys)]
            draw.line(points, fill=colour, width=2)
    for i, method in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        y = panel_h + 5 + 20 * i
        draw.line([(margin, y + 6), (margin + 25, y + 6)], fill=colour, width=3)
        draw.text((margin + 32, y), method, fill="black")
    canvas.save(path)


def evaluate(args: argparse.Namespace) -> None:
    from torchcam_ops import evaluation

    methods = _check_methods("evaluate", args.methods)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        processes = evaluation.Processes(device)
    except ValueError as err:
        raise SystemExit(f"evaluate: {err}") from err
    try:
        if args.benchmark == "photos":
            model, preprocess, layer, _ = _load_model(args.model)
            benchmark = evaluation.photos_benchmark(model, preprocess, args.layer or layer, args.model)
        elif args.benchmark == "localization":
            benchmark = evaluation.localization_benchmark(args.count, args.layer)
        else:
            raise SystemExit(f"evaluate: unknown benchmark {args.benchmark!r}; available: photos, localization")
        if args.step:
            benchmark.step = args.step
        benchmark.model.to(processes.device)
        leader = processes.rank == 0
        results = {}
        for i, method in enumerate(methods, 1):
            if leader:
                print(f"[{i}/{len(methods)}] {method} on {len(benchmark.targets)} objects, {processes.world} "
                      f"process(es)", file=sys.stderr, flush=True)
            try:
                results[method] = evaluation.evaluate_method(benchmark, method, processes, args.chunk,
                                                             show_progress=leader)
            except ValueError as err:
                raise SystemExit(f"evaluate: {err}") from err
    finally:
        processes.close()
    if not leader:
        return
    report = evaluation.summarize(benchmark, results)
    about = (benchmark.about + f"; deletion/insertion step {benchmark.step} px, substrates 0 and blur(11, sigma=5); "
             f"{processes.world} process(es) on {processes.device.type}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation.csv", "w", newline="") as f:
        csv.writer(f).writerows([report.header, *report.rows])
    with open(out / "per_object.csv", "w", newline="") as f:
        csv.writer(f).writerows(evaluation.per_object_rows(benchmark, results))
    markdown = ["| " + " | ".join(report.header) + " |", "|" + "---|" * len(report.header)]
    markdown += ["| " + " | ".join(row) + " |" for row in report.rows]
    (out / "evaluation.md").write_text(about + "\n\n" + "\n".join(markdown) + "\n")
    _plot_curves(out / "deletion_insertion.png", report.curves)
    widths = [max(len(h), *(len(r[k]) for r in report.rows)) for k, h in enumerate(report.header)]
    print(about)
    print("  ".join(h.ljust(w) for h, w in zip(report.header, widths)))
    for row in report.rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"\nwrote evaluation.csv, evaluation.md, per_object.csv and deletion_insertion.png in {out}/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="torchcam-ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    explain_parser = commands.add_parser("explain", help="explain images (default: shipped photos and model)")
    explain_parser.add_argument("images", nargs="*")
    explain_parser.add_argument("--model", default="efficientnet_lite0")
    explain_parser.add_argument("--methods", default=DEFAULT_METHODS)
    explain_parser.add_argument("--targets", default="", help="class indices, one for all or one per image")
    explain_parser.add_argument("--layer", default="", help="target layer (default: the model's)")
    explain_parser.add_argument("--out", default="torchcam-ops-out")
    evaluate_parser = commands.add_parser("evaluate", help="faithfulness and localisation metrics per method")
    evaluate_parser.add_argument("--benchmark", default="photos")
    evaluate_parser.add_argument("--model", default="efficientnet_lite0")
    evaluate_parser.add_argument("--methods", default=DEFAULT_METHODS)
    evaluate_parser.add_argument("--layer", default="")
    evaluate_parser.add_argument("--step", type=int, default=0,
                                 help="pixels changed per deletion/insertion step (default: 8 rows of a photo, 4 of a canvas)")
    evaluate_parser.add_argument("--count", type=int, default=200, help="canvases of the localization benchmark")
    evaluate_parser.add_argument("--chunk", type=int, default=16,
                                 help="objects explained together; the unit of work shared out among torchrun processes")
    evaluate_parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    evaluate_parser.add_argument("--out", default="torchcam-ops-out")
    commands.add_parser("demo", help="the CAM ops on a random batch, as a table", add_help=False)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from torchcam_ops import demo

        demo.main(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    elif args.command == "evaluate":
        evaluate(args)
    else:
        explain(args)


if __name__ == "__main__":
    main()
