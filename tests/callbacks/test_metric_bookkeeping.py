"""The callback's metric bookkeeping: one MetricCollection per map variant, registered on the module's device
but outside its state; every value as before the collections; each metric updated and computed exactly once."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

from evet_lightning import EVET, EVETCallback
from evet_lightning.callbacks.explaining import ExplainedChunk, explain_chunk
from evet_lightning.callbacks.explanation_metrics import ExplanationMetrics, MetricsAnchor
from evet_lightning.callbacks.sampling import SampleBatch, fingerprint_terms
from evet_lightning.functional import (
    average_difference,
    average_drop,
    energy_pointing_game,
    increase_in_confidence,
    stability_index,
    win,
)
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate, Scale, Shear
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import RecordingLogger, shapes_loader

KEYS = [
    "evet/num_skipped",
    "evet/original/average_drop",
    "evet/original/energy_pointing_game",
    "evet/original/increase_in_confidence",
    "evet/original/stability_index",
    "evet/evet/average_drop",
    "evet/evet/energy_pointing_game",
    "evet/evet/increase_in_confidence",
    "evet/evet/stability_index",
    "evet/average_difference",
    "evet/win",
    *(
        f"evet/diff/{name}{suffix}"
        for name in ("average_drop", "energy_pointing_game", "increase_in_confidence", "stability_index")
        for suffix in ("", "_low", "_high")
    ),
]

# Logged by the callback before its metrics became MetricCollections (dictionaries of metrics keyed by hand),
# for the runs below, on this project's CPU machine; the refactored callback logs the same numbers bit for bit
# there. They depend on the EVET engine too: when the maps change on purpose, record them again.
BEFORE_FIT_EPOCHS = [
    {
        "evet/num_skipped": 0.0,
        "evet/original/average_drop": 0.0012283495161682367,
        "evet/original/increase_in_confidence": 0.3333333432674408,
        "evet/original/energy_pointing_game": 0.10943497717380524,
        "evet/original/stability_index": 0.9717732071876526,
        "evet/evet/average_drop": 0.0011587570188567042,
        "evet/evet/increase_in_confidence": 0.3333333432674408,
        "evet/evet/energy_pointing_game": 0.11910731345415115,
        "evet/evet/stability_index": 0.9718548655509949,
        "evet/win": 0.1666666716337204,
        "evet/average_difference": 1.757343670760747e-05,
    },
    {
        "evet/num_skipped": 0.0,
        "evet/original/average_drop": 0.0042917970567941666,
        "evet/original/increase_in_confidence": 0.5,
        "evet/original/energy_pointing_game": 0.12213210761547089,
        "evet/original/stability_index": 0.985363781452179,
        "evet/evet/average_drop": 0.0042917970567941666,
        "evet/evet/increase_in_confidence": 0.5,
        "evet/evet/energy_pointing_game": 0.11903645098209381,
        "evet/evet/stability_index": 0.9886536002159119,
        "evet/win": 0.0,
        "evet/average_difference": -5.6122738897101954e-05,
    },
]
BEFORE_CHUNKS = {
    "evet/num_skipped": 0.0,
    "evet/original/average_drop": 0.0006406753673218191,
    "evet/original/increase_in_confidence": 0.4285714328289032,
    "evet/original/energy_pointing_game": 0.08720017224550247,
    "evet/original/stability_index": 0.7964995503425598,
    "evet/evet/average_drop": 0.0007220391998998821,
    "evet/evet/increase_in_confidence": 0.4285714328289032,
    "evet/evet/energy_pointing_game": 0.11008946597576141,
    "evet/evet/stability_index": 0.9598767161369324,
    "evet/win": 0.2857142984867096,
    "evet/average_difference": -2.2873282432556152e-05,
}
BEFORE_NAN_SAMPLE = {
    "evet/num_skipped": 1.0,
    "evet/original/average_drop": 0.0,
    "evet/original/increase_in_confidence": 1.0,
    "evet/original/stability_index": 0.8813064694404602,
    "evet/evet/average_drop": 0.0,
    "evet/evet/increase_in_confidence": 1.0,
    "evet/evet/stability_index": 0.9431180953979492,
    "evet/win": 0.20000000298023224,
    "evet/average_difference": -4.26173210144043e-06,
}


def _evet_values(metrics: dict[str, Any], differences: bool = False) -> dict[str, float]:
    """The callback's values; the paired differences (added after the values below were recorded) on request."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith("evet/") and (differences or not key.startswith("evet/diff/"))
    }


def _chunks_run(make_trainer: TrainerFactory, differences: bool = False) -> tuple[EVETCallback, dict[str, float]]:
    """7 samples in batches of 4, explained 3 at a time (chunks of 3, 3, 1), two stability transforms."""
    pl.seed_everything(0)
    stability = [Rotate(5.0), HorizontalFlip()]
    callback = EVETCallback(num_samples=7, log_images=0, max_batch_size=3, stability_transforms=stability, alpha=0.5)
    results = make_trainer([callback]).validate(Classifier(), shapes_loader(10, batch_size=4), verbose=False)
    return callback, _evet_values(results[0], differences)


def test_logged_values_are_those_before_the_metric_collections(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    logger = RecordingLogger()
    trainer = make_trainer(
        [EVETCallback(num_samples=6, log_images=0, alpha=0.5, max_batch_size=64)], max_epochs=2, logger=logger
    )
    trainer.fit(Classifier(), shapes_loader(8), shapes_loader(8))
    logged = [_evet_values(metrics) for _, metrics in logger.records if "evet/win" in metrics]
    assert logged == [pytest.approx(epoch, rel=0, abs=1e-6) for epoch in BEFORE_FIT_EPOCHS]
    assert [[key for key in epoch if "/diff/" not in key] for epoch in logged] == [
        [key for key in KEYS if "/diff/" not in key]
    ] * 2
    assert [key for _, metrics in logger.records if "evet/win" in metrics for key in metrics if "/diff/" in key] == [
        key for key in KEYS if "/diff/" in key
    ] * 2
    _, values = _chunks_run(make_trainer)
    assert values == pytest.approx(BEFORE_CHUNKS, rel=0, abs=1e-6)

    images = torch.stack([shapes_loader(6).dataset[i][0] for i in range(6)])
    images[2] = float("nan")

    class TensorClassifier(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch)

    pl.seed_everything(0)
    callback = EVETCallback(num_samples=6, log_images=0, alpha=0.5, max_batch_size=64)
    results = make_trainer([callback]).validate(TensorClassifier(), DataLoader(images, batch_size=4), verbose=False)
    assert _evet_values(results[0]) == pytest.approx(BEFORE_NAN_SAMPLE, rel=0, abs=1e-6)


def test_logged_values_are_the_metrics_of_the_per_sample_results(make_trainer: TrainerFactory) -> None:
    """Over several chunks and two stability transforms, every value is its functional metric applied to all of
    ``last_samples`` at once."""
    callback, values = _chunks_run(make_trainer, differences=True)
    # Paired differences: the mean is EVET's value minus the original's (same samples), inside its interval.
    for name in ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index"):
        difference = values.pop(f"evet/diff/{name}")
        assert difference == pytest.approx(values[f"evet/evet/{name}"] - values[f"evet/original/{name}"], abs=1e-6)
        assert values.pop(f"evet/diff/{name}_low") <= difference <= values.pop(f"evet/diff/{name}_high")
    samples = callback.last_samples
    assert samples is not None and len(samples) == 7 and [len(chunk.images) for chunk in samples.chunks] == [3, 3, 1]
    assert samples.positions.tolist() == list(range(7)) and bool(samples.finite.all())
    assert torch.equal(samples.targets, torch.stack([shapes_loader(7).dataset[i][1] for i in range(7)]))
    masks = torch.cat([chunk.masks for chunk in samples.chunks])  # type: ignore[misc]
    maps = {
        name: torch.cat([getattr(chunk.result, name) for chunk in samples.chunks]) for name in ("original", "saliency")
    }
    clean, original, enhanced = samples.clean_scores, samples.original_scores, samples.evet_scores
    expected = {
        "original/average_drop": average_drop(clean, original),
        "evet/average_drop": average_drop(clean, enhanced),
        "original/increase_in_confidence": increase_in_confidence(clean, original),
        "evet/increase_in_confidence": increase_in_confidence(clean, enhanced),
        "original/energy_pointing_game": energy_pointing_game(maps["original"], masks),
        "evet/energy_pointing_game": energy_pointing_game(maps["saliency"], masks),
        "win": win(enhanced, original),
        "average_difference": average_difference(enhanced, original),
        "num_skipped": torch.tensor(0.0),
    }
    for variant, field in (("original", "original"), ("evet", "saliency")):
        pairs = [(chunk, stability) for chunk in samples.chunks for stability in chunk.stability]
        expected[f"{variant}/stability_index"] = stability_index(
            torch.cat([getattr(chunk.result, field) for chunk, _ in pairs]),
            torch.cat([getattr(stability, field) for _, stability in pairs]),
            torch.cat([stability.valid.expand(len(chunk.images), -1, -1) for chunk, stability in pairs]),
        )
    assert values == pytest.approx({f"evet/{key}": float(value) for key, value in expected.items()}, abs=1e-6)
    for result, chunk in zip(callback.last_results, samples.chunks, strict=True):
        assert result.saliency_scores is chunk.evet_scores


def _chunk(with_masks: bool) -> ExplainedChunk:
    torch.manual_seed(0)
    loader = shapes_loader(3, batch_size=3)
    images, labels, masks = next(iter(loader))
    batch = SampleBatch(images, labels, masks if with_masks else None, torch.arange(3, dtype=torch.float64))
    return explain_chunk(EVET(Classifier(), alpha=0.5), batch, torch.device("cpu"), [Rotate(5.0)])


def _count_computes(metrics: ExplanationMetrics) -> dict[str, int]:
    """Wraps each metric's ``compute`` to count its calls, by the metric's place in ``metrics``."""
    calls: dict[str, int] = {}

    def counting(name: str, compute: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            calls[name] = calls.get(name, 0) + 1
            return compute()

        return wrapped

    for name, module in metrics.named_modules():
        if isinstance(module, Metric):
            module.compute = counting(name, module.compute)  # type: ignore[method-assign]
    return calls


def test_each_metric_is_computed_once_and_an_idle_process_computes_without_warning() -> None:
    chunk = _chunk(with_masks=True)
    fed = ExplanationMetrics("evet", stability=True)
    calls = _count_computes(fed)
    fed.update(chunk)
    fed.count_images(2)  # images are counted apart from the rows (a multi-label run's rows are pairs)
    fed.finish_epoch()
    values, counts = fed.compute()
    assert list(values) == KEYS == fed.keys()
    assert set(calls.values()) == {1} and len(calls) == 19  # 8 variant metrics, 2 comparisons, 4 differences, 5 counts
    assert (counts.explained, counts.skipped, counts.masked, counts.images) == (3, 0, 3, 2)
    assert counts.fingerprint == pytest.approx(float(fingerprint_terms(chunk.images, chunk.positions).sum()))
    assert not any(metric.update_called for metric in fed.modules() if isinstance(metric, Metric))  # reset
    # the same chunk without masks: the pointing game is neither computed nor logged
    unmasked = ExplanationMetrics("evet", stability=True)
    calls = _count_computes(unmasked)
    unmasked.update(_chunk(with_masks=False))
    unmasked.finish_epoch()
    values, _ = unmasked.compute()
    assert list(values) == [key for key in KEYS if "energy_pointing_game" not in key]
    assert not any("energy_pointing_game" in name for name in calls)
    # a process with nothing to explain: every metric still had an (empty) update, so computing syncs silently
    idle = ExplanationMetrics("evet", stability=False)
    idle.finish_epoch()
    assert all(metric.update_called for metric in idle.modules() if isinstance(metric, Metric))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, counts = idle.compute()
    assert values == {"evet/num_skipped": torch.tensor(0.0)} and counts.explained == 0


class _DeviceRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moves: list[Any] = []

    def to(self, *args: Any, **kwargs: Any) -> _DeviceRecorder:  # type: ignore[override]
        self.moves.append(args[0] if args else kwargs)
        return self


def test_anchor_moves_the_metrics_with_the_module_and_never_casts_them() -> None:
    module = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    recorder = _DeviceRecorder()
    module.add_module("anchor", MetricsAnchor(recorder))
    module.to(torch.device("cpu"))
    module.double()
    assert recorder.moves == [torch.device("cpu"), torch.device("cpu")]
    assert list(module.state_dict()) == list(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).state_dict())
    metrics = ExplanationMetrics("evet", stability=True)
    pl_module = Classifier()
    MetricsAnchor.attach(pl_module, "evet", metrics)
    pl_module.to(torch.bfloat16)
    assert metrics.variant("evet")["average_drop"].sum_drop.dtype == torch.float64
    assert metrics.fingerprint.sum_value.dtype == torch.float64 and metrics.num_skipped.sum_value.dtype == torch.float32
    MetricsAnchor.detach(pl_module, "evet")
    assert not hasattr(pl_module, MetricsAnchor.name_for("evet"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_metrics_follow_the_module_to_the_gpu() -> None:
    metrics = ExplanationMetrics("evet", stability=True)
    pl_module = Classifier()
    MetricsAnchor.attach(pl_module, "evet", metrics)
    pl_module.cuda()
    assert all(metric.device.type == "cuda" for metric in metrics.modules() if isinstance(metric, Metric))


def test_metrics_ride_on_the_module_only_during_a_run_and_stay_out_of_its_state(
    make_trainer: TrainerFactory, tmp_path: Any
) -> None:
    plain_keys = list(Classifier().state_dict())
    plain_parameters = len(list(Classifier().parameters()))
    seen: list[tuple[bool, list[str], int]] = []

    class Spy(pl.Callback):
        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            anchor = getattr(pl_module, MetricsAnchor.name_for("evet"), None)
            seen.append(
                (isinstance(anchor, MetricsAnchor), list(pl_module.state_dict()), len(list(pl_module.parameters())))
            )

    callback = EVETCallback(num_samples=2, log_images=0)
    model = Classifier()
    trainer = make_trainer([callback, Spy()])
    trainer.fit(model, shapes_loader(4), shapes_loader(2))
    assert len(seen) == 2 and seen == [(True, plain_keys, plain_parameters)] * 2  # sanity check and epoch 0
    assert not hasattr(model, MetricsAnchor.name_for("evet"))  # removed in teardown
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert list(checkpoint["state_dict"]) == plain_keys
    Classifier().load_state_dict(checkpoint["state_dict"])  # strict: a model trained without the callback loads it


def test_paper_stability_is_the_mean_of_the_four_table5_indices_next_to_the_default(
    make_trainer: TrainerFactory,
) -> None:
    """``paper_stability=True`` adds ``stability_index_paper``: the mean over scale 0.9, rotate 10, shear 0.2 and
    flip of each transform's own stability index (at the out-of-fold alphas); the default keys stay Rotate 5's."""
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=0, max_batch_size=64, paper_stability=True)
    results = make_trainer([callback]).validate(Classifier(), shapes_loader(4, batch_size=4), verbose=False)
    values = _evet_values(results[0], differences=True)
    samples = callback.last_samples
    assert samples is not None and len(samples) == 4 and bool(samples.finite.all())
    (chunk,) = samples.chunks
    assert [maps.transform for maps in chunk.stability] == [Rotate(5.0)]
    assert [maps.transform for maps in chunk.paper_stability] == [
        Scale(0.9),
        Rotate(10.0),
        Shear(0.2),
        HorizontalFlip(),
    ]
    for variant, field in (("original", "original"), ("evet", "saliency")):
        maps = getattr(chunk.result, field)
        per_transform = [
            float(stability_index(maps, getattr(run, field), run.valid.expand(len(maps), -1, -1)))
            for run in chunk.paper_stability
        ]
        assert len(set(per_transform)) == 4  # four different transforms, four different indices
        assert values[f"evet/{variant}/stability_index_paper"] == pytest.approx(sum(per_transform) / 4, abs=1e-6)
        (rotate,) = chunk.stability
        default = stability_index(maps, getattr(rotate, field), rotate.valid.expand(len(maps), -1, -1))
        assert values[f"evet/{variant}/stability_index"] == pytest.approx(float(default), abs=1e-6)
    paper = "stability_index_paper"
    difference = values[f"evet/diff/{paper}"]
    assert difference == pytest.approx(values[f"evet/evet/{paper}"] - values[f"evet/original/{paper}"], abs=1e-6)
    assert values[f"evet/diff/{paper}_low"] <= difference <= values[f"evet/diff/{paper}_high"]
    # the default run logs no paper key
    default_keys = ExplanationMetrics("evet", stability=True).keys()
    paper_keys = ExplanationMetrics("evet", stability=True, paper_stability=True).keys()
    assert not any("paper" in key for key in default_keys)
    assert [key for key in paper_keys if key not in default_keys] == [
        f"evet/{variant}/{paper}" for variant in ("original", "evet")
    ] + [f"evet/diff/{paper}{end}" for end in ("", "_low", "_high")]
