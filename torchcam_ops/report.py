"""``report.html``: one self-contained page (images embedded) with what ``explain`` or ``evaluate``
produced: the command line and versions, tables (sortable by clicking a column), overlays per image
and method, and figures.
"""

from __future__ import annotations

import base64
import html
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Table"]


@dataclass
class Table:
    """A table of the page: a title, the column names and rows of cells (numbers sort as numbers)."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass
class Report:
    """What the page shows, in order: tables, overlays (image name -> method -> PIL image), figures
    (title -> PIL image or matplotlib figure)."""

    title: str
    argv: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    notes: Sequence[str] = ()
    tables: list[Table] = field(default_factory=list)
    overlays: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    figures: Mapping[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> Path:
        """Writes the page and returns its path."""
        path = Path(path)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_text(self.title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{_text(self.title)}</h1>",
            '<section id="provenance"><h2>How this page was made</h2>',
            f"<pre>{_text(shlex.join(str(a) for a in self.argv))}</pre>",
            f"<p>{_text(_versions())}</p>",
            *(f"<p>{_text(note)}</p>" for note in self.notes),
            "</section>",
        ]
        for table in self.tables:
            parts.append(_table(table))
        if self.overlays:
            parts.append(_overlays(self.overlays))
        for title, figure in self.figures.items():
            parts.append(f'<section class="figure"><h2>{_text(title)}</h2>{_image(figure, title)}</section>')
        parts.append(f"<script>{_SCRIPT}</script></body></html>")
        return "\n".join(parts)


def _text(value: Any) -> str:
    return html.escape(str(value))


def _versions() -> str:
    import torch

    import torchcam_ops

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"torchcam-ops {torchcam_ops.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {device}"
    )


def _image(picture: Any, alt: str, **attributes: str) -> str:
    from torchcam_ops.viz import png_bytes

    data = base64.b64encode(png_bytes(picture)).decode("ascii")
    extra = "".join(f' {name}="{_text(value)}"' for name, value in attributes.items())
    return f'<img alt="{_text(alt)}" src="data:image/png;base64,{data}"{extra}>'


def _table(table: Table) -> str:
    head = "".join(f'<th title="sort by {_text(name)}">{_text(name)}</th>' for name in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return (
        f'<section class="table"><h2>{_text(table.title)}</h2>'
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>'
    )


def _overlays(overlays: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for image_name, per_method in overlays.items():
        tiles = "".join(
            f"<figure>{_image(picture, f'{image_name}, {method}', **{'data-image': image_name, 'data-method': method})}"
            f"<figcaption>{_text(method)}</figcaption></figure>"
            for method, picture in per_method.items()
        )
        rows.append(f'<div class="row"><h3>{_text(image_name)}</h3><div class="tiles">{tiles}</div></div>')
    return '<section id="overlays"><h2>Explanations</h2>' + "".join(rows) + "</section>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
pre { background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #eee; cursor: pointer; user-select: none; }
th.ascending::after { content: " \\25B2"; } th.descending::after { content: " \\25BC"; }
td:first-child, th:first-child { text-align: left; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.6em; }
figure { margin: 0; } figure img { max-width: 260px; height: auto; display: block; }
figcaption { text-align: center; font-size: 0.9em; }
.figure img { max-width: 100%; }
"""

# Click a column header to sort its table by that column (numbers as numbers), again to reverse.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.querySelectorAll("th");
  headers.forEach(function (header, column) {
    header.addEventListener("click", function () {
      var ascending = !header.classList.contains("ascending");
      headers.forEach(function (h) { h.classList.remove("ascending", "descending"); });
      header.classList.add(ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].textContent, y = b.cells[column].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
