"""``torchcam-ops`` / ``python -m torchcam_ops``: explain images from the command line.

    torchcam-ops explain [IMAGE...] [--model efficientnet_lite0|module:factory] [--methods gradcam,hirescam]
                         [--targets 281,285] [--layer NAME] [--out DIR]
    torchcam-ops demo    (the ops on a random batch, as a table)

With no image, ``explain`` runs on photos shipped with scikit-image (chelsea the cat, coffee,
astronaut, rocket) and the shipped EfficientNet-Lite0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from torchcam_ops import models
from torchcam_ops.methods import METHODS

DEFAULT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
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
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"explain: unknown methods {unknown}; expected some of {sorted(METHODS)}")
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
        explainer = METHODS[method](model, [args.layer or layer])
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
    commands.add_parser("demo", help="the CAM ops on a random batch, as a table", add_help=False)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from torchcam_ops import demo

        demo.main(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        explain(args)


if __name__ == "__main__":
    main()
