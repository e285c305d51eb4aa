"""Loaders, probe callbacks and a recording logger for the EVETCallback tests (module level:
ddp_spawn pickles); their LightningModules are in ``tests/_helpers/models.py``."""

from __future__ import annotations

import copy
import gc
import json
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from evet_lightning.data import MultiObjectShapes, SyntheticShapes
from tests._helpers.models import IMAGE_SIZE, NUM_CLASSES


def shapes_loader(
    num_samples: int, *, seed: int = 1, batch_size: int = 4, image_size: int = IMAGE_SIZE, shuffle: bool = False
) -> DataLoader[Any]:
    """``(x, y, mask)`` batches of :class:`SyntheticShapes`; shuffled with a fixed generator when asked."""
    dataset = SyntheticShapes(num_samples=num_samples, image_size=image_size, num_classes=NUM_CLASSES, seed=seed)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def multi_shapes_loader(num_samples: int, *, seed: int = 1, batch_size: int = 4) -> DataLoader[Any]:
    """``(x, multi-hot y, class-index mask)`` batches of :class:`MultiObjectShapes` (4 classes, 32 px)."""
    dataset = MultiObjectShapes(num_samples=num_samples, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, seed=seed)
    return DataLoader(dataset, batch_size=batch_size)


class DictBatches(Dataset[dict[str, Tensor]]):
    """SyntheticShapes items as ``{"image", "label"}`` dicts (no mask)."""

    def __init__(self, num_samples: int, seed: int = 1) -> None:
        self.data = SyntheticShapes(num_samples=num_samples, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, label, _ = self.data[index]
        return {"image": image, "label": label}


def explain_submodule(pl_module: Any) -> nn.Module:
    """``model=`` callable: explain the inner SmallCNN."""
    return pl_module.model


def rank_metrics_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"metrics_rank{rank}.json")


def rank_records_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"records_rank{rank}.json")


def rank_samples_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"samples_rank{rank}.json")


class DumpMetrics(pl.Callback):
    """Every process writes ``trainer.callback_metrics`` to JSON at validation end (out of ddp_spawn), the
    per-sample scores of each EVET callback's last results (for the failure message of a multi-process test), and
    each EVET callback's ``sample_records()``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {key: float(value) for key, value in trainer.callback_metrics.items()}
        with open(rank_metrics_path(self.directory, trainer.global_rank), "w") as handle:
            json.dump(values, handle)
        samples = [
            {
                "targets": result.targets.tolist(),
                "clean": result.clean_scores.tolist(),
                "original": result.view_scores[0].tolist(),
                "evet": None if result.saliency_scores is None else result.saliency_scores.tolist(),
            }
            for callback in trainer.callbacks
            for result in getattr(callback, "last_results", None) or []
        ]
        with open(rank_samples_path(self.directory, trainer.global_rank), "w") as handle:
            json.dump(samples, handle)
        records = [
            {key: column.tolist() for key, column in callback.sample_records().items()}
            for callback in trainer.callbacks
            if hasattr(callback, "sample_records")
        ]
        with open(rank_records_path(self.directory, trainer.global_rank), "w") as handle:
            json.dump(records, handle)


def rank_samples(directory: str, devices: int) -> str:
    """What :class:`DumpMetrics` wrote of each rank's samples, one line per rank (for assertion messages)."""
    lines = []
    for rank in range(devices):
        path = rank_samples_path(directory, rank)
        if os.path.exists(path):
            with open(path) as handle:
                lines.append(f"rank {rank} of {devices}: {handle.read()}")
    return "\n".join(lines)


def forwards_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"forwards_rank{rank}.json")


class CountForwards(pl.Callback):
    """Counts the LightningModule's forward calls (and images through it) made by the callbacks listed after it
    in the validation hooks where the EVET work happens (each batch's end, the epoch's end), not the validation
    steps'; every process writes them to JSON at validation end. List it *before* the EVETCallback."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.calls = self.images = 0
        self.counting = False
        self.handle: Any = None

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.counting:
            self.calls += 1
            self.images += int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.calls = self.images = 0
        self.counting = False
        if self.handle is None:
            self.handle = pl_module.register_forward_pre_hook(self._count)

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.counting = False

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.counting = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counting = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counting = False
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if trainer.sanity_checking:
            return
        with open(forwards_path(self.directory, trainer.global_rank), "w") as handle:
            json.dump({"calls": self.calls, "images": self.images}, handle)


def count_graph_tensors() -> int:
    """Number of live tensors that carry an autograd graph."""
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated module-level proxies warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, Tensor) and obj.grad_fn is not None:
                    count += 1
            except Exception:  # objects that fail on isinstance/attribute access during gc
                continue
    return count


def snapshot(trainer: pl.Trainer, pl_module: pl.LightningModule, count_graphs: bool = False) -> dict[str, Any]:
    """Everything the callback must leave alone, copied."""
    modules = list(pl_module.named_modules())
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    return {
        "params": {name: p.detach().clone() for name, p in pl_module.named_parameters()},
        "buffers": {name: b.detach().clone() for name, b in pl_module.named_buffers()},
        "grads": {
            name: (p.grad, None if p.grad is None else p.grad.detach().clone())
            for name, p in pl_module.named_parameters()
        },
        "requires_grad": {name: p.requires_grad for name, p in pl_module.named_parameters()},
        "training": {name: m.training for name, m in modules},
        "hooks": {
            name: tuple(len(getattr(m, attr)) for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
            for name, m in modules
        },
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),  # noqa: NPY002 (the legacy global state is what must not change)
        "python_rng": random.getstate(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
        "graphs": count_graph_tensors() if count_graphs else None,
    }


def _same_nested(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(_same_nested(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Names of the snapshot entries that changed (grads: same tensor object and same values, or both None)."""
    changed = [key for key in before if key != "grads" and not _same_nested(before[key], after[key])]
    for name, (grad, values) in before["grads"].items():
        grad_after, values_after = after["grads"][name]
        if grad is not grad_after or not _same_nested(values, values_after):
            changed.append(f"grad:{name}")
    return changed


class Probe(pl.Callback):
    """Placed before and after EVETCallback: ``before`` snapshots, ``after`` records what changed in between."""

    def __init__(self, role: str, partner: Probe | None = None, count_graphs: bool = False) -> None:
        self.role = role
        self.partner = partner
        self.count_graphs = count_graphs
        self.state: dict[str, Any] | None = None
        self.states: list[dict[str, Any]] = []
        self.changes: list[list[str]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        state = snapshot(trainer, pl_module, self.count_graphs)
        if self.role == "before":
            self.state = state
            self.states.append(state)
            return
        assert self.partner is not None and self.partner.state is not None
        self.changes.append(differences(self.partner.state, state))


def probes(count_graphs: bool = False) -> tuple[Probe, Probe]:
    before = Probe("before", count_graphs=count_graphs)
    return before, Probe("after", before, count_graphs=count_graphs)


def statm_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssRecorder(pl.Callback):
    """Resident memory after every (non-sanity) validation epoch.

    The allocator returns memory to the system in bursts, so single readings jump by several MB either way; a
    leak shows as a rising floor: compare the minimum over a late window with the minimum over an early one.
    """

    def __init__(self) -> None:
        self.rss: list[int] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.rss.append(statm_rss_bytes())

    def floor_growth(self, early: slice, late: slice) -> int:
        return min(self.rss[late]) - min(self.rss[early])


def iterate_tensors(obj: Any, seen: set[int] | None = None) -> Iterator[Tensor]:
    """Every tensor reachable from ``obj`` through attributes, dicts, lists, tuples and dataclasses."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iterate_tensors(value, seen)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from iterate_tensors(value, seen)
    elif isinstance(obj, nn.Module) or hasattr(obj, "__dict__"):
        yield from iterate_tensors(vars(obj), seen)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory: ``records`` is a list of ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def epochs_with(self, key: str) -> list[int]:
        return [int(metrics["epoch"]) for _, metrics in self.records if key in metrics]
