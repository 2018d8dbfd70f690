"""The ``--model module:factory`` contract of the command line: what a factory returns and how it is read.

A factory is a function without arguments, importable as ``module:function``, that returns
``(model, preprocess, target_layer)``:

- ``model``: an ``nn.Module`` (the command puts it in eval mode);
- ``preprocess``: turns one RGB photo into the model's input, a float tensor ``[3, H, W]``. It may take
  a numpy ``uint8`` array ``[H, W, 3]``, a PIL image (a torchvision transform such as
  ``Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])``) or a ``uint8`` tensor
  ``[3, H, W]`` (``torchvision.transforms.v2``); which one is found on the first photo. Every photo must
  come out at the same size (resize in it);
- ``target_layer``: the layer's name in ``model.named_modules()`` (``name@k`` for the k-th call of a layer
  that runs several times), the module itself, or None: the command finds it on the first photo
  (:func:`~torchcam_ops.methods.layer_search.find_target_layer`) and prints which.

The maps are drawn on the part of each photo the model saw: a torchvision ``Resize`` and ``CenterCrop`` are
followed; for other transforms that move pixels the whole photo is assumed, with a warning.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: What a factory must return, as the errors say it.
CONTRACT = (
    "a factory takes no arguments and returns (model, preprocess, target_layer): an nn.Module, a function "
    "from an RGB photo (numpy uint8 [H, W, 3], PIL image or uint8 tensor [3, H, W]) to a float tensor "
    "[3, H, W], and the layer's name or module (or None: found on the first photo)"
)


class FactoryError(ValueError):
    """A factory or what it returned breaks the contract; the message says how."""


def load(spec: str) -> tuple[nn.Module, Preprocess, str | None]:
    """Import ``module:function``, call it and check what it returns.

    Returns:
        The model in eval mode, its preprocess adapted to numpy photos, and the target layer's name (None
        when the factory names none: the command finds it).

    Raises:
        FactoryError: the factory cannot be imported, raises, or returns something else than the contract.
    """
    module_name, _, factory_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise FactoryError(f"cannot load the factory: {err}") from err
    try:
        made = factory()
    except Exception as err:  # the user's code: reported as one line, like every other user error
        raise FactoryError(f"the factory raised {type(err).__name__}: {err}") from err
    if not isinstance(made, tuple) or len(made) != 3:
        raise FactoryError(f"the factory must return (model, preprocess, target_layer), got {_describe(made)}")
    model, preprocess, layer = made
    if not isinstance(model, nn.Module):
        raise FactoryError(f"the factory's model must be an nn.Module, got {_describe(model)}; {CONTRACT}")
    if not callable(preprocess):
        raise FactoryError(f"the factory's preprocess must be callable, got {_describe(preprocess)}; {CONTRACT}")
    return model.eval(), Preprocess(preprocess), layer_name(model, layer)


def layer_name(model: nn.Module, layer: object) -> str | None:
    """``layer`` as its name in ``model``: a name is kept, a module is looked up, None (find it) stays.

    Raises:
        FactoryError: a module that is not in ``model``, or neither a name nor a module.
    """
    if layer is None or isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name
        raise FactoryError(f"the factory's target layer {type(layer).__name__} is not a submodule of its model")
    raise FactoryError(f"the factory's target layer must be a layer name or a module, got {_describe(layer)}")


def _describe(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__


class Preprocess:
    """A factory's preprocess taking numpy photos, whichever image type it was written for.

    The first photo tries a numpy array, a PIL image and a ``uint8`` tensor ``[3, H, W]`` (a torchvision
    transform a PIL image first); of the kinds that give a float tensor ``[3, H, W]`` the first is kept for
    every photo, unless their sizes disagree: then the first that is not the photo's size (a
    ``transforms.v2`` pipeline, even wrapped in a function, passes a numpy array through unresized).
    """

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function
        self.kind: str | None = None
        self._kinds = ("PIL", "tensor", "numpy") if _is_torchvision(function) else ("numpy", "PIL", "tensor")

    def __call__(self, image: np.ndarray) -> Tensor:
        if self.kind is not None:
            return self._checked(self.function(self._as(self.kind, image)))
        results, failures = [], []
        for kind in self._kinds:  # each on a copy: a failed try must not change the photo
            try:
                with warnings.catch_warnings():  # what a kind it was not written for makes it say
                    warnings.simplefilter("ignore")
                    result = self.function(self._as(kind, image.copy()))
            except Exception as err:  # the user's code: try the next image type, report all of them
                failures.append(f"{kind}: {type(err).__name__}: {err}")
                continue
            if _is_input(result):
                results.append((kind, result))
            else:
                failures.append(f"{kind}: returned {_describe_output(result)}")
        if not results:
            raise FactoryError(
                "the factory's preprocess took no kind of photo to a float tensor [3, H, W] ("
                + "; ".join(failures)
                + f"); {CONTRACT}"
            )
        # Where the kinds disagree, one went through unresized (transforms.v2 passes a numpy array by)
        if len({tuple(result.shape) for _, result in results}) > 1:
            results = [r for r in results if tuple(r[1].shape[-2:]) != image.shape[:2]] or results
        self.kind, result = results[0]
        return result

    @staticmethod
    def _as(kind: str, image: np.ndarray) -> Any:
        if kind == "numpy":
            return image
        if kind == "PIL":
            from PIL import Image

            return Image.fromarray(image)
        return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()  # the photo may be read-only

    def _checked(self, result: Any) -> Tensor:
        if not _is_input(result):
            raise FactoryError(f"the factory's preprocess returned {_describe_output(result)} for a photo; {CONTRACT}")
        return result

    def seen_region(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The part of a ``height`` x ``width`` photo the model sees, ``(top, left, rows, columns)``, for
        torchvision transforms; None for a plain function (the whole photo is assumed)."""
        return seen_region(self.function, height, width)


def _is_input(value: object) -> bool:
    """A float tensor [3, H, W]: a photo given as the wrong kind may come out of a preprocess as a float
    tensor of another layout, such as [W, 3, H]."""
    return isinstance(value, Tensor) and value.dim() == 3 and value.shape[0] == 3 and value.is_floating_point()


def _describe_output(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return _describe(value)


_KEEPS_GEOMETRY = {
    "ToTensor",
    "PILToTensor",
    "ToImage",
    "ToPureTensor",
    "ToDtype",
    "ConvertImageDtype",
    "Normalize",
    "Grayscale",
    "ColorJitter",
}


def seen_region(transform: object, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The region ``(top, left, rows, columns)`` of a ``height`` x ``width`` photo that a torchvision
    transform (a ``Compose`` of ``Resize``, ``CenterCrop`` and transforms that move no pixels) keeps.

    None when ``transform`` is not a torchvision transform. A transform that moves pixels in another way
    (a random crop, a flip, a pad...) gives the whole photo, with a warning that the overlays assume it.
    """
    if not _is_torchvision(transform):
        return None
    steps = getattr(transform, "transforms", [transform])
    # the region kept so far, in photo pixels, and the size it has now
    top, left, rows, columns = 0.0, 0.0, float(height), float(width)
    now_h, now_w = height, width
    for step in steps:
        name = type(step).__name__
        if name in _KEEPS_GEOMETRY:
            continue
        if name == "Resize" and getattr(step, "max_size", None) is None:
            now_h, now_w = _resized(step.size, now_h, now_w)
            continue
        if name == "CenterCrop":
            crop_h, crop_w = (step.size, step.size) if isinstance(step.size, int) else tuple(step.size)
            if crop_h > now_h or crop_w > now_w:
                break  # padded: not a region of the photo
            crop_top, crop_left = int(round((now_h - crop_h) / 2.0)), int(round((now_w - crop_w) / 2.0))
            scale_h, scale_w = rows / now_h, columns / now_w
            top, left = top + crop_top * scale_h, left + crop_left * scale_w
            rows, columns = crop_h * scale_h, crop_w * scale_w
            now_h, now_w = crop_h, crop_w
            continue
        break
    else:
        return int(round(top)), int(round(left)), max(1, int(round(rows))), max(1, int(round(columns)))
    warnings.warn(
        f"preprocess: {name} moves pixels in a way the overlays do not follow; they are drawn on the whole photo",
        RuntimeWarning,
        stacklevel=2,
    )
    return 0, 0, height, width


def _is_torchvision(transform: object) -> bool:
    steps = getattr(transform, "transforms", [transform])
    return all(type(step).__module__.startswith("torchvision.transforms") for step in steps)


def _resized(size: int | list[int] | tuple[int, ...], height: int, width: int) -> tuple[int, int]:
    """The size after torchvision's ``Resize(size)``: an int (or one value) for the shorter side."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    short_target = int(size if isinstance(size, int) else size[0])
    if height <= width:
        return short_target, int(short_target * width / height)
    return int(short_target * height / width), short_target
