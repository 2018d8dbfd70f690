"""The scripts in benchmarks/ that rewrite committed results: merge_evaluations.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_evaluations.py"
ABOUT = "Benchmark: toy (2 objects), 1 process(es) on cpu."
COLUMNS = "| method | deletion AUC | ms / object |"


def write_run(folder: Path, methods: list[str], tables: int = 1, processes: int = 1) -> None:
    folder.mkdir()
    table = [COLUMNS, "|---|---|---|"] + [f"| {m} | 0.{i}00 | {i}.0 |" for i, m in enumerate(methods)]
    lines = [ABOUT.replace("1 process", f"{processes} process")]
    for _ in range(tables):
        lines += ["", *table]
    (folder / "evaluation.md").write_text("\n".join(lines) + "\n")
    (folder / "evaluation.csv").write_text(
        "method,deletion AUC,ms / object\n" + "".join(f"{m},0.{i}00,{i}.0\n" for i, m in enumerate(methods))
    )
    (folder / "per_object.csv").write_text(
        "method,object,deletion_auc\n" + "".join(f"{m},{o},0.{i}{o}\n" for i, m in enumerate(methods) for o in (0, 1))
    )


def merge(base: Path, added: Path, methods: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(base), str(added), "--methods", methods],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_merge_adds_the_rows_of_the_named_methods(tmp_path):
    write_run(tmp_path / "base", ["gradcam", "tsgb"])
    write_run(tmp_path / "added", ["gradcam", "scorecam", "cam"], processes=2)
    (tmp_path / "base" / "paired_differences.txt").write_text("old\n")
    result = merge(tmp_path / "base", tmp_path / "added", "cam,scorecam")
    assert result.returncode == 0, result.stderr
    assert "paired_differences.txt predates them" in result.stdout
    rows = (tmp_path / "base" / "evaluation.md").read_text().splitlines()
    assert [row.split(" | ")[0] for row in rows if row.startswith("| ") and "---" not in row][1:] == [
        "| gradcam",
        "| tsgb",
        "| cam",
        "| scorecam",
    ]
    csv_methods = [line.split(",")[0] for line in (tmp_path / "base" / "per_object.csv").read_text().splitlines()]
    assert csv_methods == ["method", "gradcam", "gradcam", "tsgb", "tsgb", "cam", "cam", "scorecam", "scorecam"]


@pytest.mark.parametrize(
    ("base_tables", "added_methods", "methods", "message"),
    [
        (4, ["scorecam"], "scorecam", "holds 4 tables"),  # an evaluate --sanity folder
        (1, ["gradcam", "scorecam"], "gradcam", "gradcam is already in"),
        (1, ["scorecam"], "eigencam", "eigencam is not in"),
    ],
)
def test_merge_refuses_what_it_cannot_merge_and_leaves_the_base_as_it_was(
    tmp_path, base_tables, added_methods, methods, message
):
    write_run(tmp_path / "base", ["gradcam"], tables=base_tables)
    write_run(tmp_path / "added", added_methods)
    before = {p.name: p.read_text() for p in (tmp_path / "base").iterdir()}
    result = merge(tmp_path / "base", tmp_path / "added", methods)
    assert result.returncode != 0
    assert message in result.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "base").iterdir()} == before
