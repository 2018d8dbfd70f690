"""Paired differences between methods from an evaluation's per_object.csv, with 95% intervals.

    python benchmarks/paired_differences.py benchmarks/results/localization/per_object.csv \
        [--baseline gradcam] [--methods tsgb,gig_cam+m,abscam]

For each method and metric, the mean over objects of (method - baseline) and 1.96 standard errors of
that mean: the same objects are explained by both, so the difference is taken object by object.
Average drop and increase in confidence are the per-object terms of their definitions.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict


def per_object_values(path: str) -> dict[str, dict[str, list[float]]]:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda r: (r["method"], int(r["object"]))):
            method = values[row["method"]]
            for name, value in row.items():
                if name not in ("method", "object", "target"):
                    method[name].append(float(value))
            original, masked = float(row["original"]), float(row["masked"])
            method["drop %"].append(100 * max(original - masked, 0.0) / original)
            method["increase %"].append(100.0 * (masked > original))
    return values


def mean_and_interval(differences: list[float]) -> tuple[float, float]:
    n = len(differences)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else float("nan")
    return mean, 1.96 * math.sqrt(variance / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("per_object_csv")
    parser.add_argument("--baseline", default="gradcam")
    parser.add_argument("--methods", default="", help="comma-separated (default: every other method)")
    args = parser.parse_args()
    values = per_object_values(args.per_object_csv)
    if args.baseline not in values:
        raise SystemExit(f"--baseline: {args.baseline!r} is not in the file; it has {sorted(values)}")
    methods = [m for m in args.methods.split(",") if m] or [m for m in values if m != args.baseline]
    metrics = [m for m in values[args.baseline] if m not in ("original", "masked")]
    print(f"{len(values[args.baseline]['hit'])} objects; method - {args.baseline}, mean ± 95% interval")
    print(f"{'method':<22}" + "".join(f"{m:>22}" for m in metrics))
    for method in methods:
        if method not in values:
            raise SystemExit(f"--methods: {method!r} is not in the file")
        cells = []
        for metric in metrics:
            mean, half = mean_and_interval(
                [a - b for a, b in zip(values[method][metric], values[args.baseline][metric])]
            )
            cells.append(f"{mean:+.4f} ± {half:.4f}")
        print(f"{method:<22}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
