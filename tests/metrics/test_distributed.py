"""Two processes (gloo on CPU) give the single-process value, also on uneven splits and with an idle rank.

Every metric is checked in the same two spawned processes (a spawn costs tens of seconds): the six of
:mod:`tests.metrics._cases` and DeletionAUC / InsertionAUC, whose mean curve is compared too.
"""

from __future__ import annotations

import os
import pickle
import socket
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evet_lightning.metrics import DeletionAUC, InsertionAUC, PairedDifference
from tests.metrics._cases import CASE_IDS, CASES, CURVE_STEPS, Batch, random_curves, split

NUM_SAMPLES = 9
#: per-rank sample counts: even-ish, uneven (5 + 4) and one rank with nothing to do
SPLITS = {"uneven_5_4": (5, 4), "even_ish_4_5": (4, 5), "rank1_idle": (9, 0), "rank0_idle": (0, 9)}
#: metrics that also have a mean curve to compare
CURVE_METRICS = (DeletionAUC, InsertionAUC)


def _dataset(name: str) -> dict[str, torch.Tensor]:
    index = CASE_IDS.index(name)
    return CASES[index].make(torch.Generator().manual_seed(100 + index), NUM_SAMPLES)


def _metrics() -> list[tuple[str, Callable[[], Any], Batch]]:
    """``(name, a factory of the metric, its dataset)`` for every metric checked here."""
    entries: list[tuple[str, Callable[[], Any], Batch]] = [
        (case.name, case.metric, _dataset(case.name)) for case in CASES
    ]
    for index, metric_class in enumerate(CURVE_METRICS):
        curves = random_curves(NUM_SAMPLES, seed=100 + index)
        entries.append((metric_class.__name__, partial(metric_class, steps=CURVE_STEPS), {"curves": curves}))
    return entries


def _mean_curve(metric: Any) -> list[float] | None:
    """The mean curve of DeletionAUC / InsertionAUC (synchronized like ``compute``), ``None`` for the others."""
    return metric.mean_curve().tolist() if isinstance(metric, CURVE_METRICS) else None


def _pairs() -> Batch:
    """Per-sample values of two methods, with a non-finite pair (left out) and a tie."""
    generator = torch.Generator().manual_seed(7)
    values_a = torch.rand(NUM_SAMPLES, generator=generator)
    values_b = torch.rand(NUM_SAMPLES, generator=generator)
    values_a[3] = torch.nan
    values_b[5] = values_a[5]
    return {"values_a": values_a, "values_b": values_b}


def _paired_results(rank: int) -> dict[str, list[float]]:
    """PairedDifference's ``[mean, low, high]`` on this rank's share of :func:`_pairs`, per split (synced)."""
    results = {}
    for split_name, sizes in SPLITS.items():
        metric = PairedDifference(num_resamples=500, seed=3)
        metric.update(**split(_pairs(), list(sizes))[rank])  # an idle rank adds zero pairs
        results[split_name] = metric.compute().tolist()
    return results


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results: dict[tuple[str, str], tuple[float, list[float] | None, int, int]] = {}
        for name, make_metric, data in _metrics():
            for split_name, sizes in SPLITS.items():
                chunk = split(data, list(sizes))[rank]
                metric = make_metric()
                # a rank with no samples never calls update; the others update in two uneven pieces
                if chunk[next(iter(chunk))].shape[0]:
                    for piece in split(chunk, [1, chunk[next(iter(chunk))].shape[0] - 1]):
                        metric.update(**piece)
                with warnings.catch_warnings():
                    # an idle rank gets torchmetrics' "compute before update" warning; that is expected
                    warnings.simplefilter("ignore", UserWarning)
                    value = metric.compute()
                mean_curve = _mean_curve(metric)
                local_count = int(metric.num_samples + metric.num_skipped)
                metric.sync()
                synced_skipped = int(metric.num_skipped)
                metric.unsync()
                results[(name, split_name)] = (value.item(), mean_curve, local_count, synced_skipped)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(results, handle)
        with open(os.path.join(out_dir, f"paired{rank}.pkl"), "wb") as handle:
            pickle.dump(_paired_results(rank), handle)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
def test_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    expected = {}
    for name, make_metric, data in _metrics():
        metric = make_metric()
        metric.update(**data)
        expected[name] = (metric.compute().item(), _mean_curve(metric), int(metric.num_skipped))
    assert sum(curve is not None for _, curve, _ in expected.values()) == len(CURVE_METRICS)

    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as handle:
            results = pickle.load(handle)
        assert len(results) == len(expected) * len(SPLITS)
        for (name, split_name), (value, mean_curve, local_count, synced_skipped) in results.items():
            single_value, single_curve, single_skipped = expected[name]
            assert value == pytest.approx(single_value, abs=1e-6), (name, split_name, rank)
            if single_curve is None:
                assert mean_curve is None, (name, split_name, rank)
            else:
                assert mean_curve == pytest.approx(single_curve, abs=1e-6), (name, split_name, rank)
            assert synced_skipped == single_skipped, (name, split_name, rank)
            # compute() leaves each rank's own (unsynced) counts in place for further accumulation
            assert local_count == SPLITS[split_name][rank], (name, split_name, rank)
    # PairedDifference: the interval of all processes' pairs is exactly the single-process one
    single = PairedDifference(num_resamples=500, seed=3)
    single.update(**_pairs())
    single_interval = single.compute().tolist()
    assert single_interval[1] < single_interval[0] < single_interval[2]
    for rank in range(2):
        with open(tmp_path / f"paired{rank}.pkl", "rb") as handle:
            paired = pickle.load(handle)
        assert paired == dict.fromkeys(SPLITS, single_interval), rank
    # the datasets include skipped samples, so the synced count was exercised
    assert all(skipped > 0 for _, _, skipped in expected.values())
