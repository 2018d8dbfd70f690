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
        """``[S]``: the mean of ``measure`` over the images whose maps are not constant (NaN at a stage
        where all are)."""
        if measure not in MEASURES:
            raise ValueError(f"measure: expected one of {MEASURES}, got {measure!r}")
        values = getattr(self, measure)
        defined = ~values.isnan()
        count = defined.sum(1)
        total = torch.where(defined, values, 0).sum(1)
        return torch.where(count > 0, total / count.clamp_min(1), math.nan)

    def cell(self, stage: int, measure: str = "spearman") -> str:
        """A table cell: the mean, and how many images had a constant map (``"constant"`` when all did)."""
        constant = int(self.constant[stage].sum())
        if constant == self.constant.shape[1]:
            return "constant"
        text = f"{float(self.mean(measure)[stage]):.2f}"
        return text + (f" ({constant} constant)" if constant and measure != "ssim" else "")


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


def _reset(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Re-initialises the named modules of ``model`` with their own ``reset_parameters``; the names of
    those without one (left as they are)."""
    modules = dict(model.named_modules())
    skipped = []
    for name in names:
        reset = getattr(modules[name], "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            skipped.append(name)
    return skipped


def _default_targets(model: nn.Module, x: Tensor, targets: Tensor | Sequence[int] | int | None) -> Tensor:
    """Class indices ``[N]``: the given ones, or the trained model's top class for each image (kept for
    every stage, so that each stage explains the same class)."""
    if targets is None:
        with torch.no_grad():
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
    (:mod:`torchcam_ops.metrics.similarity`). Re-initialisation draws from a generator seeded with
    ``seed`` (the global random state is restored afterwards). ``model`` itself is never modified.

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
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty batch [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    targets = _default_targets(model, x, targets)
    reference = _explain(make_explainer, model, x, targets)
    working = copy.deepcopy(model)
    if stages is None:  # on a copy of its own: a model in training mode updates its statistics
        stages = default_stages(layers_in_forward_order(copy.deepcopy(model), x))
    known = dict(working.named_modules())
    for name, group in stages:
        missing = [layer for layer in group if layer not in known]
        if missing:
            raise ValueError(f"stages: stage {name!r} names modules the model does not have: {missing}")
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    maps, layers, skipped = [], [], []
    randomised: list[str] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _, group in stages:
            if cascading:
                stage_model = working
                randomised = randomised + list(group)
            else:
                stage_model = copy.deepcopy(model)
                randomised = list(group)
            skipped += _reset(stage_model, group)
            layers.append(list(randomised))
            maps.append(_explain(make_explainer, stage_model, x, targets))
    if skipped and len(set(skipped)) == sum(len(group) for _, group in stages):
        raise ValueError("model: none of the staged modules has a reset_parameters method; nothing was randomised")
    if skipped:
        warnings.warn(
            f"model_randomization: modules without reset_parameters kept their weights: {sorted(set(skipped))}",
            stacklevel=2,
        )
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
    targets = _default_targets(model, x, targets)
    reference = _explain(make_explainer, model, x, targets)
    maps = _explain(make_explainer, randomized_model, x, targets)
    spearmans, ssims, hogs, constants = _compare(reference, [maps])
    return RandomizationResult(
        ["permuted labels"], [[]], spearmans, ssims, hogs, constants, torch.stack([reference, maps])
    )
