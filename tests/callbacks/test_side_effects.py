"""The callback never changes the training run (reliability items 3-11)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import RssRecorder, count_graph_tensors, iterate_tensors, probes, shapes_loader


def _fit(make_trainer: TrainerFactory, model: Classifier, callbacks: list[Any], **options: Any) -> pl.Trainer:
    trainer = make_trainer(callbacks, deterministic=True, **options)
    trainer.fit(model, shapes_loader(32, seed=0, batch_size=4, shuffle=True), shapes_loader(8, batch_size=4))
    return trainer


class TrainingFlags(pl.Callback):
    """The training flags of two blocks at the first training batch after each validation."""

    def __init__(self) -> None:
        self.after_validation = False
        self.seen: list[dict[str, bool]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_validation = not trainer.sanity_checking

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.after_validation:
            modules = dict(pl_module.named_modules())
            self.seen.append(
                {name: modules[name].training for name in ("model.features.block1", "model.features.block2")}
            )
            self.after_validation = False


def _seeded_model(**kwargs: Any) -> Classifier:
    pl.seed_everything(0)
    return Classifier(**kwargs)


def test_gradient_accumulation_weights_bit_identical(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    """Validation falls mid-accumulation (interval 2, accumulation 4); dropout makes any RNG use visible."""
    options = {"accumulate_grad_batches": 4, "val_check_interval": 2, "limit_train_batches": 8, "max_epochs": 2}
    reference = _seeded_model()
    _fit(make_trainer, reference, [], default_root_dir=tmp_path / "reference", **options)
    model = _seeded_model()
    callback = EVETCallback(num_samples=4, log_images=0)
    trainer = _fit(make_trainer, model, [callback], default_root_dir=tmp_path / "with_callback", **options)
    assert callback.epochs_explained == 8  # 4 validations per epoch, every one explained
    assert "evet/win" in trainer.callback_metrics
    for (name, param), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(param, expected), name
    trained = _seeded_model()
    assert not all(torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize(
    "variant",
    [{}, {"freeze_backbone": True}, {"eval_block": True}],
    ids=["batchnorm", "frozen_backbone", "partly_eval"],
)
def test_hook_leaves_model_optimizer_and_rng_untouched(make_trainer: TrainerFactory, variant: dict[str, bool]) -> None:
    """Across the callback's epoch-end work (mid-accumulation): params, BN buffers, .grad tensors, requires_grad,
    training flags, hooks, optimizer state, RNG states (torch, numpy, random), grad and inference mode."""
    before, after = probes(count_graphs=not variant)  # also: no new autograd graph outlives the hook
    callback = EVETCallback(num_samples=4, log_images=1)
    model = _seeded_model(**variant)
    flags = TrainingFlags()
    trainer = _fit(
        make_trainer,
        model,
        [before, callback, after, flags],
        accumulate_grad_batches=4,
        val_check_interval=2,
        limit_train_batches=6,
    )
    assert after.changes == [[], [], []]
    assert trainer.global_step == 2  # training went on after each validation (steps at batches 4 and 6)
    assert "evet/win" in trainer.callback_metrics
    # the first validation fell mid-accumulation: gradients were there for the callback to disturb
    grads = before.states[0]["grads"]
    if variant.get("freeze_backbone"):
        assert all(grad is None for name, (grad, _) in grads.items() if ".features." in name)
    assert any(grad is not None for grad, _ in grads.values())
    # after each validation, training resumes with the module's own flags (block1 left in eval on purpose)
    expected = {"model.features.block1": not variant.get("eval_block"), "model.features.block2": True}
    assert flags.seen == [expected, expected]


def test_bf16_mixed_runs_and_values_are_finite(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=4, log_images=0)
    trainer = _fit(make_trainer, _seeded_model(), [callback], precision="bf16-mixed", limit_train_batches=2)
    values = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("evet/")}
    assert len(values) == 12 + 4 * 3 and all(math.isfinite(value) for value in values.values())  # 4 differences
    (result,) = callback.last_results
    assert result.saliency.dtype == torch.float32 and result.original.dtype == torch.float32
    assert bool(torch.isfinite(result.saliency).all())


def test_memory_is_bounded_over_many_epochs_and_no_graph_is_retained(make_trainer: TrainerFactory) -> None:
    """110 validation epochs: the RSS floor of epochs 100-110 is less than 8 MB above that of epochs 5-15
    (measured: -1.5 to +3 MB, the allocator's noise; keeping each epoch's EVET results, a leak of about 40 kB
    of tensors per epoch, measured +14 to +24 MB), and no tensor with an autograd graph survives the hook
    (neither held by the callback nor anywhere in the process)."""
    recorder = RssRecorder()
    callback = EVETCallback(num_samples=8, log_images=0)
    trainer = make_trainer(
        [callback, recorder], max_epochs=110, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0
    )
    trainer.fit(_seeded_model(), shapes_loader(4, seed=0), shapes_loader(8, batch_size=8))
    assert callback.epochs_explained == 110 and callback.last_num_samples == 8
    growth = recorder.floor_growth(early=slice(5, 15), late=slice(100, 110))
    assert growth < 8 * 2**20, f"the RSS floor rose by {growth / 2**20:.2f} MB in 95 epochs"
    assert not any(t.requires_grad or t.grad_fn is not None for t in iterate_tensors(callback))
    assert count_graph_tensors() == 0
