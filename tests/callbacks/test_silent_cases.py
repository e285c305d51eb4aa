"""Cases that gave plausible numbers without a word (issue 21): each now says once what is wrong and what to pass,
and ``trainer.test`` explains like ``trainer.validate``."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader


def _messages(record: list[warnings.WarningMessage], text: str) -> list[str]:
    return [str(item.message) for item in record if text in str(item.message)]


class LogProbabilities(Classifier):
    """Returns ``log_softmax`` of the logits (``probabilities=True``: ``softmax``)."""

    def __init__(self, probabilities: bool = False) -> None:
        super().__init__()
        self.probabilities = probabilities

    def forward(self, x: Tensor) -> Tensor:
        logits = super().forward(x)
        return logits.softmax(dim=1) if self.probabilities else F.log_softmax(logits, dim=1)


@pytest.mark.parametrize(("probabilities", "described"), [(False, "log-probabilities"), (True, "probabilities")])
def test_a_model_returning_probabilities_or_log_probabilities_is_warned_once(
    make_trainer: TrainerFactory, probabilities: bool, described: str
) -> None:
    trainer = make_trainer([EVETCallback(num_samples=4, log_images=0, alpha=0.5, max_batch_size=2)])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.validate(LogProbabilities(probabilities), shapes_loader(4), verbose=False)
    found = _messages(record, "the model outputs")
    assert len(found) == 1, found
    assert f"outputs {described}" in found[0] and "not logits" in found[0]


def test_fewer_samples_than_num_samples_is_warned_once_per_run(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=16, log_images=0, alpha=0.5)
    trainer = make_trainer([callback], max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(Classifier(), shapes_loader(8), shapes_loader(16))
    assert callback.epochs_explained == 2 and callback.last_num_samples == 4
    found = _messages(record, "samples reached the callback")
    assert len(found) == 1, found
    assert "only 4 of num_samples=16" in found[0] and "limit_val_batches" in found[0]


class TestedClassifier(Classifier):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", F.cross_entropy(self(batch[0]), batch[1]))


def test_trainer_test_explains_and_returns_the_keys_like_validate(make_trainer: TrainerFactory) -> None:
    torch.manual_seed(0)
    module = TestedClassifier()
    callback = EVETCallback(num_samples=4, log_images=0, alpha=0.5)
    trainer = make_trainer([callback])
    validated = trainer.validate(module, shapes_loader(4), verbose=False)[0]
    tested = trainer.test(module, shapes_loader(4), verbose=False)[0]
    evet_keys = {key for key in validated if key.startswith("evet/")}
    assert "evet/evet/average_drop" in evet_keys and "evet/original/energy_pointing_game" in evet_keys
    assert {key for key in tested if key.startswith("evet/")} == evet_keys and "test_loss" in tested
    for key in evet_keys:
        assert tested[key] == pytest.approx(validated[key], abs=1e-6), key
    assert callback.epochs_explained == 2 and callback.last_num_samples == 4


def _renamed_keys(num_samples: int) -> list[dict[str, Tensor]]:
    items = [shapes_loader(num_samples).dataset[index] for index in range(num_samples)]
    return [
        {"image": image, "class_idx": label, "segmentation": mask.float(), "path": f"{index}.png"}  # type: ignore[dict-item]
        for index, (image, label, mask) in enumerate(items)
    ]


class RenamedKeysClassifier(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return super().training_step((batch["image"], batch["class_idx"]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step((batch["image"], batch["class_idx"]), batch_idx)


def test_dict_batches_with_keys_the_unpacker_does_not_read_are_warned_once(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=4, log_images=0, alpha=0.5)
    trainer = make_trainer([callback])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.validate(RenamedKeysClassifier(), DataLoader(_renamed_keys(4), batch_size=2), verbose=False)
    found = _messages(record, "are not read")
    assert len(found) == 1, found
    assert "['class_idx', 'segmentation']" in found[0] and "batch_unpacker=" in found[0]
    assert "'path'" not in found[0]  # a list of strings cannot be labels or masks
