"""How fast SmallCNN learns the multi-object shapes with BCEWithLogitsLoss (docs/design.md, decision 50).

Trains ``SmallCNN`` on :class:`~evet_lightning.data.MultiObjectShapes` with ``BCEWithLogitsLoss`` (Adam, one-cycle
learning rate, batch 32) and prints, per epoch, the validation per-class F1 at 0.5, the macro F1 and the mAP
(torchmetrics), with the seconds so far. Run ``PYTHONPATH=. python benchmarks/multilabel_shapes_convergence.py``
(defaults: 48 px, width 16, 1,536 training and 256 validation images, 8 epochs; ``--help`` for the options).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

from evet_lightning.data import MultiObjectShapes
from evet_lightning.models import SmallCNN


def _stack(dataset: MultiObjectShapes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--train-samples", type=int, default=1536)
    parser.add_argument("--val-samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    images, labels = _stack(MultiObjectShapes(args.train_samples, args.image_size, seed=0))
    val_images, val_labels = _stack(MultiObjectShapes(args.val_samples, args.image_size, seed=1))
    print(f"data: {time.perf_counter() - start:.1f} s")
    model = SmallCNN(num_classes=4, width=args.width)
    steps = args.train_samples // 32
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=args.epochs * steps)
    print("| epoch | F1 per class | macro F1 | mAP | seconds |\n| ---: | --- | ---: | ---: | ---: |")
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train_samples)
        for step in range(steps):
            batch = order[step * 32 : (step + 1) * 32]
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            scores = torch.sigmoid(model(val_images))
        targets = val_labels.long()
        per_class = multilabel_f1_score(scores, targets, num_labels=4, average="none").tolist()
        macro = float(multilabel_f1_score(scores, targets, num_labels=4, average="macro"))
        average_precision = float(multilabel_average_precision(scores, targets, num_labels=4))
        row = ", ".join(f"{value:.3f}" for value in per_class)
        seconds = time.perf_counter() - start
        print(f"| {epoch} | {row} | {macro:.3f} | {average_precision:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
