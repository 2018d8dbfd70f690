"""Explanations in a training loss: fine-tune the shipped LocalizationNet so that its Grad-CAM maps stay
inside the objects' boxes, without losing accuracy.

    python examples/explanation_loss.py [--canvases 3000] [--epochs 2] [--weight 1.0]

Loss = binary cross-entropy of the two classes on each canvas (how the network was trained)
       + weight * mean over objects of the share of the Grad-CAM map outside the object's box.
The maps come from ``GradCAM(..., create_graph=True)``: both classes of a canvas in one forward pass,
differentiable with respect to every parameter (second order through the layers after the target).
Reports, on held-out canvases before and after: the share of each map inside its box (energy in box)
and the share of canvases whose two classes are the network's top two (accuracy).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from torchcam_ops.localization import CLASSES, TARGET_LAYER, Canvases, load_model, make_canvases
from torchcam_ops.methods import GradCAM


def box_masks(boxes: Tensor, size: int) -> Tensor:
    """[n, 2, size, size] floats, 1 inside each object's box."""
    coords = torch.arange(size)
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    inside_x = (coords[None, None, None, :] >= x0) & (coords[None, None, None, :] < x1)
    inside_y = (coords[None, None, :, None] >= y0) & (coords[None, None, :, None] < y1)
    return (inside_x & inside_y).float()


def energy_outside(maps: Tensor, masks: Tensor) -> Tensor:
    """Per object, the share of the map's mass outside its box; [n, 2]."""
    total = maps.sum((-2, -1)).clamp_min(1e-12)
    return (maps * (1 - masks)).sum((-2, -1)) / total


def losses(model: torch.nn.Module, cam: GradCAM, canvases: Canvases, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(classification loss, explanation loss) of a batch, both differentiable in the parameters."""
    logits = model(canvases.images)
    targets = torch.zeros_like(logits).scatter_(1, canvases.labels, 1.0)
    classification = F.binary_cross_entropy_with_logits(logits, targets)
    maps = cam(canvases.images, canvases.labels, create_graph=True)  # [n, 2, 96, 96]
    return classification, energy_outside(maps, masks).mean()


@torch.no_grad()
def accuracy(model: torch.nn.Module, canvases: Canvases) -> float:
    top2 = model(canvases.images).topk(2, dim=1).indices.sort(1).values
    return float((top2 == canvases.labels.sort(1).values).all(1).float().mean())


def energy_in_box(cam: GradCAM, canvases: Canvases, masks: Tensor) -> float:
    maps = torch.cat(
        [cam(canvases.images[i : i + 100], canvases.labels[i : i + 100]) for i in range(0, len(canvases.images), 100)]
    )
    return float(1 - energy_outside(maps, masks).mean())


def subset(canvases: Canvases, index: Tensor) -> Canvases:
    return Canvases(canvases.images[index], canvases.labels[index], canvases.boxes[index], canvases.masks[index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvases", type=int, default=3000, help="training canvases (train split)")
    parser.add_argument("--held-out", type=int, default=500, help="held-out canvases (test split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--weight", type=float, default=0.25, help="weight of the explanation loss")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    train = make_canvases(args.canvases, split="train", seed=7)
    test = make_canvases(args.held_out, split="test", seed=1)
    train_masks, test_masks = box_masks(train.boxes, train.images.shape[-1]), box_masks(test.boxes, 96)
    # Batch-norm statistics stay frozen (eval mode): the fine-tuning changes weights only.
    model = load_model()
    with GradCAM(model, [TARGET_LAYER]) as cam:
        before = (energy_in_box(cam, test, test_masks), accuracy(model, test))
        print(f"held-out canvases: {args.held_out}, classes {len(CLASSES)}, layer {TARGET_LAYER}")
        print(f"before: energy in box {before[0]:.3f}, accuracy (both classes in the top 2) {before[1]:.3f}")
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        for epoch in range(args.epochs):
            order = torch.randperm(args.canvases)
            totals = torch.zeros(2)
            for first in range(0, args.canvases, args.batch):
                batch = order[first : first + args.batch]
                classification, explanation = losses(model, cam, subset(train, batch), train_masks[batch])
                optimizer.zero_grad()
                (classification + args.weight * explanation).backward()
                optimizer.step()
                totals += torch.tensor([classification.item(), explanation.item()]) * len(batch)
            totals /= args.canvases
            print(
                f"epoch {epoch + 1}: classification loss {totals[0]:.4f}, share of maps outside the box {totals[1]:.3f}"
            )
        after = (energy_in_box(cam, test, test_masks), accuracy(model, test))
    print(f"after:  energy in box {after[0]:.3f}, accuracy (both classes in the top 2) {after[1]:.3f}")
    print(
        f"change: energy in box {after[0] - before[0]:+.3f}, accuracy {100 * (after[1] - before[1]):+.1f} points "
        f"({time.perf_counter() - start:.0f} s, weight {args.weight}, lr {args.lr}, {args.epochs} epochs of "
        f"{args.canvases} canvases)"
    )


if __name__ == "__main__":
    main()
