"""Adds the rows of methods evaluated in a later run to a committed `torchcam-ops evaluate` folder.

    python benchmarks/merge_evaluations.py benchmarks/results/localization \
        benchmarks/results/localization/gradient_free --methods scorecam,ablationcam,eigencam,cam

A benchmark of 200 canvases takes hours for every method on 2 cores; a method added later is evaluated
alone and its rows join the table. Both runs must describe the same benchmark (the first line of
`evaluation.md`, the process count aside) and have the same columns; a method already in the base folder
is refused, and so is a folder whose `evaluation.md` holds more than one table (an `evaluate --sanity` run).
`evaluation.csv`, the table of `evaluation.md` and `per_object.csv` gain the rows; the base's curves figure
and `report.html` are left as they are (the added run has its own), and `paired_differences.txt` is to be
regenerated from the merged `per_object.csv` (`benchmarks/paired_differences.py`; the script says so).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def benchmark_of(about: str) -> str:
    """The benchmark description of an evaluation.md's first line, without the process count."""
    return re.sub(r"\d+ process\(es\)", "N process(es)", about.strip())


def merge(base: Path, added: Path, methods: list[str]) -> None:
    base_md = (base / "evaluation.md").read_text().splitlines()
    added_md = (added / "evaluation.md").read_text().splitlines()
    for folder, lines in ((base, base_md), (added, added_md)):
        table_count = sum(line.startswith("| method |") for line in lines)
        if table_count != 1:
            raise SystemExit(
                f"{folder / 'evaluation.md'} holds {table_count} tables: only a run with one (not --sanity) "
                "can be merged"
            )
    if benchmark_of(base_md[0]) != benchmark_of(added_md[0]):
        raise SystemExit(f"the runs describe different benchmarks:\n  {base_md[0]}\n  {added_md[0]}")
    tables = {}
    for name in ("evaluation.csv", "per_object.csv"):
        base_rows, added_rows = read_csv(base / name), read_csv(added / name)
        if base_rows[0] != added_rows[0]:
            raise SystemExit(f"{name}: the columns differ:\n  {base_rows[0]}\n  {added_rows[0]}")
        present = {row[0] for row in base_rows[1:]}
        available = {row[0] for row in added_rows[1:]}
        for method in methods:
            if method in present:
                raise SystemExit(f"{name}: {method} is already in {base}")
            if method not in available:
                raise SystemExit(f"{name}: {method} is not in {added}")
        tables[name] = base_rows + [row for method in methods for row in added_rows[1:] if row[0] == method]
    markdown_rows = {line.split(" | ")[0][2:]: line for line in added_md if line.startswith("| ")}
    last_row = max(i for i, line in enumerate(base_md) if line.startswith("| "))
    merged_md = base_md[: last_row + 1] + [markdown_rows[m] for m in methods] + base_md[last_row + 1 :]
    for name, rows in tables.items():
        write_csv(base / name, rows)
    (base / "evaluation.md").write_text("\n".join(merged_md) + "\n")
    print(f"added {', '.join(methods)} from {added} to {base}")
    if (base / "paired_differences.txt").exists():
        print(f"{base / 'paired_differences.txt'} predates them: rerun benchmarks/paired_differences.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("added", type=Path)
    parser.add_argument("--methods", required=True, help="comma-separated methods of the added run to merge")
    args = parser.parse_args()
    merge(args.base, args.added, [m for m in args.methods.split(",") if m])


if __name__ == "__main__":
    main()
