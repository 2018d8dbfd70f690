"""A localisation benchmark with known ground truth: Fashion-MNIST objects on real textures.

Each 96x96 canvas holds two objects of different classes (28x28 Fashion-MNIST images from Debian's
``dataset-fashion-mnist`` package) at random places on a crop of a real texture that ships with
scikit-image. Their boxes and masks are exact. A small CNN trained on the canvases (multi-label,
fixed seed, ``benchmarks/train_localization.py``) ships with the package, so a map for one object's
class can be checked to point at that object and not at the other one.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FASHION_MNIST_DIR = Path(os.environ.get("TORCHCAM_OPS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CANVAS = 96
OBJECT = 28
WEIGHTS = Path(__file__).parent / "data" / "localization_cnn.pt"
# the same network trained on the same canvases with permuted labels (the data-randomisation check)
SHUFFLED_WEIGHTS = Path(__file__).parent / "data" / "localization_cnn_shuffled.pt"


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 28, 28]`` uint8 and labels ``[n]`` from the Debian package's idx files."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist "
            "(or set TORCHCAM_OPS_FASHION_MNIST)"
        )
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, OBJECT, OBJECT)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return images, labels


def _textures() -> list[np.ndarray]:
    import skimage.color
    import skimage.data

    textures = []
    for name in ("brick", "grass", "gravel", "moon"):
        image = getattr(skimage.data, name)()
        if image.ndim == 3:
            image = (skimage.color.rgb2gray(image) * 255).astype(np.uint8)
        textures.append(image)
    return textures


@dataclass
class Canvases:
    images: Tensor  # [n, 1, 96, 96] float in [0, 1]
    labels: Tensor  # [n, 2] the two classes
    boxes: Tensor  # [n, 2, 4] (x0, y0, x1, y1), exact extent of each object's pixels
    masks: Tensor  # [n, 2, 96, 96] bool, each object's pixels


def make_canvases(count: int, split: str = "test", seed: int = 0) -> Canvases:
    """``count`` canvases, reproducible from ``seed``."""
    images, labels = load_fashion_mnist(split)
    textures = _textures()
    rng = np.random.default_rng(seed)
    out = np.zeros((count, CANVAS, CANVAS), dtype=np.float32)
    out_labels = np.zeros((count, 2), dtype=np.int64)
    boxes = np.zeros((count, 2, 4), dtype=np.int64)
    masks = np.zeros((count, 2, CANVAS, CANVAS), dtype=bool)
    for i in range(count):
        texture = textures[rng.integers(len(textures))]
        y, x = rng.integers(texture.shape[0] - CANVAS), rng.integers(texture.shape[1] - CANVAS)
        canvas = 0.35 * texture[y : y + CANVAS, x : x + CANVAS].astype(np.float32) / 255
        first = rng.integers(len(labels))
        second = rng.integers(len(labels))
        while labels[second] == labels[first]:
            second = rng.integers(len(labels))
        # two places that do not overlap: one in the left half, one in the right half, in random order
        halves = rng.permutation(2)
        for slot, (index, half) in enumerate(zip((first, second), halves)):
            top = rng.integers(0, CANVAS - OBJECT)
            left = half * (CANVAS // 2) + rng.integers(0, CANVAS // 2 - OBJECT)
            obj = images[index].astype(np.float32) / 255
            region = canvas[top : top + OBJECT, left : left + OBJECT]
            canvas[top : top + OBJECT, left : left + OBJECT] = np.maximum(region, obj)
            pixels = obj > 0.1
            ys, xs = np.nonzero(pixels)
            boxes[i, slot] = (left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1)
            masks[i, slot, top : top + OBJECT, left : left + OBJECT] = pixels
            out_labels[i, slot] = labels[index]
        out[i] = canvas
    return Canvases(
        torch.from_numpy(out)[:, None], torch.from_numpy(out_labels), torch.from_numpy(boxes), torch.from_numpy(masks)
    )


class LocalizationNet(nn.Module):
    """A small CNN for the canvases: 5 convolutions with batch norm (a 35-px receptive field, more
    than an object), global average pooling, 10 class logits."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(1, 32), *block(32, 64, 2), *block(64, 64), *block(64, 128, 2), *block(128, 128)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, len(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


TARGET_LAYER = "features.14"  # the last ReLU: [128, 24, 24]


def load_model(shuffled_labels: bool = False) -> LocalizationNet:
    """The trained network shipped with the package (eval mode, CPU); with ``shuffled_labels``, the
    one trained on permuted labels (``benchmarks/train_localization.py --shuffle-labels``)."""
    model = LocalizationNet()
    weights = SHUFFLED_WEIGHTS if shuffled_labels else WEIGHTS
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
