"""MultiObjectShapes: multi-hot labels consistent with exact class-index masks, determinism, learnability with BCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multilabel_average_precision

from evet_lightning.data import (
    BACKGROUND,
    MultiObjectShapes,
    MultiObjectShapesDataModule,
    class_masks,
    draw_shape,
    multi_hot,
)
from evet_lightning.models import SmallCNN


@pytest.mark.parametrize(("image_size", "num_classes", "max_objects"), [(48, 4, 3), (16, 6, 3), ((24, 40), 3, 2)])
def test_labels_are_exactly_the_classes_in_the_mask(
    image_size: int | tuple[int, int], num_classes: int, max_objects: int
) -> None:
    dataset = MultiObjectShapes(
        num_samples=60, image_size=image_size, num_classes=num_classes, max_objects=max_objects, seed=5
    )
    height, width = dataset.image_size
    counts = set()
    for index in range(len(dataset)):
        image, labels, mask = dataset[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert labels.shape == (num_classes,) and labels.dtype == torch.float32
        assert mask.shape == (height, width) and mask.dtype == torch.int64
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert set(labels.unique().tolist()) <= {0.0, 1.0}
        present = sorted(set(mask.unique().tolist()) - {BACKGROUND})
        assert present == labels.nonzero().flatten().tolist()
        counts.add(len(present))
    assert counts == set(range(2, max_objects + 1))


def test_mask_is_exactly_where_each_object_was_drawn() -> None:
    dataset = MultiObjectShapes(num_samples=20, image_size=(40, 56), seed=3)
    for index in range(len(dataset)):
        image, labels, mask = dataset[index]
        objects = dataset.scene(index)
        assert len({spec.label for spec in objects}) == len(objects)  # different classes
        drawn = torch.stack([draw_shape(spec, 40, 56) for spec in objects])
        assert int(drawn.sum(dim=0).max()) == 1  # no pixel in two objects
        # Not even touching: a one-pixel dilation of each object misses every other object.
        grown = F.max_pool2d(drawn[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
        for first in range(len(objects)):
            for second in range(len(objects)):
                assert first == second or not bool((grown[first] & drawn[second]).any())
        expected = torch.full((40, 56), BACKGROUND)
        for spec, inside in zip(objects, drawn, strict=True):
            expected[inside] = spec.label
            colour = torch.tensor(spec.colour).view(3, 1)
            assert torch.allclose(image[:, inside], colour.expand(3, int(inside.sum())))
        assert torch.equal(mask, expected)
        assert torch.equal(labels, multi_hot(torch.tensor([spec.label for spec in objects]), 4))


def test_items_depend_on_seed_and_index_only() -> None:
    dataset = MultiObjectShapes(num_samples=8, image_size=24, seed=11)
    forward = [dataset[index] for index in range(8)]
    backward = [MultiObjectShapes(num_samples=8, image_size=24, seed=11)[index] for index in reversed(range(8))]
    for first, second in zip(forward, reversed(backward), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = MultiObjectShapes(num_samples=8, image_size=24, seed=12)
    assert not any(torch.equal(forward[index][0], other[index][0]) for index in range(8))
    assert torch.equal(dataset[-1][2], dataset[7][2])
    with pytest.raises(IndexError, match="out of range"):
        dataset[8]


def test_class_masks_and_multi_hot_exact() -> None:
    index_mask = torch.tensor([[[0, -1, 2], [255, 1, 2]]])
    expected = torch.tensor(
        [[[[1, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 0, 1]]]], dtype=torch.bool
    )
    assert torch.equal(class_masks(index_mask, 3), expected)
    assert multi_hot(torch.tensor([], dtype=torch.int64), 3).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"num_classes": 7}, "num_classes"),
        ({"min_objects": 0}, "min_objects"),
        ({"num_classes": 3, "max_objects": 4}, "max_objects"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"image_size": 12}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(options: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        MultiObjectShapes(**options)  # type: ignore[arg-type]


def _stack(dataset: MultiObjectShapes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def test_small_cnn_learns_the_multi_label_task_with_bce() -> None:
    """SmallCNN with BCEWithLogitsLoss, 6 epochs of 512 images at 32 px (~3 s): validation mAP well above chance.

    Every class is present in about 5/8 of the images, so a model that ranks at random has an average precision of
    about 0.62; the untrained network's is checked to be near that.
    """
    torch.manual_seed(0)
    images, labels = _stack(MultiObjectShapes(num_samples=512, image_size=32, seed=0))
    val_images, val_labels = _stack(MultiObjectShapes(num_samples=128, image_size=32, seed=1))
    model = SmallCNN(num_classes=4, width=8)

    def val_map() -> float:
        model.eval()
        with torch.no_grad():
            scores = torch.sigmoid(model(val_images))
        return float(multilabel_average_precision(scores, val_labels.long(), num_labels=4))

    untrained = val_map()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=6 * 16)
    for _ in range(6):
        model.train()
        order = torch.randperm(512)
        for step in range(16):
            batch = order[step * 32 : (step + 1) * 32]
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    assert untrained < 0.75
    assert val_map() > 0.85  # 0.90 measured


def test_datamodule_batches() -> None:
    module = MultiObjectShapesDataModule(train_samples=8, val_samples=6, image_size=16, batch_size=4, seed=2)
    x, y, mask = next(iter(module.val_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 4) and y.dtype == torch.float32
    assert mask.shape == (4, 16, 16) and mask.dtype == torch.int64
    assert torch.equal(mask[1], MultiObjectShapes(num_samples=6, image_size=16, seed=3)[1][2])  # validation: seed + 1
    first = [batch[1] for batch in module.train_dataloader()]
    again = [batch[1] for batch in MultiObjectShapesDataModule(8, 6, 16, batch_size=4, seed=2).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # seeded shuffle
