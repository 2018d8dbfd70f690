"""The files of the command-line jobs, from their runs (``runs.py``): overlays, grids, curves, CSV and
markdown tables and ``report.html``. Every file is written atomically (a temporary name, then a rename),
so an interrupted job leaves complete files or none."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from torchcam_ops.report import Report, Table
from torchcam_ops.runs import EvaluationRun, ExplainRun, TopClasses

#: The names of the sanity check's similarity measures, in the order of the tables.
MEASURE_NAMES = {"spearman": "Spearman rank correlation", "ssim": "SSIM", "hog": "HOG correlation"}


def atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then the temporary file renamed to ``path``: an interrupted command
    leaves complete files (or none), never a truncated one."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def csv_writer(rows: list) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    return write


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def thumbnail(picture, width: int = 360):
    """A copy at most ``width`` pixels wide, for the report page (the overlay files keep full size)."""
    if picture.width <= width:
        return picture
    return picture.resize((width, round(picture.height * width / picture.width)))


def top_class_text(top: TopClasses, label: Callable[[int], str]) -> list[str]:
    """Per image, its top classes with their probabilities: ``"tabby (0.41), tiger cat (0.22), ..."``."""
    return [
        ", ".join(f"{label(i)} ({q:.2f})" for q, i in zip(p, c))
        for p, c in zip(top.probabilities.tolist(), top.classes.tolist())
    ]


def write_explain(
    run: ExplainRun,
    images: list[tuple[str, np.ndarray]],
    top: TopClasses,
    label: Callable[[int], str],
    out: Path,
    argv: list[str],
    note: str,
) -> None:
    """An overlay per image and method at the photo's own size, the grid of all of them, and report.html."""
    from torchcam_ops import viz

    thumbnails: list[dict] = [{} for _ in images]  # per image: method -> overlay, small, for the report
    for method, maps in run.maps.items():
        for (name, image), saliency, per_method in zip(images, maps, thumbnails):
            blended = viz.overlay(image, saliency)
            atomically(out / f"{name}_{method}.png", blended.save)
            per_method[method] = thumbnail(blended)
    titles = [f"{name}: {label(int(t))}" for (name, _), t in zip(images, run.targets.tolist())]
    grid = viz.grid([image for _, image in images], run.maps, titles=titles)
    atomically(out / "explain_grid.png", lambda path: viz.save(grid, path))
    page = Report(
        "torchcam-ops explain",
        argv=argv,
        notes=[note],
        tables=[
            Table(
                "Top classes",
                ["image", "classes (probability)"],
                [[name, text] for (name, _), text in zip(images, top_class_text(top, label))],
            ),
            Table(
                "Time per image",
                ["method", "ms / image"],
                [[m, f"{t * 1e3:.1f}"] for m, t in run.seconds_per_image.items()],
            ),
        ],
        overlays=dict(zip(titles, thumbnails)),
    )
    atomically(out / "report.html", page.write)


def write_evaluation(run: EvaluationRun, out: Path, argv: list[str], curves_title: str) -> list[str]:
    """evaluation.csv (one row per method, the sanity check's cells as more columns), evaluation.md,
    per_object.csv, the deletion and insertion curves, the sanity check's figure and report.html.
    Returns the names of the files besides report.html."""
    from torchcam_ops import evaluation, viz

    summary, sanity = run.summary, run.sanity
    header, rows = list(summary.header), [list(row) for row in summary.rows]
    if sanity is not None:
        for measure in MEASURE_NAMES:
            header += [f"randomisation {MEASURE_NAMES[measure]}: {column}" for column in sanity.columns]
            cells = {row[0]: row[1:] for row in sanity.rows(measure)}
            for row in rows:
                row += cells[row[0]]
    atomically(out / "evaluation.csv", csv_writer([header, *rows]))
    atomically(out / "per_object.csv", csv_writer(evaluation.per_object_rows(run.benchmark, run.results)))
    markdown = [run.about, "", *markdown_table(summary.header, summary.rows)]
    tables = [Table("Metrics", summary.header, summary.rows)]
    figures = {}
    curves = viz.plot_curves(summary.curves, title=curves_title)
    atomically(out / "deletion_insertion.png", lambda path: viz.save(curves, path))
    figures["Deletion and insertion curves (means)"] = viz.plot_curves(summary.curves, title=curves_title)
    written = ["evaluation.csv", "evaluation.md", "per_object.csv", "deletion_insertion.png"]
    if sanity is not None:
        markdown += ["", "## Randomisation sanity check", "", sanity.about, ""]
        markdown += markdown_table(sanity.header(), sanity.rows("spearman"))
        for measure in ("ssim", "hog"):
            markdown += ["", f"### {MEASURE_NAMES[measure]}", ""]
            markdown += markdown_table(sanity.header(), sanity.rows(measure))
            tables.append(
                Table(f"Randomisation sanity check: {MEASURE_NAMES[measure]}", sanity.header(), sanity.rows(measure))
            )
        tables.insert(1, Table("Randomisation sanity check: Spearman rank correlation", sanity.header(), sanity.rows()))
        figure = cascade_figure(sanity)
        atomically(out / "sanity_check.png", lambda path: viz.save(figure, path))
        figures["Randomisation sanity check: the maps of one input along the cascade"] = cascade_figure(sanity)
        written.append("sanity_check.png")
    atomically(out / "evaluation.md", lambda path: path.write_text("\n".join(markdown) + "\n"))
    page = Report(
        "torchcam-ops evaluate",
        argv=argv,
        notes=[run.about] + ([sanity.about] if sanity else []),
        tables=tables,
        figures=figures,
    )
    atomically(out / "report.html", page.write)
    return written


def cascade_figure(sanity):
    """One row per method: the input, then its map from the trained model and after each stage."""
    from torchcam_ops import viz

    image = sanity.image
    if image.shape[0] == 3:  # a normalised photo: back to [0, 1] for display
        image = (image - image.amin()) / (image.amax() - image.amin()).clamp_min(1e-12)
    picture = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()
    columns = sanity.figure_maps()
    return viz.grid(
        [picture] * len(sanity.results),
        {title: [m.float().cpu().numpy() for m in maps] for title, maps in columns.items()},
        titles=list(sanity.results),
    )
