"""Multi-label runs of EVETCallback (issue 23): every positive (image, class) pair of a BCE-trained model scored
with sigmoid probabilities, against references computed here from the model, the class masks and single-class
EVET calls; the task inferred or refused; the target policies; alpha calibrated on whole images."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import Tensor

from evet_lightning import EVET, EVETCallback
from evet_lightning.data import MultiObjectShapes
from evet_lightning.data.multi_shapes import class_masks
from tests._helpers.models import IMAGE_SIZE, NUM_CLASSES, MultiLabelClassifier, train_multi_label_model
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import multi_shapes_loader, shapes_loader

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

BORDER = 2  # void (255) frame of the masks in the first test


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return train_multi_label_model()


def _data(num_samples: int, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    dataset = MultiObjectShapes(num_samples=num_samples, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, seed=seed)
    images, labels, masks = (torch.stack(part) for part in zip(*(dataset[i] for i in range(num_samples)), strict=True))
    return images, labels, masks


def void_border(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The batch with a 255 (void) frame on each class-index mask."""
    images, labels, masks = batch
    masks = masks.clone()
    masks[:, :BORDER] = masks[:, -BORDER:] = 255
    masks[:, :, :BORDER] = masks[:, :, -BORDER:] = 255
    return images, labels, masks


def per_class_masks(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    images, labels, masks = batch
    return images, labels, class_masks(masks, NUM_CLASSES)


def _validate(make_trainer: TrainerFactory, network: torch.nn.Module, callback: EVETCallback, loader: Any) -> dict:
    return make_trainer([callback]).validate(MultiLabelClassifier(network), dataloaders=loader, verbose=False)[0]


def _kept_maps(callback: EVETCallback) -> tuple[Tensor, Tensor]:
    assert callback.last_samples is not None
    chunks = callback.last_samples.chunks
    return torch.cat([c.result.original for c in chunks]), torch.cat([c.result.saliency for c in chunks])


def test_every_positive_pair_scored_with_sigmoids_like_a_single_class_evet_call(
    make_trainer: TrainerFactory, network: torch.nn.Module
) -> None:
    """5 images of 2-3 objects: one row per positive class; Y and O are sigmoids of the model's logits on x and on
    x * M (black baseline); the pointing game is the class's share of the map on the non-void pixels; each map is
    a single-class EVET call's to 1e-6; the logged values are the means over the pairs."""
    callback = EVETCallback(
        task="multilabel", num_samples=5, alpha=0.5, log_images=0, stability_transforms=[], batch_unpacker=void_border
    )
    logged = _validate(make_trainer, network, callback, multi_shapes_loader(6))
    images, labels, masks = void_border(_data(5))
    pairs = [(i, k) for i in range(5) for k in torch.nonzero(labels[i]).flatten().tolist()]
    records = callback.sample_records()
    assert list(zip(records["sample"].tolist(), records["target"].tolist(), strict=True)) == pairs
    assert len(pairs) > 10 and logged["evet/num_pairs"] == len(pairs)
    index, classes = torch.tensor([i for i, _ in pairs]), torch.tensor([k for _, k in pairs])
    rows = torch.arange(len(pairs))
    with torch.no_grad():
        clean = torch.sigmoid(network(images))[index, classes]
    torch.testing.assert_close(records["Y"], clean.double(), rtol=0, atol=1e-6)
    original, saliency = _kept_maps(callback)
    engine = EVET(network, alpha=0.5, task="multilabel")
    for row, (i, k) in enumerate(pairs):
        single = engine(images[i : i + 1], torch.tensor([k]))
        torch.testing.assert_close(saliency[row], single.saliency[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(original[row], single.original[0], rtol=0, atol=1e-6)
    obj, valid = masks[index] == classes.view(-1, 1, 1), masks[index] != 255
    for variant, maps in (("original", original), ("evet", saliency)):
        with torch.no_grad():
            perturbed = torch.sigmoid(network(images[index] * maps.unsqueeze(1)))[rows, classes]
        torch.testing.assert_close(records[f"{variant}/O"], perturbed.double(), rtol=0, atol=1e-5)
        total = (maps * valid).sum((1, 2))
        share = obj.sum((1, 2)) / valid.sum((1, 2))  # a map with no energy there: the object's share (decision 4)
        energy = torch.where(total > 0, (maps * obj).sum((1, 2)) / total, share)
        torch.testing.assert_close(records[f"{variant}/energy_pointing_game"], energy.double(), rtol=0, atol=1e-6)
        for metric in ("average_drop", "energy_pointing_game", "increase_in_confidence"):
            mean = float(records[f"{variant}/{metric}"].mean())
            assert logged[f"evet/{variant}/{metric}"] == pytest.approx(mean, abs=1e-6), metric
    assert bool(((masks[index] == 255) & (saliency > 0)).any())  # the void frame did hold some energy


def test_auto_infers_multilabel_once_and_multiclass_refuses_multi_hot_labels(
    make_trainer: TrainerFactory, network: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    """task='auto' (the default) reads multi-hot labels as multi-label, said once at INFO over two runs, with the
    same values as task='multilabel'; integer labels stay multiclass (no num_pairs); task='multiclass' on multi-hot
    labels is a ValueError naming task."""
    options: dict[str, Any] = {"num_samples": 3, "alpha": 0.5, "log_images": 0, "stability_transforms": []}
    auto = EVETCallback(**options)
    with caplog.at_level(logging.INFO):
        first = _validate(make_trainer, network, auto, multi_shapes_loader(4))
        trainer = make_trainer([auto])
        trainer.validate(MultiLabelClassifier(network), dataloaders=multi_shapes_loader(4), verbose=False)
    assert auto.task == "multilabel"
    assert sum("multi-label" in record.getMessage() for record in caplog.records) == 1
    explicit = _validate(make_trainer, network, EVETCallback(task="multilabel", **options), multi_shapes_loader(4))
    assert first == pytest.approx(explicit, abs=1e-7) and "evet/num_pairs" in first
    single = EVETCallback(**options)
    assert "evet/num_pairs" not in _validate(make_trainer, network, single, shapes_loader(4))
    assert single.task == "multiclass"
    with pytest.raises(ValueError, match="task='multilabel'"):
        _validate(make_trainer, network, EVETCallback(task="multiclass", **options), multi_shapes_loader(4))


def test_target_policies(make_trainer: TrainerFactory, network: torch.nn.Module) -> None:
    """'most_confident': the positive label of highest sigmoid; target='prediction': the classes above the threshold
    (else the top class), labels unread; per-class (B, C, H, W) masks give the class-index masks' pointing game."""
    images, labels, _ = _data(6)
    with torch.no_grad():
        probabilities = torch.sigmoid(network(images))
    options: dict[str, Any] = {"task": "multilabel", "num_samples": 6, "alpha": 0.5, "log_images": 0}
    options["stability_transforms"] = []
    confident = EVETCallback(multilabel_targets="most_confident", **options)
    _validate(make_trainer, network, confident, multi_shapes_loader(6))
    expected = [int(torch.argmax(torch.where(labels[i] > 0, probabilities[i], -1.0))) for i in range(6)]
    assert confident.sample_records()["target"].tolist() == expected
    assert confident.sample_records()["sample"].tolist() == list(range(6))
    threshold = 0.77  # here: two classes above it in image 1, none in image 3 (its top class instead)
    predicted = EVETCallback(target="prediction", prediction_threshold=threshold, **options)
    _validate(make_trainer, network, predicted, multi_shapes_loader(6))
    pairs = []
    for i in range(6):
        above = torch.nonzero(probabilities[i] > threshold).flatten().tolist()
        pairs += [(i, k) for k in (above or [int(torch.argmax(probabilities[i]))])]
    records = predicted.sample_records()
    assert list(zip(records["sample"].tolist(), records["target"].tolist(), strict=True)) == pairs
    by_index = EVETCallback(**options)
    _validate(make_trainer, network, by_index, multi_shapes_loader(6))
    by_class = EVETCallback(**options, batch_unpacker=per_class_masks)
    _validate(make_trainer, network, by_class, multi_shapes_loader(6))
    key = "evet/energy_pointing_game"
    torch.testing.assert_close(by_class.sample_records()[key], by_index.sample_records()[key], rtol=0, atol=0)


def test_alpha_calibration_counts_images_and_never_splits_their_pairs(
    make_trainer: TrainerFactory, network: torch.nn.Module
) -> None:
    """alpha='auto', alpha_calibration=3 of 6 images: every pair of images 0-2 (and only those) enters the folds,
    at its image's fold's alpha; the pairs of images 3-5 use the pooled alpha."""
    callback = EVETCallback(task="multilabel", num_samples=6, alpha_calibration=3, log_images=0)
    _validate(make_trainer, network, callback, multi_shapes_loader(6, batch_size=2))
    records, choice = callback.sample_records(), callback.last_alpha
    assert choice is not None
    samples = records["sample"]
    assert float(choice.curve.num_samples) == int((samples < 3).sum())
    expected = [choice.alphas[s % 2] if s < 3 else choice.pooled_alpha for s in samples.tolist()]
    assert records["alpha"].tolist() == expected


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"task": "multi-label"}, "task"),
        ({"multilabel_targets": "all"}, "multilabel_targets"),
        ({"prediction_threshold": 1.0}, "prediction_threshold"),
        ({"ignore_index": "void"}, "ignore_index"),
        ({"task": "binary", "activation": "sigmoid"}, "sigmoid"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EVETCallback(**options)


def test_multilabel_task_refuses_class_index_labels_in_the_sanity_check(make_trainer: TrainerFactory) -> None:
    """task='multilabel' with class-index labels (B,) is a ValueError naming task, raised in the sanity check."""
    from tests._helpers.models import Classifier

    with pytest.raises(ValueError, match=r"multi-hot .* task='multilabel'"):
        make_trainer([EVETCallback(task="multilabel", num_samples=2)]).fit(
            Classifier(), shapes_loader(4), shapes_loader(4)
        )


def test_deletion_curves_of_pairs_score_sigmoids(make_trainer: TrainerFactory, network: torch.nn.Module) -> None:
    """Each pair's deletion AUC is that of its own map and class with the sigmoid (decision 58), not the softmax."""
    from evet_lightning.functional.deletion_insertion import curve_auc, deletion_curve

    options: dict[str, Any] = {"task": "multilabel", "num_samples": 2, "alpha": 0.5, "stability_transforms": []}
    callback = EVETCallback(deletion_insertion=True, deletion_steps=3, log_images=0, **options)
    _validate(make_trainer, network, callback, multi_shapes_loader(2))
    assert callback.last_samples is not None
    chunk = callback.last_samples.chunks[0]
    images, maps, classes = chunk.images, chunk.result.saliency, chunk.result.targets
    expected = curve_auc(deletion_curve(network, images, maps, classes, steps=3, activation="sigmoid"))
    softmax = curve_auc(deletion_curve(network, images, maps, classes, steps=3))
    recorded = callback.sample_records()["evet/deletion_auc"]
    torch.testing.assert_close(recorded, expected.double(), rtol=0, atol=1e-6)
    assert not torch.allclose(recorded, softmax.double(), atol=1e-3)
