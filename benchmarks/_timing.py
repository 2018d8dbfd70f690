"""Timing helpers shared by the benchmark scripts: medians over repeats, CUDA-event timing on GPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def graph_seconds(fn: Callable[[], object], repeats: int, calls: int = 10) -> float:
    """Device time of one call of ``fn`` on CUDA, host launch cost excluded.

    ``calls`` calls are captured in one CUDA graph, which is replayed ``repeats`` times between
    events; the median replay over ``calls``. Kernels of tens of microseconds are otherwise timed
    at the speed the host launches them.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return median_seconds(graph.replay, torch.device("cuda"), repeats) / calls


def record_figures(path: str | None, figures: list[dict]) -> None:
    """Appends figures ({"figure", "value", "goal", "met"}) to ``path`` as JSON lines.

    benchmarks/gpu_summary.py prints them as one table; nothing is written without a path.
    """
    if not path:
        return
    import json

    with open(path, "a", encoding="utf-8") as file:
        for figure in figures:
            file.write(json.dumps(figure) + "\n")
