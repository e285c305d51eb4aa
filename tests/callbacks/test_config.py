"""EVETCallback configuration: constructor checks, early errors at setup, batch formats, state, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVET, EVETCallback
from evet_lightning.callbacks.sampling import rank_quota
from evet_lightning.data.batch import unpack_batch
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate
from tests._helpers.models import Classifier, ExampleInputClassifier, MLPClassifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cam": "NoSuchCAM"}, "`cam`"),
        ({"threshold": 0.0}, "`threshold`"),
        ({"threshold": 1.5}, "`threshold`"),
        ({"alpha": -1.0}, "`alpha`"),
        ({"transforms": []}, "`transforms`"),
        ({"baseline": "grey"}, "`baseline`"),
        ({"max_batch_size": 0}, "`max_batch_size`"),
        ({"num_samples": 0}, "`num_samples`"),
        ({"num_samples": 2.5}, "`num_samples`"),
        ({"every_n_epochs": 0}, "`every_n_epochs`"),
        ({"log_images": -1}, "`log_images`"),
        ({"target": "logits"}, "`target`"),
        ({"prefix": ""}, "`prefix`"),
        ({"target_layers": torch.nn.Conv2d(1, 1, 1)}, "`target_layers`"),
        ({"target_layers": []}, "`target_layers`"),
        ({"stability_transforms": Rotate(5.0)}, "`stability_transforms`"),
        ({"stability_transforms": ["rotate"]}, "`stability_transforms`"),
        ({"batch_unpacker": "x"}, "`batch_unpacker`"),
        ({"model": 3}, "`model`"),
        ({"alpha": "fast"}, "`alpha`"),
        ({"alpha_grid": []}, "`alpha_grid`"),
        ({"alpha_objective": "x"}, "`alpha_objective`"),
        ({"output_transform": 3}, "`output_transform`"),
        ({"max_batch_size": "all"}, "`max_batch_size`"),
        ({"normalization": ((0.5,), (0.0,))}, "`normalization`"),
        ({"class_names": "cat"}, "`class_names`"),
        ({"class_names": []}, "`class_names`"),
        ({"class_names": ["cat", 2]}, "`class_names`"),
    ],
)
def test_invalid_configuration_raises_in_constructor(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EVETCallback(**kwargs)


def test_defaults_and_state_key() -> None:
    callback = EVETCallback()
    assert (callback.cam_name, callback.num_samples, callback.every_n_epochs, callback.target) == (
        "GradCAM",
        32,
        1,
        "label",
    )
    assert len(callback.transforms) == 7
    assert callback.stability_transforms == [Rotate(5.0)]
    assert callback.log_images == 8
    assert callback.state_key != EVETCallback(prefix="other").state_key
    assert callback.state_key == EVETCallback().state_key
    assert "evet/win" in callback.metric_keys and "evet/evet/stability_index" in callback.metric_keys
    assert "evet/evet/stability_index" not in EVETCallback(stability_transforms=[]).metric_keys


def test_evet_settings_are_built_once_and_back_the_attributes() -> None:
    callback = EVETCallback(
        alpha=0.25, target_layers="model.features", transforms=[HorizontalFlip()], max_batch_size="auto"
    )
    settings = callback.settings
    assert isinstance(settings, EVETSettings)
    assert (settings.alpha, settings.target_layers, tuple(settings.transforms or ())) == (
        0.25,
        ("model.features",),
        (HorizontalFlip(),),
    )
    assert (callback.alpha, callback.target_layers, callback.transforms) == (
        0.25,
        ["model.features"],
        [HorizontalFlip()],
    )
    assert callback.max_batch_size == "auto" and callback.cam == "GradCAM" and callback.baseline == "black"
    callback.threshold = 0.9  # assigning replaces the settings, validated again
    assert callback.settings.threshold == 0.9 and callback.settings.alpha == 0.25
    with pytest.raises(ValueError, match="`threshold`"):
        callback.threshold = 2.0
    evet = EVET(Classifier(), **callback.settings.evet_kwargs())
    assert (evet.alpha, evet.threshold, evet.transforms) == (0.25, 0.9, [HorizontalFlip()])


def test_pickle_and_state_dict_round_trip() -> None:
    callback = EVETCallback(num_samples=4, stability_transforms=[HorizontalFlip()], model="model")
    callback.validation_runs, callback.epochs_explained, callback.fingerprint = 3, 2, 1.25
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.state_dict() == callback.state_dict() and clone.settings == callback.settings
    assert clone.stability_transforms == [HorizontalFlip()] and clone.model == "model"
    fresh = EVETCallback(num_samples=4)
    fresh.load_state_dict(callback.state_dict())
    assert fresh.state_dict() == {"validation_runs": 3, "epochs_explained": 2, "num_samples": 0, "fingerprint": 1.25}
    fresh.load_state_dict({})  # missing keys read with defaults
    assert fresh.state_dict() == {"validation_runs": 0, "epochs_explained": 0, "num_samples": 0, "fingerprint": None}


def test_unpack_batch_formats() -> None:
    x, y, mask = torch.zeros(2, 3, 4, 4), torch.tensor([1, 2]), torch.zeros(2, 4, 4, dtype=torch.bool)
    assert unpack_batch(x) == (x, None, None)
    assert unpack_batch((x,)) == (x, None, None)
    assert unpack_batch([x, y]) == (x, y, None)
    assert unpack_batch((x, y, mask, "extra")) == (x, y, mask)
    assert unpack_batch({"image": x, "label": y, "mask": mask}) == (x, y, mask)
    assert unpack_batch({"images": x}) == (x, None, None)
    with pytest.raises(ValueError, match="batch_unpacker"):
        unpack_batch({"pixels": x})
    with pytest.raises(ValueError, match="batch_unpacker"):
        unpack_batch("not a batch")


def test_rank_quota_selects_each_sample_once() -> None:
    """Rank r sees indices r, r+W, ... (padded); the kept ones are exactly the first n indices."""
    for world_size in (1, 2, 3, 4):
        for dataset_size in (1, 5, 9, 16):
            for num_samples in (1, 4, 9, 32):
                selected = []
                for rank in range(world_size):
                    shard = [(rank + j * world_size) % dataset_size for j in range(-(-dataset_size // world_size))]
                    selected += shard[: rank_quota(num_samples, world_size, rank, dataset_size)]
                assert sorted(selected) == list(range(min(num_samples, dataset_size)))


def test_unknown_layer_name_raises_at_setup(make_trainer: TrainerFactory) -> None:
    model = Classifier()
    trainer = make_trainer([EVETCallback(target_layers="model.features.block9", num_samples=2)])
    with pytest.raises(ValueError, match="block9"):
        trainer.fit(model, shapes_loader(8), shapes_loader(4))
    assert model.training_steps == 0


def test_model_argument_must_give_a_module(make_trainer: TrainerFactory) -> None:
    trainer = make_trainer([EVETCallback(model="no_such_attribute", num_samples=2)])
    model = Classifier()
    with pytest.raises(ValueError, match="no_such_attribute"):
        trainer.fit(model, shapes_loader(8), shapes_loader(4))
    assert model.training_steps == 0


@pytest.mark.parametrize("sanity_steps", [2, 0])
def test_model_without_spatial_layer_fails_before_training(make_trainer: TrainerFactory, sanity_steps: int) -> None:
    """With a sanity check the first sanity batch finds no layer; without one, the first training batch does."""
    model = MLPClassifier()
    trainer = make_trainer([EVETCallback(num_samples=2)], num_sanity_val_steps=sanity_steps)
    with pytest.raises(ValueError, match="4-D spatial output"):
        trainer.fit(model, shapes_loader(8), shapes_loader(4))
    assert model.training_steps == 0


def test_example_input_array_resolves_layer_in_setup(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=2)
    model = ExampleInputClassifier()
    seen: list[Any] = []

    class Spy(pl.Callback):
        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            seen.append(None if callback._evet is None else callback._evet.target_layer_names)

    expected = EVET(ExampleInputClassifier()).resolve_target_layers(model.example_input_array)  # the engine's pick
    trainer = make_trainer([callback, Spy()], num_sanity_val_steps=0, limit_train_batches=1)
    trainer.fit(model, shapes_loader(4), shapes_loader(2))
    assert seen == [expected] and expected[0].startswith("model.features")


def test_unreadable_batch_fails_in_sanity_check(make_trainer: TrainerFactory) -> None:
    """Float labels with target='label': a clear error in the sanity check, before any training step."""

    def float_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor, None]:
        return batch[0], batch[1].float(), None

    model = Classifier()
    trainer = make_trainer([EVETCallback(num_samples=2, batch_unpacker=float_labels)])
    with pytest.raises(ValueError, match="integer class indices"):
        trainer.fit(model, shapes_loader(8), shapes_loader(4))
    assert model.training_steps == 0


def test_stability_transforms_paper_are_the_table5_transforms() -> None:
    from evet_lightning.saliency.transforms import HorizontalFlip, Rotate, Scale, Shear

    callback = EVETCallback(stability_transforms="paper")
    assert [type(transform) for transform in callback.stability_transforms] == [Scale, Rotate, Shear, HorizontalFlip]
    assert [repr(transform) for transform in callback.stability_transforms] == [
        repr(Scale(0.9)),
        repr(Rotate(10.0)),
        repr(Shear(0.2)),
        repr(HorizontalFlip()),
    ]
    with pytest.raises(ValueError, match="stability_transforms"):
        EVETCallback(stability_transforms="table5")  # type: ignore[arg-type]
