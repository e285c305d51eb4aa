"""SyntheticShapes and its DataModule: determinism, content, exact target masks, argument checks."""

from __future__ import annotations

from collections import Counter, deque

import pytest
import torch
from torch import Tensor

from evet_lightning.data import SHAPE_NAMES, SyntheticShapes, SyntheticShapesDataModule, draw_shape
from tests._helpers.models import stack_dataset, train_shapes_model


def _components(mask: Tensor) -> list[int]:
    """Sizes of the 4-connected components of a ``(H, W)`` bool mask (plain breadth-first search)."""
    todo = set(map(tuple, mask.nonzero().tolist()))
    sizes = []
    while todo:
        queue = deque([todo.pop()])
        size = 0
        while queue:
            row, col = queue.popleft()
            size += 1
            for neighbour in ((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)):
                if neighbour in todo:
                    todo.remove(neighbour)
                    queue.append(neighbour)
        sizes.append(size)
    return sorted(sizes, reverse=True)


def _same(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("image_size", [64, (48, 80), (80, 40), 32])
def test_item_shapes_dtypes_and_range(image_size: int | tuple[int, int]) -> None:
    dataset = SyntheticShapes(num_samples=12, image_size=image_size, seed=3)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert len(dataset) == 12
    for index in range(len(dataset)):
        image, label, mask = dataset[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert image.min().item() >= 0.0 and image.max().item() <= 1.0
        assert label.shape == () and label.dtype == torch.int64 and 0 <= label.item() < 4
        assert mask.shape == (height, width) and mask.dtype == torch.bool


def test_same_seed_and_index_give_identical_items_in_any_order() -> None:
    first = SyntheticShapes(num_samples=20, seed=5)
    second = SyntheticShapes(num_samples=20, seed=5)
    forward = [first[i] for i in range(20)]
    backward = {i: second[i] for i in reversed(range(20))}
    for index in (7, 0, 19, 7):
        assert _same(forward[index], backward[index])
        assert _same(forward[index], first[index])
    assert _same(first[-1], first[19])


def test_items_do_not_depend_on_the_dataset_length_or_a_global_seed() -> None:
    torch.manual_seed(0)
    short = SyntheticShapes(num_samples=4, seed=2)[3]
    torch.manual_seed(1)
    long = SyntheticShapes(num_samples=400, seed=2)[3]
    assert _same(short, long)


def test_different_seeds_and_indices_give_different_images() -> None:
    a, b = SyntheticShapes(num_samples=8, seed=0), SyntheticShapes(num_samples=8, seed=1)
    for index in range(8):
        assert not torch.equal(a[index][0], b[index][0])
    images = torch.stack([a[i][0] for i in range(8)])
    assert all(not torch.equal(images[i], images[j]) for i in range(8) for j in range(i))


def test_items_are_the_same_through_dataloader_workers() -> None:
    dataset = SyntheticShapes(num_samples=6, seed=4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    images = torch.cat([x for x, _, _ in loader])
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(6)]))


def test_index_out_of_range_raises() -> None:
    dataset = SyntheticShapes(num_samples=3)
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(IndexError):
        dataset[-4]


@pytest.mark.parametrize("image_size", [64, (48, 96), (96, 48)])
def test_mask_is_exactly_the_target_and_the_target_is_the_largest_object(image_size: int | tuple[int, int]) -> None:
    dataset = SyntheticShapes(num_samples=40, image_size=image_size, num_classes=6, seed=11)
    for index in range(len(dataset)):
        image, label, mask = dataset[index]
        target, *distractors = dataset.scene(index)
        height, width = mask.shape
        # The target is of the label's class and the mask is its rasterization, in the documented area range.
        assert target.label == label.item() and target.name == dataset.classes[label]
        assert torch.equal(mask, draw_shape(target, height, width))
        assert 0.08 <= mask.float().mean().item() <= 0.20
        assert target.radius <= target.x <= width - 1 - target.radius
        assert target.radius <= target.y <= height - 1 - target.radius
        # Re-render check from the pixels alone: the mask is flat in the target colour, and no other pixel is.
        colour = torch.tensor(target.colour).view(3, 1, 1)
        has_colour = (image == colour).all(dim=0)
        assert torch.equal(has_colour, mask)
        # The mask is one connected object (all shapes are connected).
        assert len(_components(mask)) == 1
        # Distractors: the requested number, other classes, clearly smaller, inside the frame, not touching the
        # target; together with the target they are the separate objects of the image.
        assert len(distractors) == 2
        objects = torch.zeros(height, width, dtype=torch.bool)
        for spec in distractors:
            assert spec.label != target.label
            drawn = draw_shape(spec, height, width)
            assert 0 < drawn.sum() <= 0.35 * mask.sum()  # documented: area <= 30% of the target's (+ rasterization)
            assert spec.radius <= spec.x <= width - 1 - spec.radius
            assert spec.radius <= spec.y <= height - 1 - spec.radius
            assert not (drawn & objects).any()
            objects |= drawn
        grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()
        assert not (grown & objects).any()
        sizes = _components(objects | mask)
        assert sizes[0] == mask.sum().item()
        assert len(sizes) >= 3 and sizes[1] <= 0.35 * sizes[0]


def test_labels_are_balanced_over_any_window() -> None:
    for num_classes in (2, 3, 6):
        dataset = SyntheticShapes(num_samples=100, num_classes=num_classes, seed=7)
        labels = [dataset.label(i) for i in range(100)]
        assert labels[:10] == [dataset[i][1].item() for i in range(10)]
        window = labels[13 : 13 + 4 * num_classes]
        assert Counter(window) == dict.fromkeys(range(num_classes), 4)
        assert dataset.classes == list(SHAPE_NAMES[:num_classes])


def test_distractor_count_is_honoured() -> None:
    for count in (0, 1, 4):
        dataset = SyntheticShapes(num_samples=20, num_distractors=count, seed=1)
        assert all(len(dataset.scene(i)) == count + 1 for i in range(20))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": (64,)}, "image_size"),
        ({"image_size": (64, 15)}, "image_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 9}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_distractors": -1}, "num_distractors"),
        ({"num_distractors": 5}, "num_distractors"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_the_argument(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=f"Expected `{name}`"):
        SyntheticShapes(**kwargs)  # type: ignore[arg-type]


def test_value_error_message_follows_the_project_pattern() -> None:
    with pytest.raises(ValueError, match=r"^Expected `num_classes` to be an integer in \[2, 6\], but got 9$"):
        SyntheticShapes(num_classes=9)


def test_datamodule_yields_mask_batches_and_a_deterministic_validation_loader() -> None:
    datamodule = SyntheticShapesDataModule(train_samples=40, val_samples=20, image_size=(32, 48), batch_size=8)
    x, y, mask = next(iter(datamodule.train_dataloader()))
    assert x.shape == (8, 3, 32, 48) and y.shape == (8,) and mask.shape == (8, 32, 48)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and mask.dtype == torch.bool
    first = list(datamodule.val_dataloader())
    second = list(datamodule.val_dataloader())
    assert [b[0].shape[0] for b in first] == [8, 8, 4]
    assert all(_same(tuple(a), tuple(b)) for a, b in zip(first, second, strict=True))
    assert torch.equal(first[0][0][0], datamodule.val_set[0][0])  # not shuffled
    # Train and validation are different images.
    assert not torch.equal(datamodule.train_set[0][0], datamodule.val_set[0][0])


def test_datamodule_train_order_is_seeded() -> None:
    def labels(seed: int) -> Tensor:
        datamodule = SyntheticShapesDataModule(train_samples=64, val_samples=8, image_size=32, batch_size=64, seed=seed)
        return next(iter(datamodule.train_dataloader()))[1]

    assert torch.equal(labels(0), labels(0))
    assert not torch.equal(labels(0), torch.arange(64) % 4)  # shuffled


def test_datamodule_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="Expected `batch_size`"):
        SyntheticShapesDataModule(batch_size=0)
    with pytest.raises(ValueError, match="Expected `num_classes`"):
        SyntheticShapesDataModule(num_classes=7)


def test_trained_model_reaches_high_accuracy_on_fresh_images(trained_model: torch.nn.Module) -> None:
    images, labels, _ = stack_dataset(SyntheticShapes(num_samples=256, seed=4242))
    with torch.no_grad():
        accuracy = (trained_model(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.9
    assert not trained_model.training


def test_training_leaves_the_global_rng_and_thread_count_untouched() -> None:
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    model = train_shapes_model(epochs=1, num_samples=64, image_size=32)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
