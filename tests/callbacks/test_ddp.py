"""Two processes (``ddp_spawn``, gloo on CPU) log the single-process values, also on uneven splits."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVETCallback
from tests._helpers.models import FrozenClassifier
from tests._helpers.saliency import input_times_gradient
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import (
    CountForwards,
    DumpMetrics,
    forwards_path,
    multi_shapes_loader,
    rank_metrics_path,
    rank_records_path,
    rank_samples,
    shapes_loader,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(
    make_trainer: TrainerFactory,
    tmp_path: Any,
    num_samples: int,
    val_size: int,
    batch_size: int,
    devices: int,
    fit: bool,
    callback_options: dict[str, Any],
) -> dict[str, float]:
    """Validate (or fit one frozen step, then validate) a seeded model; returns the ``evet/`` values, checked
    equal on every rank, after checking that every rank made the same forward passes in the explained epoch."""
    pl.seed_everything(0)
    model = FrozenClassifier()
    out_dir = str(tmp_path / f"devices{devices}_fit{fit}")
    os.makedirs(out_dir, exist_ok=True)
    options: dict[str, Any] = {"strategy": "ddp_spawn", "devices": devices} if devices > 1 else {"devices": 1}
    trainer = make_trainer(
        [
            CountForwards(out_dir),
            EVETCallback(num_samples=num_samples, log_images=2, **callback_options),
            DumpMetrics(out_dir),
        ],
        accelerator="cpu",
        limit_train_batches=1,
        num_sanity_val_steps=0,
        **options,
    )
    multilabel = callback_options.get("task") == "multilabel"
    loader = (multi_shapes_loader if multilabel else shapes_loader)(val_size, batch_size=batch_size)
    if fit:
        trainer.fit(model, shapes_loader(4, seed=0), loader)
    else:
        trainer.validate(model, dataloaders=loader, verbose=False)
    forwards = []
    for rank in range(devices):
        with open(forwards_path(out_dir, rank)) as handle:
            forwards.append(json.load(handle))
    assert forwards[0]["calls"] > 0
    assert all(counts == forwards[0] for counts in forwards), forwards  # equal work on every rank (decision 29)
    per_rank = []
    for rank in range(devices):
        with open(rank_metrics_path(out_dir, rank)) as handle:
            per_rank.append({key: value for key, value in json.load(handle).items() if key.startswith("evet/")})
    assert all(values == per_rank[0] for values in per_rank)  # every rank logged the same, global, values
    _check_records(out_dir, devices, min(num_samples, val_size), per_rank[0], multilabel)
    return per_rank[0]


def _check_records(
    out_dir: str, devices: int, num_samples: int, values: dict[str, float], multilabel: bool = False
) -> None:
    """Every rank's ``sample_records()`` together: each sample once (no padding), and their means the logged
    values."""
    rows: dict[str, list[Any]] = {}
    for rank in range(devices):
        with open(rank_records_path(out_dir, rank)) as handle:
            (records,) = json.load(handle)
        for key, column in records.items():
            rows.setdefault(key, []).extend(column)
    if multilabel:  # one row per (image, positive class) pair of the first images, no padding pair
        labels = next(iter(multi_shapes_loader(num_samples, batch_size=num_samples)))[1]
        expected = [tuple(pair) for pair in torch.nonzero(labels).tolist()]
        assert sorted(zip(rows["sample"], rows["target"], strict=True)) == expected
    else:
        assert sorted(rows["sample"]) == list(range(num_samples))
    finite = torch.tensor(rows["finite"])
    for key in ("average_drop", "increase_in_confidence", "deletion_auc"):
        for variant in ("original", "evet"):
            if f"{variant}/{key}" in rows:
                mean = float(torch.tensor(rows[f"{variant}/{key}"], dtype=torch.float64)[finite].mean())
                assert mean == pytest.approx(values[f"evet/{variant}/{key}"], abs=1e-6), key


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("num_samples", "val_size", "batch_size", "fit", "options"),
    [
        (8, 12, 2, False, {}),
        (32, 9, 2, True, {}),
        (1, 1, 1, False, {}),
        (8, 12, 2, False, {"alpha_calibration": 3}),
        (5, 7, 2, False, {"task": "multilabel", "alpha_calibration": 3}),
        (
            3,
            4,
            1,
            False,
            {
                "deletion_insertion": True,
                "deletion_steps": 5,
                "stability_transforms": [],
                "cam": input_times_gradient,  # a user callable pickles to the spawned processes (issue 17)
            },
        ),
    ],
    ids=[
        "validate_even_8_of_12",
        "fit_uneven_9_of_9",
        "validate_rank1_idle",
        "validate_pooled_alpha_after_3_of_8",
        "multilabel_pairs_differ_per_rank_5_of_7",
        "deletion_insertion_uneven_3_user_callable",
    ],
)
def test_two_processes_log_the_single_process_values(
    make_trainer: TrainerFactory,
    tmp_path: Any,
    num_samples: int,
    val_size: int,
    batch_size: int,
    fit: bool,
    options: dict[str, Any],
) -> None:
    """Even split; uneven split in fit's validation (5 + 4: the padding repeat is not explained twice); a rank
    with nothing to explain (its shard is only a padding repeat); deletion and insertion AUCs (2 + 1 samples) of
    a user's saliency function; alpha calibrated on 3 samples (2 + 1), the pooled alpha for the 5 later ones.
    Multi-label (image, class) pairs, 3 + 2 images whose pair counts differ per image slot (checked), alpha
    calibrated on 3 images: the ranks pad pairs to the same layout (equal forward passes) and log the
    single-process values over the pairs. Same values as one process, every key the callback lists among them;
    nobody hangs."""
    if options.get("task") == "multilabel":  # the ranks' images (r, r + 2, ...) hold different numbers of pairs
        labels = next(iter(multi_shapes_loader(num_samples, batch_size=num_samples)))[1]
        assert labels[0::2].sum(1).tolist()[:2] != labels[1::2].sum(1).tolist()[:2]
    single = _run(
        make_trainer, tmp_path, num_samples, val_size, batch_size, devices=1, fit=False, callback_options=options
    )
    double = _run(
        make_trainer, tmp_path, num_samples, val_size, batch_size, devices=2, fit=fit, callback_options=options
    )
    assert set(EVETCallback(**options).metric_keys) <= set(single)
    assert set(double) == set(single)
    # on a mismatch, the per-sample scores each rank explained (one failure in many runs was seen, not reproduced)
    assert double == pytest.approx(single, abs=1e-5), "\n".join(
        rank_samples(str(tmp_path / f"devices{devices}_fit{fit and devices > 1}"), devices) for devices in (1, 2)
    )
