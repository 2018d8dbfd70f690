"""What to explain beyond a class index: segmentation masks, detected boxes, a class against its look-alikes.

:class:`ClassTarget` is an int, the class index every explainer takes. :class:`SegmentationTarget`,
:class:`BoxTarget` and :class:`FinerTarget` are callables that map the model's output for a batch to one
score per image, so they work with the explainers that take callable targets: the gradient-weighted
CAMs (Grad-CAM and its variants, HiResCAM, Abs-CAM phase 1, Eigen-Grad-CAM, Shapley-CAM,
Seg-Eigen-CAM) and IG-CAM. The explainers that seed class logits or score classes on other inputs
(TSGB, guided backprop, Abs-CAM phase 2, GIG-CAM, Score-CAM, Ablation-CAM, CAM, Finer-CAM) need class
indices and refuse them with an error; Eigen-CAM, KPCA-CAM, FEM and Random-CAM ignore targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from torchcam_ops import _compat


def model_logits(output: Any) -> Any:
    """The class logits in a model's output: the output itself when it is a tensor, else its ``logits``
    tensor where it has one (a Hugging Face ``ModelOutput``, torchvision's GoogLeNet and Inception
    outputs in training mode, any mapping with a ``"logits"`` key); any other output as it is (a
    segmentation model's ``{"out": ...}``, explained through a callable target)."""
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


class ClassTarget(int):
    """The logit of one class, as a plain int target is: ``ClassTarget(281)`` is ``281``."""

    def __new__(cls, category: int) -> ClassTarget:
        if isinstance(category, bool) or not isinstance(category, int) or category < 0:
            raise ValueError(f"category: expected a non-negative class index, got {category!r}")
        return super().__new__(cls, category)

    def __repr__(self) -> str:
        return f"ClassTarget({int(self)})"


class SegmentationTarget:
    r"""The sum of one category's logits over a mask: :math:`s_n = \sum_{ij} M_{ij} \, Y_{n,c,i,j}`.

    For segmentation models returning logits ``[N, C, H, W]``, or a dict with them under ``"out"``
    (torchvision's FCN, DeepLabV3, LR-ASPP). The same mask applies to every image of the batch.

    Args:
        category: the category c (a channel of the output).
        mask: ``[H, W]`` weights (bool or float) at the output's resolution, e.g. where the model
            predicts c.
    """

    def __init__(self, category: int, mask: Tensor | Any) -> None:
        if isinstance(category, bool) or not isinstance(category, int) or category < 0:
            raise ValueError(f"category: expected a non-negative category index, got {category!r}")
        mask = torch.as_tensor(mask)
        if mask.dim() != 2 or mask.numel() == 0:
            raise ValueError(f"mask: expected a non-empty [H, W] mask, got shape {list(mask.shape)}")
        self.category = category
        self.mask = mask

    def __call__(self, output: Tensor | Mapping[str, Tensor]) -> Tensor:
        if isinstance(output, Mapping) and "out" not in output:
            raise ValueError(
                f"SegmentationTarget: the model returned a dict without 'out' (keys {sorted(output)}); "
                "wrap the model so that it returns the logits [N, C, H, W]"
            )
        logits = output["out"] if isinstance(output, Mapping) else output
        if not isinstance(logits, Tensor) or logits.dim() != 4:
            described = f"shape {list(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"SegmentationTarget: expected logits [N, C, H, W] (or a dict with them under 'out'), got {described}"
            )
        if self.category >= logits.shape[1]:
            raise ValueError(
                f"SegmentationTarget: category {self.category} is out of range for {logits.shape[1]} categories"
            )
        if tuple(self.mask.shape) != tuple(logits.shape[-2:]):
            raise ValueError(
                f"SegmentationTarget: the mask is {list(self.mask.shape)}, the output's maps are "
                f"{list(logits.shape[-2:])}"
            )
        mask = self.mask.to(device=logits.device, dtype=logits.dtype)
        return (logits[:, self.category] * mask).sum((1, 2))


class BoxTarget:
    r"""For torchvision detection models (a list of dicts with ``boxes``, ``labels``, ``scores`` per
    image): the sum, over the given boxes, of the scores of the detections that match them,

    .. math:: s_n = \sum_b \sum_d [\ell_d = \ell_b] \, [\operatorname{IoU}(B_d, B_b) \ge \tau] \, p_d

    with :math:`\tau` = ``iou``. A detection that matches several given boxes counts once per box;
    an image whose boxes match no detection scores 0, with a zero gradient: its map is all zeros.

    Args:
        labels: the label of each given box, ``[B]`` (or one label per image: a list of them).
        boxes: the boxes ``[B, 4]`` as ``(x0, y0, x1, y1)`` in the input's pixels (or one ``[B_n, 4]``
            per image: a list of them).
        iou: the IoU from which a detection matches a box (default 0.5).
    """

    def __init__(self, labels: Tensor | Sequence[Any], boxes: Tensor | Sequence[Any], iou: float = 0.5) -> None:
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
            raise ValueError(f"iou: expected a value in (0, 1], got {iou!r}")
        per_image = isinstance(boxes, (list, tuple)) and len(boxes) > 0 and isinstance(boxes[0], Tensor)
        box_sets = (
            [torch.as_tensor(b, dtype=torch.float32) for b in boxes]
            if per_image
            else [torch.as_tensor(boxes, dtype=torch.float32)]
        )
        label_sets = [torch.as_tensor(lab, dtype=torch.long) for lab in (labels if per_image else [labels])]
        if len(box_sets) != len(label_sets):
            raise ValueError(
                f"labels: expected one set of labels per set of boxes, got {len(label_sets)} and {len(box_sets)}"
            )
        for b, lab in zip(box_sets, label_sets):
            if b.dim() != 2 or b.shape[1] != 4 or lab.dim() != 1 or lab.shape[0] != b.shape[0]:
                raise ValueError(
                    f"boxes, labels: expected boxes [B, 4] and labels [B], got {list(b.shape)} and {list(lab.shape)}"
                )
        self.per_image = per_image
        self.boxes, self.labels, self.iou = box_sets, label_sets, iou

    def __call__(self, output: Sequence[Mapping[str, Tensor]]) -> Tensor:
        if not isinstance(output, (list, tuple)) or not all(isinstance(d, Mapping) for d in output):
            raise ValueError(
                "BoxTarget: expected a detection model's output, a list of dicts with boxes, labels, scores"
            )
        if self.per_image and len(self.boxes) != len(output):
            raise ValueError(f"BoxTarget: boxes for {len(self.boxes)} images, the output has {len(output)}")
        scores = []
        for n, detections in enumerate(output):
            boxes = self.boxes[n if self.per_image else 0].to(detections["boxes"].device)
            labels = self.labels[n if self.per_image else 0].to(detections["labels"].device)
            overlap = box_iou(boxes, detections["boxes"].detach())  # [B, D]
            match = (overlap >= self.iou) & (labels[:, None] == detections["labels"][None])
            scores.append((match.to(detections["scores"].dtype) * detections["scores"][None]).sum())
        return torch.stack(scores)


class FinerTarget:
    r"""A class against the classes the model finds most like it (Finer-CAM, Zhang et al. 2025):

    .. math:: s_n = \frac{\sum_{j \in S} p_j \, (y_c - \alpha\, y_j)}{\sum_{j \in S} p_j + 10^{-9}}

    with :math:`y` the logits of image n, :math:`p = \operatorname{softmax}(y)`, :math:`c` the class
    explained and :math:`S` the classes at positions ``comparisons`` (default 1, 2, 3; position 0 is
    the class itself) when all classes are ranked by :math:`|y_j - y_c|`, closest first (positions
    beyond the last class are left out). The map then shows what tells c apart from its look-alikes;
    ``alpha`` = 0 is the plain class score weighted alike. As pytorch-grad-cam's ``FinerWeightedTarget``
    with its ``FinerCAM`` ranking, gradients flow through the softmax weights too.

    Args:
        classes: the class c of each image: None (each image's top class), an int, or a LongTensor
            ``[N]`` or ``[N, T]`` (T classes per image, T scores). Per-image classes follow a batch that
            an explainer explains in chunks (``batch_size``); IG-CAM, whose forwards hold path points
            instead of images, takes None or an int.
        alpha: how much of the look-alikes' logits is subtracted (default 1).
        comparisons: the positions of the look-alikes in the ranking (default ``(1, 2, 3)``).
    """

    def __init__(
        self, classes: Tensor | int | None = None, alpha: float = 1.0, comparisons: Sequence[int] = (1, 2, 3)
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not abs(alpha) < float("inf"):
            raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
        if not comparisons or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in comparisons):
            raise ValueError(f"comparisons: expected positions >= 1 in the similarity ranking, got {comparisons!r}")
        if isinstance(classes, bool) or (classes is not None and not isinstance(classes, (int, Tensor))):
            raise TypeError(f"classes: expected None, an int or a LongTensor, got {type(classes).__name__}")
        if isinstance(classes, Tensor):
            if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
                raise TypeError(f"classes: expected an integer tensor of class indices, got {classes.dtype}")
            if classes.dim() > 2:
                raise ValueError(f"classes: expected class indices [N] or [N, T], got shape {list(classes.shape)}")
            if classes.dim() == 0:
                classes = int(classes)
        if isinstance(classes, int) and classes < 0:
            raise ValueError(f"classes: class index {classes} is out of range (class indices are non-negative)")
        self.classes, self.alpha, self.comparisons = classes, float(alpha), tuple(comparisons)

    def sliced(self, start: int, stop: int) -> FinerTarget:
        """The target of images [start, stop) of the batch (an explainer that explains a batch in chunks
        hands each chunk its own rows of per-image classes)."""
        if not isinstance(self.classes, Tensor):
            return self
        return FinerTarget(self.classes[start:stop], self.alpha, self.comparisons)

    def __call__(self, output: Any) -> Tensor:
        logits = model_logits(output)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("FinerTarget: expected the model's logits [N, classes]")
        batch, count = logits.shape
        detached = logits.detach()
        out_of_range = f"targets: a class index is out of range for a model with {count} outputs"
        if self.classes is None:
            classes = detached.argmax(1, keepdim=True)
        elif isinstance(self.classes, int):
            if not 0 <= self.classes < count:
                raise ValueError(out_of_range)
            classes = torch.full((batch, 1), self.classes, dtype=torch.long, device=logits.device)
        else:
            if self.classes.shape[0] != batch or self.classes.dim() not in (1, 2):
                raise ValueError(f"targets: expected class indices [N] or [N, T] with N = {batch}")
            classes = self.classes.to(logits.device).long().reshape(batch, -1)
            in_range = ((classes >= 0) & (classes < count)).all()
            if classes.device.type == "cpu" and not torch.compiler.is_compiling():
                if not bool(in_range):
                    raise ValueError(out_of_range)
            else:
                _compat.assert_async(in_range, out_of_range)
        positions = [k for k in self.comparisons if k < count]
        if not positions:
            raise ValueError(f"FinerTarget: a model with {count} classes has no class at positions {self.comparisons}")
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # 1e-9 and small p_j in half
        main = logits.gather(1, classes)  # [N, T]
        distance = (detached[:, None, :] - detached.gather(1, classes)[:, :, None]).abs()  # [N, T, classes]
        ranked = torch.argsort(distance, dim=2, stable=True)
        similar = ranked[:, :, positions]  # [N, T, S]
        probabilities = torch.softmax(logits, dim=1)
        weights = probabilities.gather(1, similar.flatten(1)).view_as(similar)
        others = logits.gather(1, similar.flatten(1)).view_as(similar)
        scores = (weights * (main[:, :, None] - self.alpha * others)).sum(2) / (weights.sum(2) + 1e-9)
        single = self.classes is None or isinstance(self.classes, int) or self.classes.dim() == 1
        return scores[:, 0] if single else scores
