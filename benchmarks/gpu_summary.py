"""One table of the figures the benchmarks recorded (``--figures FILE``), each next to its goal.

    python benchmarks/gpu_summary.py FILE [--tests TESTS_LOG]

gpu_check.sh runs it last. With ``--tests``, the last line of a pytest log is added as a figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _timing import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figures")
    parser.add_argument("--tests", help="a pytest log; its summary line becomes a figure")
    args = parser.parse_args()
    rows = []
    if args.tests and Path(args.tests).exists():
        lines = [line for line in Path(args.tests).read_text().splitlines() if line.strip()]
        summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line), None)
        # no summary line: pytest did not finish (a crash, or the step's time limit), which is not a pass
        passed = summary is not None and "failed" not in summary and " error" not in summary
        rows.append(
            ["CUDA, graph, reliability, extension tests", (summary or "no summary").strip("= "), "all pass", passed]
        )
    if Path(args.figures).exists():
        for line in Path(args.figures).read_text().splitlines():
            figure = json.loads(line)
            rows.append([figure["figure"], figure["value"], figure["goal"], figure["met"]])
    if not rows:
        print("no figures recorded")
        return
    met = sum(bool(row[3]) for row in rows)
    print_table(["figure", "measured", "goal", "met"], [[*row[:3], "yes" if row[3] else "NO"] for row in rows])
    print(f"{met} of {len(rows)} goals met")


if __name__ == "__main__":
    main()
