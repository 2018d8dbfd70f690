"""What the command-line jobs compute, as data: an :class:`ExplainRun` (the top classes, the maps and the
time per image of each method on a batch of images) and an :class:`EvaluationRun` (the per-object tables of
each method on a benchmark, their summary and the randomisation sanity check). Nothing here parses
arguments, prints or writes files: ``cli.py`` parses and prints, ``render.py`` writes the pictures, tables and
report pages."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchcam_ops import evaluation
from torchcam_ops.methods import make_explainer


class MethodFailed(Exception):
    """A method could not explain the images: ``error`` is the explainer's (a ``ValueError`` for a layer
    the method cannot explain, an ``AssertionError`` from the model's own input checks)."""

    def __init__(self, method: str, error: Exception) -> None:
        super().__init__(f"method {method}: {error}")
        self.method, self.error = method, error


@dataclass
class TopClasses:
    """The model's most probable classes per image: ``classes`` and ``probabilities`` ``[N, k]`` (best
    first), and the number of classes the model has."""

    classes: Tensor
    probabilities: Tensor
    count: int


@dataclass
class ExplainRun:
    """The maps of each method on a batch of images."""

    #: the classes explained, ``[N]``
    targets: Tensor
    #: per method, the maps ``[N, H, W]`` in [0, 1], float32, on the CPU
    maps: dict[str, np.ndarray]
    #: per method, the seconds per image of the timed calls (the first image is the untimed warm-up)
    seconds_per_image: dict[str, float]
    #: whether the first image's call was left out of the clock (False for a single image)
    first_untimed: bool


def classify(model: nn.Module, x: Tensor, batch_size: int, k: int = 3) -> TopClasses:
    """The ``k`` most probable classes of each image, forwarded ``batch_size`` images at a time."""
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    probabilities = logits.softmax(1)
    top = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return TopClasses(top.indices, top.values, probabilities.shape[1])


def explain(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    methods: list[str],
    layer: str,
    *,
    batch_size: int,
    layout: dict[str, Any],
) -> ExplainRun:
    """Every method's maps of ``x`` for ``targets``, ``batch_size`` images per call, and its time per image.

    Raises:
        MethodFailed: a method refused the layer or the model refused the method's inputs; no map of any
            method is returned then, so that nothing is written for a run that fails halfway.
    """
    size = x.shape[-1]
    timed = 1 if len(x) > 1 else 0
    maps, seconds = {}, {}
    for method in methods:
        try:
            with make_explainer(method, model, [layer], input_size=size, **layout) as explainer:
                # The first image is the warm-up call, which pays the one-off costs (allocation, kernel
                # selection): its map is kept and its time is not. The clock runs over the other images
                # (over the first one again when it is alone).
                first = [explainer(x[:1], targets[:1])]
                _synchronize(x.device)
                start = time.perf_counter()
                rest = [
                    explainer(x[i : i + batch_size], targets[i : i + batch_size])
                    for i in range(timed, len(x), batch_size)
                ]
                _synchronize(x.device)
                seconds[method] = (time.perf_counter() - start) / (len(x) - timed)
                maps[method] = torch.cat(first + (rest if timed else [])).float().cpu().numpy()
        except (ValueError, AssertionError) as error:
            raise MethodFailed(method, error) from error
    return ExplainRun(targets, maps, seconds, bool(timed))


def _synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a clock read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EvaluationRun:
    """Each method on a benchmark: the per-object tables, their summary, and the sanity check."""

    benchmark: evaluation.Benchmark
    #: per method, the per-object tables of :func:`torchcam_ops.evaluation.evaluate_method`
    results: dict[str, dict[str, Tensor]]
    summary: evaluation.Summary
    sanity: evaluation.SanityCheck | None
    #: one sentence on the benchmark, the metrics' settings and the processes
    about: str


def evaluate(
    benchmark: evaluation.Benchmark,
    methods: list[str],
    processes: evaluation.TorchrunProcess,
    *,
    chunk: int,
    sanity: bool,
    show_progress: bool,
) -> EvaluationRun | None:
    """Every method on ``benchmark`` (its objects shared out over ``processes``), and with ``sanity`` the
    randomisation sanity check. None on processes other than the first, which has the whole result.

    Raises:
        ValueError: a method or the check refused the benchmark (the explainer's own error).
    """
    leader = processes.rank == 0
    results = {}
    for i, method in enumerate(methods, 1):
        if leader:
            print(
                f"[{i}/{len(methods)}] {method} on {len(benchmark.targets)} objects, {processes.world} process(es)",
                file=sys.stderr,
                flush=True,
            )
        results[method] = evaluation.evaluate_method(
            benchmark, method, processes, chunk, show_progress=show_progress and leader
        )
    if not leader:
        return None
    check = None
    if sanity:
        print("randomisation sanity check", file=sys.stderr, flush=True)
        check = evaluation.sanity_check(benchmark, methods, show_progress=show_progress)
    about = (
        benchmark.about + f"; deletion/insertion step {benchmark.step} px, substrates 0 and blur(11, sigma=5); "
        f"{processes.world} process(es) on {processes.device.type}."
    )
    return EvaluationRun(benchmark, results, evaluation.summarize(benchmark, results), check, about)
