"""Sharded training (FSDP2: ``ModelParallelStrategy`` + ``fully_shard``) on 2 CPU processes (gloo): every rank
makes the same forward passes, the logged values equal one unsharded process, a mismatch is an error, not a hang.

One spawn of 2 processes runs every case (each spawn costs seconds). The processes are started here, with the
environment Lightning reads (``LOCAL_RANK`` set: the strategy does not launch processes itself, whose launcher
would re-run ``sys.argv``, i.e. pytest); the strategy's process group has a 30 s timeout, the join a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

from evet_lightning import EVETCallback
from evet_lightning.callbacks.sampling import SampleBuffer, agree_across_ranks
from evet_lightning.models import SmallCNN
from tests._helpers.models import NUM_CLASSES
from tests.callbacks._modules import (
    CountForwards,
    DumpMetrics,
    forwards_path,
    multi_shapes_loader,
    rank_metrics_path,
    shapes_loader,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

#: (name, num_samples, validation set size, loader batch size, callback options)
CASES: list[tuple[str, int, int, int, dict[str, Any]]] = [
    ("even_8_of_8", 8, 8, 4, {"alpha": 0.5}),
    ("five_at_chunk_8", 5, 8, 2, {"alpha": 0.5, "max_batch_size": 8}),
    ("one_sample", 1, 4, 2, {"alpha": 0.5}),
    ("32_of_7_auto_alpha", 32, 7, 2, {"max_batch_size": 8}),
    ("deletion_insertion", 3, 4, 2, {"deletion_insertion": True, "deletion_steps": 4, "stability_transforms": []}),
    # multi-hot labels: rank 0's images hold 2, 2, 3 pairs, rank 1's 3, 3 and a padding image (pairs padded)
    ("multilabel_pairs_5_of_7", 5, 7, 2, {"task": "multilabel", "alpha": 0.5, "max_batch_size": 4}),
]


class ShardedClassifier(pl.LightningModule):
    """A width-4 SmallCNN; ``configure_model`` shards each conv block and the network with ``fully_shard``
    when the strategy has a device mesh (``ModelParallelStrategy``), and leaves it whole otherwise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = SmallCNN(num_classes=NUM_CLASSES, width=4)

    def configure_model(self) -> None:
        mesh = getattr(self, "device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        for block in self.model.features:
            if any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh["data_parallel"])
        fully_shard(self.model, mesh=mesh["data_parallel"])

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]), sync_dist=True)


def _run_case(directory: Path, case: tuple[str, int, int, int, dict[str, Any]], sharded: bool) -> dict[str, Any]:
    name, num_samples, val_size, batch_size, options = case
    out = directory / f"{name}_{'sharded' if sharded else 'single'}"
    out.mkdir(parents=True, exist_ok=True)
    strategy: Any = "auto"
    if sharded:
        strategy = pl.strategies.ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=30)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2 if sharded else 1,
        strategy=strategy,
        callbacks=[
            CountForwards(str(out)),
            EVETCallback(num_samples=num_samples, log_images=1, **options),
            DumpMetrics(str(out)),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    model = ShardedClassifier()
    loader = (multi_shapes_loader if options.get("task") == "multilabel" else shapes_loader)(
        val_size, batch_size=batch_size
    )
    trainer.validate(model, dataloaders=loader, verbose=False)
    rank = trainer.global_rank
    dtensors = None
    if sharded:
        from torch.distributed.tensor import DTensor

        # The blocks' parameters stay sharded; the root's own (the classifier) are left unsharded after a forward
        # by FSDP2 itself (the root does not reshard after forward), with or without the callback.
        dtensors = all(isinstance(parameter, DTensor) for parameter in model.model.features.parameters())
        grads = any(parameter.grad is not None for parameter in model.parameters())
        with open(out / f"params_rank{rank}.json", "w") as handle:
            json.dump({"dtensors": dtensors, "grads": grads}, handle)
    return {"out": str(out)}


class CPUFSDPStrategy(pl.strategies.FSDPStrategy):
    """Lightning's FSDP1 strategy, which refuses ``accelerator="cpu"`` only for its exact type; FSDP1 runs on the
    CPU with gloo when given ``device_id=cpu`` (Lightning passes the device index, ``None`` on a CPU)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=torch.device("cpu"), **self.kwargs)


#: The FSDP1 case, also run on one process for the reference values.
FSDP1_CASE: tuple[str, int, int, int, dict[str, Any]] = ("fsdp1", 5, 8, 2, {"alpha": 0.5})


def _fsdp1_case(directory: Path, rank: int) -> None:
    """FSDP1 with an auto-wrap policy (each conv block a unit): the callback runs the root wrapper, every unit
    ends IDLE, and a checkpoint saved right after validation works."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    out = directory / "fsdp1_sharded"
    out.mkdir(parents=True, exist_ok=True)
    strategy = CPUFSDPStrategy(auto_wrap_policy=ModuleWrapPolicy({torch.nn.Sequential}), timeout=timedelta(seconds=30))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=[
            CountForwards(str(out)),
            EVETCallback(num_samples=5, log_images=1, alpha=0.5),
            DumpMetrics(str(out)),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    trainer.validate(
        ShardedClassifier(), dataloaders=shapes_loader(FSDP1_CASE[2], batch_size=FSDP1_CASE[3]), verbose=False
    )
    trainer.save_checkpoint(str(out / "after_validation.ckpt"))
    (out / f"checkpoint_rank{rank}.txt").write_text("saved")


def _mismatch_case(directory: Path, rank: int) -> None:
    """Rank 1 holds images of another size: the agreement raises on every rank instead of hanging."""
    buffer = SampleBuffer(capacity=2, rank=rank, world_size=2, total=4)
    size = 16 if rank == 0 else 12
    buffer.add(torch.zeros(2, 3, size, size), torch.zeros(2, dtype=torch.long), None)
    try:
        agree_across_ranks(buffer, 8)
        message = ""
    except RuntimeError as error:
        message = str(error)
    (directory / f"mismatch_rank{rank}.txt").write_text(message)
    # A rank whose shard is empty is padded with zeros of the other rank's shape; chunk size: the smallest.
    buffer = SampleBuffer(capacity=3, rank=rank, world_size=2, total=5)
    if rank == 0:
        buffer.add(torch.ones(3, 3, 8, 8), None, None)
    chunk = agree_across_ranks(buffer, 4 if rank == 0 else 2)
    padding = torch.cat([batch.padding_mask for batch in buffer.batches]).tolist()
    (directory / f"padded_rank{rank}.json").write_text(
        json.dumps({"count": buffer.count, "chunk": chunk, "padding": padding, "runs": buffer.runs()})
    )


def _worker(local_rank: int, directory: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(local_rank),
        LOCAL_RANK=str(local_rank), NODE_RANK="0",
    )  # fmt: skip
    torch.set_num_threads(1)
    path = Path(directory)
    try:
        for case in CASES:
            _run_case(path, case, sharded=True)
        _mismatch_case(path, local_rank)
        _fsdp1_case(path, local_rank)
    except BaseException:
        (path / f"error_rank{local_rank}.txt").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


@pytest.mark.timeout(300)
def test_fsdp2_two_processes_equal_work_and_single_process_values(tmp_path: Path) -> None:
    """FSDP2: even split, 5 samples at chunk 8, one sample, 32 of 7 with alpha='auto', deletion/insertion, multi-label
    pairs (the ranks' images hold different numbers of pairs): DTensor
    parameters, no ``.grad`` left, equal forward counts on both ranks, values equal to one process. FSDP1 through
    Lightning (auto-wrapped blocks): run through the root wrapper, equal forward counts, single-process values, and
    a checkpoint saved right after validation works. A shape mismatch raises a RuntimeError naming both ranks; an
    empty rank is padded with zeros to the common count."""
    context = mp.start_processes(
        _worker, args=(str(tmp_path), _free_port()), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    try:
        while not context.join(timeout=1.0):
            assert time.monotonic() < deadline, "the sharded run hung"
    except mp.ProcessRaisedException:
        errors = [path.read_text() for path in tmp_path.glob("error_rank*.txt")]
        pytest.fail("a sharded worker failed:\n" + "\n".join(errors))
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    for case in CASES:
        single_dir = _run_case(tmp_path, case, sharded=False)["out"]
        sharded_dir = str(tmp_path / f"{case[0]}_sharded")
        single = {
            key: value for key, value in _read(rank_metrics_path(single_dir, 0)).items() if key.startswith("evet/")
        }
        forwards = [_read(forwards_path(sharded_dir, rank)) for rank in range(2)]
        assert forwards[0] == forwards[1] and forwards[0]["calls"] > 0, (case[0], forwards)
        for rank in range(2):
            params = _read(os.path.join(sharded_dir, f"params_rank{rank}.json"))
            assert params == {"dtensors": True, "grads": False}, (case[0], params)
            sharded = {
                key: value
                for key, value in _read(rank_metrics_path(sharded_dir, rank)).items()
                if key.startswith("evet/")
            }
            assert set(sharded) == set(single), case[0]
            assert sharded == pytest.approx(single, abs=1e-5), case[0]
    fsdp1_single = _run_case(tmp_path, FSDP1_CASE, sharded=False)["out"]
    single = {key: value for key, value in _read(rank_metrics_path(fsdp1_single, 0)).items() if key.startswith("evet/")}
    fsdp1_dir = str(tmp_path / "fsdp1_sharded")
    forwards = [_read(forwards_path(fsdp1_dir, rank)) for rank in range(2)]
    assert forwards[0] == forwards[1] and forwards[0]["calls"] > 0, forwards
    for rank in range(2):
        assert (tmp_path / "fsdp1_sharded" / f"checkpoint_rank{rank}.txt").read_text() == "saved"
        sharded = {
            key: value for key, value in _read(rank_metrics_path(fsdp1_dir, rank)).items() if key.startswith("evet/")
        }
        assert sharded == pytest.approx(single, abs=1e-5)
    for rank in range(2):
        message = (tmp_path / f"mismatch_rank{rank}.txt").read_text()
        assert "rank 0 has 2 x [3, 16, 16]" in message and "rank 1 has 2 x [3, 12, 12]" in message, message
        padded = _read(str(tmp_path / f"padded_rank{rank}.json"))
        assert padded["count"] == 3 and padded["chunk"] == 2, padded
        assert padded["runs"] == [[[3, 8, 8], "torch.float32", False, False, 3]], padded
        assert padded["padding"] == ([False, False, False] if rank == 0 else [True, True, True]), padded


def test_fsdp1_rejects_a_submodule_at_setup() -> None:
    """Under FSDP1 a submodule cannot run outside the root wrapper: ``model=`` is a ValueError in ``setup``."""
    trainer = SimpleNamespace(strategy=CPUFSDPStrategy(), world_size=2)
    with pytest.raises(ValueError, match="Expected `model=None` under FSDPStrategy"):
        EVETCallback(model="model").setup(trainer, ShardedClassifier(), "fit")  # type: ignore[arg-type]
