"""The streamed epoch (decisions 36-38): alpha calibrated on the first ``alpha_calibration`` samples, out of fold
inside them, the pooled choice for every later sample; the work done batch by batch."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from evet_lightning import EVET, EVETCallback
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, AlphaCurve, alpha_curve, choose_alpha, map_energy
from evet_lightning.functional.fusion import blend
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

GRID = DEFAULT_ALPHA_GRID  # (0, 0.1, 0.25, 0.5, 1)
CALIBRATION = 4
NUM_SAMPLES = 10


def pick_by_count(curve: AlphaCurve) -> torch.Tensor:
    """Chooses grid index ``num_samples % A``: 5 calibration samples give fold 0 (3 samples) index 3, fold 1 (2)
    index 2, both together (5) index 0, three different choices."""
    values = torch.ones(curve.alphas.numel(), dtype=torch.float64)
    values[int(curve.num_samples) % curve.alphas.numel()] = 0.0
    return values


def _loader(later_seed: int) -> DataLoader[Any]:
    """The first ``CALIBRATION`` samples of one SyntheticShapes set, then ``NUM_SAMPLES - CALIBRATION`` of another
    (``later_seed``): changing the seed changes the later samples only."""
    first = shapes_loader(CALIBRATION, seed=1).dataset
    later = Subset(shapes_loader(NUM_SAMPLES, seed=later_seed).dataset, range(CALIBRATION, NUM_SAMPLES))
    return DataLoader(ConcatDataset([first, later]), batch_size=3)


def _validate(make_trainer: TrainerFactory, model: Classifier, loader: Any, **options: Any) -> tuple[EVETCallback, Any]:
    callback = EVETCallback(num_samples=NUM_SAMPLES, stability_transforms=[], log_images=0, **options)
    (values,) = make_trainer([callback]).validate(model, dataloaders=loader, verbose=False)
    return callback, values


def test_later_samples_use_the_pooled_calibration_choice_whatever_their_own_scores(
    make_trainer: TrainerFactory,
) -> None:
    pl.seed_everything(0)
    model = Classifier()
    runs = [
        _validate(make_trainer, model, _loader(seed), alpha_calibration=CALIBRATION, alpha_objective="average_drop")
        for seed in (1, 7)
    ]
    (callback, values), (other, _) = runs
    choice = callback.last_alpha
    assert choice is not None and callback.calibration_complete
    records, other_records = callback.sample_records(), other.sample_records()
    assert records["sample"].tolist() == list(range(NUM_SAMPLES))
    # The choice, computed by hand from one EVET run on the calibration samples (the first CALIBRATION).
    images, labels, masks = (torch.stack(items) for items in zip(*_loader(1).dataset, strict=True))
    images, labels, masks = images[:CALIBRATION], labels[:CALIBRATION], masks[:CALIBRATION]
    evet = EVET(model.eval(), **callback.settings.evet_kwargs())
    with torch.no_grad():
        result = evet(images, labels, masks=masks, score_saliency=True)
    assert result.alpha_scores is not None

    def curve(include: torch.Tensor) -> AlphaCurve:
        return alpha_curve(
            torch.tensor(GRID, dtype=torch.float64),
            result.clean_scores,
            result.alpha_scores,  # type: ignore[arg-type]
            result.view_scores[0],
            alpha_energy=result.alpha_energy,
            original_energy=map_energy(result.original, masks),
            include=include,
        )

    folds = torch.arange(CALIBRATION) % 2
    pooled = choose_alpha(curve(torch.ones(CALIBRATION, dtype=torch.bool)), "average_drop")[0]
    by_fold = tuple(choose_alpha(curve(folds == 1 - fold), "average_drop")[0] for fold in (0, 1))
    assert (choice.pooled_index, choice.indices) == (pooled, by_fold)
    # Calibration samples: their fold's out-of-fold alpha; later ones: the pooled alpha.
    expected = torch.tensor([GRID[by_fold[fold]] for fold in folds] + [GRID[pooled]] * (NUM_SAMPLES - CALIBRATION))
    assert torch.equal(records["alpha"], expected.double())
    # Other later samples (other images, other scores): the same choice, the same calibration rows.
    assert other.last_alpha is not None
    assert (other.last_alpha.indices, other.last_alpha.pooled_index) == (choice.indices, choice.pooled_index)
    assert not torch.equal(records["Y"][CALIBRATION:], other_records["Y"][CALIBRATION:])
    for key, column in records.items():
        torch.testing.assert_close(other_records[key][:CALIBRATION], column[:CALIBRATION], rtol=0, atol=0)
    assert torch.equal(other_records["alpha"], records["alpha"])
    # {prefix}/alpha: the calibration samples at the folds' mean, the later ones at the pooled alpha.
    mean = (CALIBRATION * choice.mean_alpha + (NUM_SAMPLES - CALIBRATION) * GRID[pooled]) / NUM_SAMPLES
    assert values["evet/alpha"] == pytest.approx(mean)
    # The logged values are the means of the rows (every sample, both alpha rules).
    for key in ("evet/average_drop", "original/average_drop", "evet/energy_pointing_game"):
        assert values[f"evet/{key}"] == pytest.approx(float(records[key].mean()), abs=1e-6)


def test_later_maps_and_scores_are_at_the_pooled_alpha(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    callback, _ = _validate(
        make_trainer,
        Classifier(),
        shapes_loader(8, batch_size=3),
        alpha_calibration=5,
        alpha_objective=pick_by_count,
        max_batch_size=2,
    )
    choice = callback.last_alpha
    assert choice is not None and callback.last_samples is not None
    assert (choice.indices, choice.pooled_index) == ((2, 3), 0)
    groups = []
    for chunk in callback.last_samples.chunks:
        result = chunk.result
        assert result.alpha_scores is not None
        for row, position in enumerate(chunk.positions.round().long().tolist()):
            group = position % 2 if position < 5 else 2
            alpha, index = (*choice.alphas, choice.pooled_alpha)[group], (*choice.indices, choice.pooled_index)[group]
            expected = blend(result.fused_mean[row : row + 1], result.fused_sigma[row : row + 1], alpha)
            torch.testing.assert_close(result.saliency[row : row + 1], expected, rtol=0, atol=0)
            assert float(chunk.evet_scores[row]) == float(result.alpha_scores[index, row])
            groups.append(group)
    # The chunks (of 2) that hold the first max(log_images, alpha_calibration) = 5 samples are kept (decision 38).
    assert groups == [0, 1, 0, 1, 0, 2]


class ExplainedSoFar(pl.Callback):
    """Listed after the EVETCallback: how many samples it has scored at each validation batch's end."""

    def __init__(self, callback: EVETCallback) -> None:
        self.callback = callback
        self.counts: list[int] = []
        self.new_rows: list[list[int]] = []

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.new_rows.append(self.callback.sample_records(start=sum(map(len, self.new_rows)))["sample"].tolist())
        self.counts.append(int(self.callback.sample_records()["sample"].numel()))


@pytest.mark.parametrize("alpha", ["auto", 0.5])
def test_the_work_advances_batch_by_batch(make_trainer: TrainerFactory, alpha: Any) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(
        num_samples=6, alpha=alpha, alpha_calibration=2, max_batch_size=2, stability_transforms=[], log_images=0
    )
    probe = ExplainedSoFar(callback)
    make_trainer([callback, probe]).validate(Classifier(), dataloaders=shapes_loader(8, batch_size=2), verbose=False)
    assert probe.counts == [2, 4, 6, 6]
    assert probe.new_rows == [[0, 1], [2, 3], [4, 5], []]  # sample_records(start=...): the rows since then


def test_compacting_the_per_sample_values_changes_nothing(
    make_trainer: TrainerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run() -> EVETCallback:
        pl.seed_everything(0)
        callback = EVETCallback(
            num_samples=7, alpha_calibration=2, max_batch_size=1, log_images=0, stability_transforms=[]
        )
        make_trainer([callback]).validate(Classifier(), dataloaders=shapes_loader(8, batch_size=2), verbose=False)
        return callback

    plain = run()
    monkeypatch.setattr("evet_lightning.callbacks.records._COMPACT_EVERY", 2)
    monkeypatch.setattr("evet_lightning.callbacks.streaming._COMPACT_EVERY", 3)
    compacted = run()
    assert plain.last_samples is not None and compacted.last_samples is not None
    for records in (compacted.sample_records(), compacted.sample_records(start=3)):
        start = 7 - records["sample"].numel()
        assert records.keys() == plain.sample_records().keys()
        for key, column in plain.sample_records().items():
            torch.testing.assert_close(records[key], column[start:], rtol=0, atol=0, equal_nan=True)
    for name in ("positions", "targets", "clean_scores", "original_scores", "evet_scores"):
        assert torch.equal(getattr(compacted.last_samples, name), getattr(plain.last_samples, name))
    assert len(compacted.last_samples.chunks) == len(plain.last_samples.chunks) == 2  # keep = 2 samples, 1 a chunk
