r"""Randomisation sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018).

A map that barely changes when the model's weights are replaced by random ones, or when the model was
trained on random labels, does not explain the model. :func:`model_randomization` re-initialises the
model's layers on a deep copy, with each layer's own ``reset_parameters``, either cascading from the
output layer down (each stage adds layers) or one group at a time ("independent"), and compares the
maps of the randomised copies with the trained model's maps. :func:`data_randomization` compares the
maps of two models, e.g. the localisation benchmark's CNN and the same CNN trained on permuted labels.

Similarity (:mod:`torchcam_ops.metrics.similarity`): Spearman rank correlation, SSIM and the correlation
of HOG features, per image. High similarity after randomisation is the failure the test looks for.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torchcam_ops.metrics.similarity import constant_maps, hog_correlation, spearman, ssim

__all__ = [
    "RandomizationResult",
    "data_randomization",
    "default_stages",
    "layers_in_forward_order",
    "model_randomization",
]

ExplainerFactory = Callable[[nn.Module], Callable[..., Tensor]]
MEASURES = ("spearman", "ssim", "hog")


@dataclass
class RandomizationResult:
    """Similarities of the maps after each randomisation stage to the maps of the trained model.

    ``spearman``, ``ssim`` and ``hog`` are ``[S, N]`` float64 (stage, image); Spearman and HOG are NaN
    where a map is constant, and ``constant`` ``[S, N]`` marks those images. ``maps`` holds the trained
    model's maps first, then each stage's: ``[S + 1, N, H, W]``.
    """

    stages: list[str]
    layers: list[list[str]]  # the layers re-initialised at each stage (all of them, cumulative when cascading)
    spearman: Tensor
    ssim: Tensor
    hog: Tensor
    constant: Tensor
    maps: Tensor

    def mean(self, measure: str = "spearman") -> Tensor:
        """``[S]``: the mean of ``measure`` over the images where it is defined (Spearman and HOG: not
        over constant maps; NaN at a stage where it is defined for none)."""
        if measure not in MEASURES:
            raise ValueError(f"measure: expected one of {MEASURES}, got {measure!r}")
        values = getattr(self, measure)
        defined = ~values.isnan()
        count = defined.sum(1)
        total = torch.where(defined, values, 0).sum(1)
        return torch.where(count > 0, total / count.clamp_min(1), math.nan)

    def cell(self, stage: int, measure: str = "spearman") -> str:
        """A table cell: the mean over the images where ``measure`` is defined, and how many images it
        leaves out: "(k constant)" for constant maps, "(k undefined)" when some maps that are not
        constant have no HOG gradient either (their variation lies in the rows or columns HOG's cells
        leave out); ``"constant"`` when every map is constant. SSIM is defined for constant maps too."""
        constant = int(self.constant[stage].sum())
        if constant == self.constant.shape[1]:
            return "constant"
        text = f"{float(self.mean(measure)[stage]):.2f}"
        undefined = int(getattr(self, measure)[stage].isnan().sum())
        if undefined > constant:
            return text + f" ({undefined} undefined)"
        return text + (f" ({undefined} constant)" if undefined else "")


def layers_in_forward_order(model: nn.Module, x: Tensor) -> list[str]:
    """Dotted names of the modules that hold parameters of their own, in the order a forward pass of
    ``x`` first runs them (modules that do not run are left out). Runs one forward pass, without
    gradients, with temporary hooks (removed afterwards, also on error)."""
    order: list[str] = []
    handles = []

    def recorder(name: str) -> Callable[[nn.Module, object], None]:
        def hook(module: nn.Module, args: object) -> None:
            if name not in order:  # a module that runs several times counts once, where it first ran
                order.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name and any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_pre_hook(recorder(name)))
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


def default_stages(layers: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Four groups for a cascade over ``layers`` (forward order), from the output down: the output
    layer; the rest of the last quarter; the rest of the last half; the rest."""
    count = len(layers)
    if count == 0:
        raise ValueError("model: no module with parameters ran in the forward pass; nothing to randomise")
    named_bounds = [(1, "output layer"), (math.ceil(count / 4), "last quarter"), (math.ceil(count / 2), "last half")]
    names: dict[int, str] = {}
    for bound, name in named_bounds:
        names.setdefault(bound, name)  # a small model's quarter may be its output layer
    names[count] = "all layers"
    stages, previous = [], 0
    for bound in sorted(names):
        stages.append((names[bound], list(layers[count - bound : count - previous])))
        previous = bound
    return stages


def _as_maps(maps: Tensor, batch: int) -> Tensor:
    """Maps ``[N, H, W]``; gradient images ``[N, C, H, W]`` (guided backprop) as the maximum absolute
    value over channels."""
    if not isinstance(maps, Tensor) or maps.shape[0] != batch or maps.dim() not in (3, 4):
        raise ValueError(
            f"explainer: expected maps [N, H, W] (or images [N, C, H, W]) with N = {batch}, got "
            f"{list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__}"
        )
    maps = maps.detach()
    return (maps.abs().amax(1) if maps.dim() == 4 else maps).double()


def _explain(make_explainer: ExplainerFactory, model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    explainer = make_explainer(model)
    try:
        return _as_maps(explainer(x, targets), x.shape[0])
    finally:
        close = getattr(explainer, "close", None)
        if callable(close):
            close()


def _reset(model: nn.Module, names: Sequence[str]) -> None:
    """Re-initialises the named modules of ``model`` with their own ``reset_parameters`` (those
    without one keep their weights: :func:`_checked_stages` warned about them)."""
    modules = dict(model.named_modules())
    for name in names:
        reset = getattr(modules[name], "reset_parameters", None)
        if callable(reset):
            reset()


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty batch [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")


def _checked_stages(model: nn.Module, stages: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, list[str]]]:
    """The stages as (name, [module names]), checked against the model before any work."""
    if isinstance(stages, (str, bytes)) or len(stages) == 0:
        raise ValueError("stages: expected a non-empty list of (name, [module names]) groups")
    known = dict(model.named_modules())
    checked, without_reset = [], []
    for stage in stages:
        if not isinstance(stage, (tuple, list)) or len(stage) != 2:
            raise TypeError(f"stages: expected (name, [module names]) pairs, got {stage!r}")
        name, group = stage
        if isinstance(group, (str, bytes)) or not all(isinstance(layer, str) for layer in group):
            raise TypeError(f"stages: the group of stage {name!r} must be a list of module names, got {group!r}")
        missing = [layer for layer in group if layer not in known]
        if missing:
            raise ValueError(f"stages: stage {name!r} names modules the model does not have: {missing}")
        without_reset += [layer for layer in group if not callable(getattr(known[layer], "reset_parameters", None))]
        checked.append((str(name), list(group)))
    staged = {layer for _, group in checked for layer in group}
    if staged and staged == set(without_reset):
        raise ValueError(
            "stages: none of the staged modules has a reset_parameters method; nothing would be randomised"
        )
    if without_reset:
        warnings.warn(
            f"model_randomization: modules without reset_parameters keep their weights: {sorted(set(without_reset))}",
            stacklevel=3,
        )
    return checked


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _seed(seed: int, devices: list[int]) -> None:
    """Seeds the CPU generator and those of ``devices`` only: the ones ``fork_rng`` restores."""
    torch.random.default_generator.manual_seed(seed)
    for device in devices:
        torch.cuda.default_generators[device].manual_seed(seed)


def _default_targets(model: nn.Module, x: Tensor, targets: Tensor | Sequence[int] | int | None) -> Tensor:
    """Class indices ``[N]``: the given ones, or the trained model's top class for each image (kept for
    every stage, so that each stage explains the same class). The model's buffers come back as they
    were (a model in training mode updates its statistics)."""
    if targets is None:
        from torchcam_ops.methods.calls import preserve_buffers  # the methods import the metrics package

        with preserve_buffers(model), torch.no_grad():
            return model(x).argmax(1)
    if isinstance(targets, int) and not isinstance(targets, bool):
        return torch.full((x.shape[0],), targets, dtype=torch.long, device=x.device)
    targets = torch.as_tensor(targets, device=x.device)
    if targets.dtype.is_floating_point or targets.dim() != 1 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"targets: expected {x.shape[0]} class indices, got {list(targets.shape)} {targets.dtype}")
    return targets.long()


def _compare(reference: Tensor, maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    spearmans, ssims, hogs, constants = [], [], [], []
    reference_constant = constant_maps(reference)
    for stage_maps in maps:
        spearmans.append(spearman(reference, stage_maps))
        ssims.append(ssim(reference, stage_maps))
        hogs.append(hog_correlation(reference, stage_maps))
        constants.append(reference_constant | constant_maps(stage_maps))
    return torch.stack(spearmans), torch.stack(ssims), torch.stack(hogs), torch.stack(constants)


def model_randomization(
    model: nn.Module,
    make_explainer: ExplainerFactory,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    *,
    cascading: bool = True,
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
    seed: int = 0,
) -> RandomizationResult:
    r"""The model-parameter randomisation test.

    The model's layers with parameters are re-initialised on deep copies, in groups ordered from the
    output down (``stages``: ``(name, [dotted module names])``; by default :func:`default_stages` of
    :func:`layers_in_forward_order`). ``cascading=True`` randomises the groups one after another on one
    copy (stage s: groups 1..s random); ``cascading=False`` randomises each group alone on a fresh copy.
    After each stage ``make_explainer(copy)(x, targets)`` gives the maps, compared per image with the
    trained model's maps by Spearman rank correlation, SSIM and HOG correlation
    (:mod:`torchcam_ops.metrics.similarity`). Re-initialisation draws from the generators seeded with
    ``seed``; the global random state is restored afterwards. ``model`` itself is never modified.

    Args:
        model: the trained model, in the mode it is explained in (usually ``eval()``).
        make_explainer: builds an explainer for a model, e.g.
            ``lambda m: GradCAM(m, "layer4")``; the explainer is called as ``explainer(x, targets)`` and
            returns maps ``[N, H, W]`` (or gradient images ``[N, C, H, W]``, compared as their maximum
            absolute value over channels), and is closed afterwards when it has ``close()``.
        x: the input batch ``[N, C, H, W]``, on the model's device.
        targets: class indices (one per image or one for all); None: the trained model's top class of
            each image, explained at every stage.
        cascading: cascading (True) or independent (False) randomisation.
        stages: the groups, output side first; None for :func:`default_stages`.
        seed: the seed of the re-initialisation.

    Returns:
        A :class:`RandomizationResult` with the similarities per stage and image, and every stage's maps.

    Raises:
        ValueError: a stage names a module the model does not have, no module could be re-initialised,
            or bad targets; the explainer's own errors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    _check_batch(x)
    if stages is not None:
        stages = _checked_stages(model, stages)
    devices = _cuda_devices(model)
    maps, layers = [], []
    randomised: list[str] = []
    # the whole test in a forked random state: the re-initialisation draws from it, and so do the
    # forward passes of a model in training mode (dropout)
    with torch.random.fork_rng(devices=devices):
        if stages is None:  # on a copy of its own: a model in training mode updates its statistics
            stages = _checked_stages(model, default_stages(layers_in_forward_order(copy.deepcopy(model), x)))
        targets = _default_targets(model, x, targets)
        reference = _explain(make_explainer, model, x, targets)
        working = copy.deepcopy(model) if cascading else None
        _seed(seed, devices)
        for _, group in stages:
            if working is not None:
                stage_model = working
                randomised = randomised + group
            else:
                stage_model = copy.deepcopy(model)
                randomised = list(group)
            _reset(stage_model, group)
            layers.append(list(randomised))
            maps.append(_explain(make_explainer, stage_model, x, targets))
    spearmans, ssims, hogs, constants = _compare(reference, maps)
    return RandomizationResult(
        [name for name, _ in stages], layers, spearmans, ssims, hogs, constants, torch.stack([reference, *maps])
    )


def data_randomization(
    model: nn.Module,
    randomized_model: nn.Module,
    make_explainer: ExplainerFactory,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
) -> RandomizationResult:
    """The data-randomisation test: the maps of ``randomized_model`` (the same architecture trained the
    same way on permuted labels, e.g. ``torchcam_ops.localization.load_model(shuffled_labels=True)``)
    against the maps of ``model``, one stage named ``"permuted labels"``. Targets default to
    ``model``'s top class of each image. Neither model is modified.

    Args:
        model: the model trained on the true labels.
        randomized_model: the model trained on permuted labels.
        make_explainer: as in :func:`model_randomization`.
        x: the input batch ``[N, C, H, W]``, on both models' device.
        targets: class indices, or None for ``model``'s top classes.

    Returns:
        A :class:`RandomizationResult` with one stage.
    """
    for name, value in (("model", model), ("randomized_model", randomized_model)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name}: expected an nn.Module, got {type(value).__name__}")
    _check_batch(x)
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        targets = _default_targets(model, x, targets)
        reference = _explain(make_explainer, model, x, targets)
        maps = _explain(make_explainer, randomized_model, x, targets)
    spearmans, ssims, hogs, constants = _compare(reference, [maps])
    return RandomizationResult(
        ["permuted labels"], [[]], spearmans, ssims, hogs, constants, torch.stack([reference, maps])
    )
