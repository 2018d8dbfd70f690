"""Explainers on top of the ops: one small file per method on a shared base (``base.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from torchcam_ops.methods.ablationcam import AblationCAM
from torchcam_ops.methods.abscam import AbsCAM
from torchcam_ops.methods.base import BaseCAM
from torchcam_ops.methods.cam import CAM
from torchcam_ops.methods.eigen_gradcam import EigenGradCAM
from torchcam_ops.methods.eigencam import EigenCAM
from torchcam_ops.methods.feature_factorization import DeepFeatureFactorization, Factorization
from torchcam_ops.methods.fem import FEM
from torchcam_ops.methods.finer_cam import FinerCAM
from torchcam_ops.methods.fullgrad import FullGrad
from torchcam_ops.methods.gig_cam import GIGCAM, PathDiagnostics, multiscale_fusion
from torchcam_ops.methods.gradcam import GradCAM
from torchcam_ops.methods.gradcam_elementwise import GradCAMElementWise
from torchcam_ops.methods.gradcam_plusplus import GradCAMPlusPlus
from torchcam_ops.methods.hirescam import HiResCAM
from torchcam_ops.methods.input_gradients import TSGB, GuidedBackprop, GuidedGradCAM
from torchcam_ops.methods.integrated_gradcam import IntegratedGradCAM
from torchcam_ops.methods.iscam import ISCAM
from torchcam_ops.methods.kpca_cam import KPCACAM
from torchcam_ops.methods.layercam import LayerCAM
from torchcam_ops.methods.layers import LayerSpec, Reshape
from torchcam_ops.methods.random_cam import RandomCAM
from torchcam_ops.methods.refine_cam import RefineCAM
from torchcam_ops.methods.scorecam import ScoreCAM
from torchcam_ops.methods.seg_eigen_cam import SegEigenCAM
from torchcam_ops.methods.sess import SESS
from torchcam_ops.methods.shapley_cam import ShapleyCAM
from torchcam_ops.methods.smooth_gradcam_plusplus import SmoothGradCAMPlusPlus
from torchcam_ops.methods.sobel_cam import SobelCAM
from torchcam_ops.methods.sscam import SSCAM
from torchcam_ops.methods.targeting import Targets
from torchcam_ops.methods.xgradcam import XGradCAM

# GIG-CAM+M sizes relative to the input: 1, 1.45, 1.9, 2.35 (224, 325, 426, 526 for a 224-px input), the
# first four of the paper's seven scales 224, 324, ..., 824, which bounds the cost of an evaluation.
FUSION_SCALES = (1.0, 1.45, 1.9, 2.35)


def _class_factory(cls: type, **fixed: Any) -> Callable[..., Any]:
    def factory(
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        input_size: int | None = None,
        **options: Any,
    ) -> Any:
        return cls(model, target_layers, **fixed, **options)

    factory.__doc__ = cls.__doc__
    return factory


def _tsgb(
    model: nn.Module,
    target_layers: Any = None,
    *,
    input_size: int | None = None,
    reshape: Reshape = None,
    grid: tuple[int, int] | None = None,
    **options: Any,
) -> TSGB:
    return TSGB(model, **options)  # input gradients: no target layer, so no layout to reshape


def _sobel_cam(
    model: nn.Module,
    target_layers: Any = None,
    *,
    input_size: int | None = None,
    reshape: Reshape = None,
    grid: tuple[int, int] | None = None,
    **options: Any,
) -> SobelCAM:
    return SobelCAM(model, **options)  # edges of the image: no layer, no layout


def _fullgrad(
    model: nn.Module,
    target_layers: Any = None,
    *,
    input_size: int | None = None,
    reshape: Reshape = None,
    grid: tuple[int, int] | None = None,
    **options: Any,
) -> FullGrad:
    return FullGrad(model, **options)  # every bias layer: no target layer, no layout


def _gig_cam_fused(
    model: nn.Module, target_layers: LayerSpec | Sequence[LayerSpec], *, input_size: int | None = None, **options: Any
) -> GIGCAM:
    size = input_size or 224
    return GIGCAM(model, target_layers, scales=[round(size * s) for s in FUSION_SCALES], **options)


#: The one table of explainers by name, used by :func:`explain`, the CLI and the evaluation. Each
#: entry is a factory ``(model, target_layers, *, input_size=None, **options) -> explainer``; ``input_size``
#: matters only to methods whose settings scale with the input (``gig_cam+m``).
METHODS: dict[str, Callable[..., Any]] = {
    "gradcam": _class_factory(GradCAM),
    "gradcam++": _class_factory(GradCAMPlusPlus),
    "xgradcam": _class_factory(XGradCAM),
    "layercam": _class_factory(LayerCAM),
    "hirescam": _class_factory(HiResCAM),
    "gradcam_elementwise": _class_factory(GradCAMElementWise),
    "abscam": _class_factory(AbsCAM),  # both phases
    "abscam_phase1": _class_factory(AbsCAM, phase=1),
    "integrated_gradcam": _class_factory(IntegratedGradCAM),
    "gig_cam": _class_factory(GIGCAM),
    "gig_cam+m": _gig_cam_fused,  # GIG-CAM with multi-scale fusion
    "tsgb": _tsgb,
    "scorecam": _class_factory(ScoreCAM),
    "ablationcam": _class_factory(AblationCAM),
    "eigencam": _class_factory(EigenCAM),
    "cam": _class_factory(CAM),
    "eigengradcam": _class_factory(EigenGradCAM),
    "fem": _class_factory(FEM),
    "randomcam": _class_factory(RandomCAM),
    "kpcacam": _class_factory(KPCACAM),
    "shapleycam": _class_factory(ShapleyCAM),
    "segeigencam": _class_factory(SegEigenCAM),
    "finercam": _class_factory(FinerCAM),
    "sobelcam": _sobel_cam,  # a baseline that ignores the model
    "smoothgradcam++": _class_factory(SmoothGradCAMPlusPlus),
    "sscam": _class_factory(SSCAM),
    "iscam": _class_factory(ISCAM),
    "fullgrad": _fullgrad,  # input and bias gradients of every layer
    "refinecam": _class_factory(RefineCAM),  # a base CAM's layers multiplied
    "sess": _class_factory(SESS),  # a base CAM of patches at several scales, fused
}


def make_explainer(
    method: str,
    model: nn.Module,
    target_layers: LayerSpec | Sequence[LayerSpec],
    *,
    input_size: int | None = None,
    **options: Any,
) -> Any:
    """The explainer registered as ``method`` (see :data:`METHODS`).

    Args:
        method: a name in :data:`METHODS`, e.g. ``"gradcam"``, ``"hirescam"``, ``"gig_cam+m"`` or ``"tsgb"``;
            a CAM's name may end in ``"+eigen_smooth"`` and/or ``"+aug_smooth"`` (:class:`Smoothed`).
        model: the model to explain, an ``nn.Module`` (or ``torch.compile(model)``).
        target_layers: a module of ``model`` or its dotted name (``"layer4"``, ``"_swish@-1"`` for a call
            of a module that runs several times), or a non-empty list of them; ``"tsgb"`` takes none and
            ignores it.
        input_size: the input width in pixels; only ``"gig_cam+m"`` uses it, to size its scales (224
            when None).
        **options: keyword arguments of the explainer class, e.g. ``batch_size``, ``steps``, ``phase``.

    Returns:
        The explainer (e.g. a :class:`GradCAM`): call it on a batch for maps; ``close()`` it, or use it
        in a ``with`` block, when done.

    Raises:
        ValueError: ``method`` is not in :data:`METHODS`; the explainer's own ``ValueError`` and
            ``TypeError`` for bad target layers or options.
    """
    name, *suffixes = method.split("+") if isinstance(method, str) and method not in METHODS else (method,)
    smoothing = {suffix: True for suffix in suffixes if suffix in SMOOTHING_SUFFIXES}
    if name not in METHODS or len(smoothing) != len(suffixes):
        raise ValueError(
            f"method: unknown method {method!r}; expected one of {sorted(METHODS)}, a CAM's name may end in "
            "'+eigen_smooth' and/or '+aug_smooth'"
        )
    explainer = METHODS[name](model, target_layers, input_size=input_size, **options)
    return Smoothed(explainer, **smoothing, name=method) if smoothing else explainer


#: What a CAM's name in :func:`make_explainer` (the CLI's and ``evaluate``'s ``--methods``) may end in.
SMOOTHING_SUFFIXES = ("eigen_smooth", "aug_smooth")


class Smoothed:
    """A CAM explainer whose calls smooth (``make_explainer("gradcam+aug_smooth", ...)``): each call
    passes ``eigen_smooth`` and ``aug_smooth`` (:meth:`BaseCAM.__call__`) to the explainer."""

    def __init__(self, explainer: Any, *, eigen_smooth: bool = False, aug_smooth: bool = False, name: str = "") -> None:
        asked = [option for option, on in (("eigen_smooth", eigen_smooth), ("aug_smooth", aug_smooth)) if on]
        if any(option not in getattr(explainer, "smoothing_options", ()) for option in asked):
            explainer.close()
            raise ValueError(f"method: {name!r}: {type(explainer).__name__} takes no {' or '.join(asked)}")
        if eigen_smooth and not explainer.has_channel_terms():
            explainer.close()
            raise ValueError(
                f"method: {name!r}: {type(explainer).__name__}'s maps are not sums of per-channel terms, so "
                "eigen_smooth does not apply"
            )
        self.explainer, self.smoothing = explainer, dict.fromkeys(asked, True)

    @property
    def model(self) -> nn.Module:
        return self.explainer.model

    def __enter__(self) -> Smoothed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the explainer."""
        self.explainer.close()

    def __call__(self, x: Tensor, targets: Targets = None, **call: Any) -> Tensor | list[Tensor]:
        return self.explainer(x, targets, **{**self.smoothing, **call})


def explain(
    model: nn.Module,
    x: Tensor,
    method: str = "gradcam",
    *,
    target_layers: LayerSpec | Sequence[LayerSpec],
    targets: Targets = None,
    raw: bool = False,
    output_size: int | tuple[int, int] | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
    **options: Any,
) -> Tensor | list[Tensor]:
    """Functional form: ``explain(model, x, "hirescam", target_layers=["layer4"], targets=...)``.

    ``options`` go to the explainer (e.g. ``steps`` for integrated_gradcam, ``phase`` and
    ``masks_per_forward`` for abscam, ``batch_size`` for any CAM explainer).

    Args:
        model: the model to explain, an ``nn.Module`` (or ``torch.compile(model)``).
        x: the images ``[N, C, H, W]``, floating point, as the model takes them.
        method: a name in :data:`METHODS` (default ``"gradcam"``).
        target_layers: a module of ``model`` or its dotted name, or a non-empty list of them (see
            :func:`make_explainer`).
        targets: the classes to explain: None (each image's top class), a class index, one index per
            image, a LongTensor ``[N]`` or ``[N, T]``, or a callable that maps the model output to
            scores ``[N]`` or ``[N, T]`` (see ``Targets``).
        raw: whether to return the un-normalised layer-resolution maps instead (default False).
        output_size: the maps' size, an int or ``(height, width)``; None (default) for the input's size.
        eigen_smooth: whether each map is the first principal component of its per-channel terms
            (default False; see :meth:`BaseCAM.__call__`).
        aug_smooth: whether the maps are averaged over flipped and rescaled copies of each image
            (default False; see :meth:`BaseCAM.__call__`).
        **options: keyword arguments of the explainer class.

    Returns:
        The explainer's maps of ``x``: ``[N, H, W]`` in [0, 1] (``[N, T, H, W]`` for T targets per
        image) on x's device; with ``raw=True``, the explainer's un-normalised maps (for most CAM
        explainers one tensor per target layer, a list when there are several). The explainer is closed
        before this returns.

    Raises:
        ValueError: ``method`` is not in :data:`METHODS`; the explainer's own ``ValueError`` and
            ``TypeError`` for bad target layers, options, input or targets.
    """
    # The explainer checks x; its width only sizes methods whose settings scale with the input.
    input_size = int(x.shape[-1]) if isinstance(x, Tensor) and x.dim() == 4 else None
    with make_explainer(method, model, target_layers, input_size=input_size, **options) as explainer:
        if not (eigen_smooth or aug_smooth):
            return explainer(x, targets, raw=raw, output_size=output_size)
        for option, on in (("eigen_smooth", eigen_smooth), ("aug_smooth", aug_smooth)):
            if on and option not in getattr(explainer, "smoothing_options", ()):
                raise ValueError(f"{option}: {method!r} ({type(explainer).__name__}) takes no {option}")
        smoothing = {"eigen_smooth": eigen_smooth} if eigen_smooth else {}
        smoothing.update({"aug_smooth": True} if aug_smooth else {})
        return explainer(x, targets, raw=raw, output_size=output_size, **smoothing)


__all__ = [
    "FUSION_SCALES",
    "METHODS",
    "make_explainer",
    "SMOOTHING_SUFFIXES",
    "Smoothed",
    "TSGB",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GIGCAM",
    "PathDiagnostics",
    "AblationCAM",
    "AbsCAM",
    "BaseCAM",
    "CAM",
    "EigenCAM",
    "EigenGradCAM",
    "DeepFeatureFactorization",
    "Factorization",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "ISCAM",
    "KPCACAM",
    "RandomCAM",
    "RefineCAM",
    "Reshape",
    "ScoreCAM",
    "SegEigenCAM",
    "SESS",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "SSCAM",
    "SobelCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "IntegratedGradCAM",
    "LayerCAM",
    "XGradCAM",
    "explain",
    "multiscale_fusion",
]
