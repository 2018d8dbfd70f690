"""Trains the localisation benchmark's CNN (multi-label, fixed seed) and writes its weights to
torchcam_ops/data/localization_cnn.pt.

    python benchmarks/train_localization.py [--canvases 20000] [--epochs 12] [--shuffle-labels]

With ``--shuffle-labels`` the same network, seed and schedule learn from the same canvases with their
label pairs permuted across canvases (a fixed permutation), and the weights go to
torchcam_ops/data/localization_cnn_shuffled.pt: the model of the data-randomisation sanity check
(:func:`torchcam_ops.metrics.data_randomization`), whose maps cannot explain anything about the objects.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from torchcam_ops.localization import CLASSES, SHUFFLED_WEIGHTS, WEIGHTS, LocalizationNet, make_canvases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvases", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--shuffle-labels", action="store_true", help="the data-randomisation model")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    train = make_canvases(args.canvases, split="train", seed=0)
    test = make_canvases(1000, split="test", seed=1)
    labels = train.labels
    if args.shuffle_labels:
        labels = labels[torch.randperm(args.canvases, generator=torch.Generator().manual_seed(1))]
    targets = torch.zeros(args.canvases, len(CLASSES)).scatter_(1, labels, 1.0)
    model = LocalizationNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = args.epochs * ((args.canvases + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.canvases)
        for first in range(0, args.canvases, 64):
            batch = order[first : first + 64]
            loss = F.binary_cross_entropy_with_logits(model(train.images[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            top2 = model(test.images).topk(2, dim=1).indices.sort(1).values
            train_top2 = model(train.images[:1000]).topk(2, dim=1).indices.sort(1).values
        accuracy = (top2 == test.labels.sort(1).values).all(1).float().mean()
        train_accuracy = (train_top2 == labels[:1000].sort(1).values).all(1).float().mean()
        print(
            f"epoch {epoch + 1}: last loss {loss.item():.4f}, canvases with both (training) classes in the top 2: "
            f"test {accuracy:.3f}, first 1000 training canvases {train_accuracy:.3f}",
            flush=True,
        )
    path = SHUFFLED_WEIGHTS if args.shuffle_labels else WEIGHTS
    torch.save(model.state_dict(), path)
    print(
        f"wrote {path} ({sum(p.numel() for p in model.parameters())} parameters) in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
