"""``evaluate`` over several processes and resumed after a kill: the per-sample file is the source of the tables,
so both give the tables of one uninterrupted single-process run (docs/design.md, decisions 41-44)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from evet_lightning.cli import main
from evet_lightning.evaluation import runner
from evet_lightning.evaluation.resume import MethodPlan, plan_method
from evet_lightning.evaluation.sample_file import SampleFileWriter, read_rows, sample_files, write_method_state

TINY = "tests.cli._factories:tiny_cnn"
# 8 samples in batches (and callback chunks) of 2; alpha calibrated on the first 2, later samples at the pooled choice
RUN = ["evaluate", "--no-progress", "--model", TINY, "--image-size", "32", "--num-samples", "8", "--batch-size", "2"]
RUN += ["--max-batch-size", "2", "--alpha-calibration", "2"]
RUN += ["--no-deletion-insertion", "--no-paper-stability", "--heatmaps", "0"]
METHODS = ["--methods", "Gradient,GradCAM"]


def tables_of(folder: Path) -> list[dict[str, Any]]:
    payload = json.loads((folder / "tables.json").read_text())
    assert payload["complete"] is True
    return list(payload["tables"])


def assert_same_tables(tables: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [table["key"] for table in tables] == [table["key"] for table in expected]
    for table, reference in zip(tables, expected, strict=True):
        for row, reference_row in zip(table["rows"], reference["rows"], strict=True):
            assert (row["metric"], row["variant"]) == (reference_row["metric"], reference_row["variant"])
            assert row["values"] == reference_row["values"] and row["intervals"] == reference_row["intervals"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted")
    assert main([*RUN, *METHODS, "--output", str(output)]) == 0
    return output


@pytest.mark.timeout(240)
def test_two_processes_give_the_tables_of_one(uninterrupted: Path, tmp_path: Path) -> None:
    # one method (one spawn); the tables are built from these values and the rows' scores alone
    assert main([*RUN, "--methods", "GradCAM", "--output", str(tmp_path), "--devices", "2"]) == 0
    payload, reference = (json.loads((folder / "tables.json").read_text()) for folder in (tmp_path, uninterrupted))
    values, expected = payload["validate"]["GradCAM"], reference["validate"]["GradCAM"]
    assert sorted(values) == sorted(expected)
    for key, value in values.items():  # another process explains a sample in another batch: float32 round-off
        assert value == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert payload["alpha_by_method"]["GradCAM"] == reference["alpha_by_method"]["GradCAM"]
    table5 = next(table for table in payload["tables"] if table["key"] == "table5")["rows"][0]["values"]
    assert table5 == pytest.approx([expected[f"evet/{variant}/stability_index"] for variant in ("original", "evet")])
    parts = sorted(path.name for path in sample_files(tmp_path / "samples", "GradCAM"))
    assert parts == ["GradCAM.0.rank0.csv", "GradCAM.0.rank1.csv"]  # each process wrote its own rows
    assert read_rows(sample_files(tmp_path / "samples", "GradCAM"))["index"].tolist() == list(range(8))


class KilledAtBatch(SampleFileWriter):
    """Writes its batch's rows, then Ctrl+C after batch 2 of GradCAM's first attempt (6 of 8 samples recorded)."""

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self.method == "GradCAM" and self.attempt == 0 and batch_idx == 2:
            raise KeyboardInterrupt


def test_a_killed_run_resumed_gives_the_uninterrupted_tables(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "SampleFileWriter", KilledAtBatch)
    assert main([*RUN, *METHODS, "--output", str(tmp_path)]) == 130
    assert "--resume continues" in capsys.readouterr().err
    samples = tmp_path / "samples"
    # the killed method's file is readable up to its last flushed batch: samples 0-5, as the full run has them
    killed = read_rows(sample_files(samples, "GradCAM"))
    full = read_rows(sample_files(uninterrupted / "samples", "GradCAM"))
    assert killed["index"].tolist() == list(range(6))
    for name, values in killed.items():
        assert values.tolist() == full[name][:6].tolist(), name
    assert main([*RUN, *METHODS, "--output", str(tmp_path), "--resume"]) == 0
    assert_same_tables(tables_of(tmp_path), tables_of(uninterrupted))
    # the finished method did not run again; the killed one explained only its 2 remaining samples
    assert [path.name for path in sample_files(samples, "Gradient")] == ["Gradient.0.rank0.csv"]
    assert read_rows([samples / "GradCAM.1.rank0.csv"])["index"].tolist() == [6, 7]
    merged = read_rows([samples / "GradCAM.csv"])  # one file per method, every sample once, in index order
    resumed = read_rows(sample_files(samples, "GradCAM"))
    assert merged["index"].tolist() == list(range(8))
    for name, values in merged.items():
        assert values.tolist() == resumed[name].tolist() == full[name].tolist(), name


def test_resume_with_other_options_is_a_usage_error(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main([*RUN, "--methods", "GradCAM", "--output", str(uninterrupted), "--resume", "--seed", "3"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume: the options differ" in line and "methods" in line and "seed: recorded 2021, now 3" in line
    assert main([*RUN, *METHODS, "--output", str(tmp_path / "new"), "--resume"]) == 2
    assert "no recorded run" in capsys.readouterr().err


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    part = tmp_path / "GradCAM.0.rank0.csv"
    part.write_text("index,target,finite,Y,correct\n3,1,1,0.25,1\n1,0,0,nan,\n2,1,1,0.")  # killed mid-write
    rows = read_rows([part])
    assert rows["index"].tolist() == [1, 3] and rows["target"].tolist() == [0, 1]
    assert rows["finite"].tolist() == [False, True] and rows["correct"].tolist() == [-1, 1]
    assert rows["Y"][1].item() == 0.25 and rows["Y"][0].isnan()


def _part(folder: Path, name: str, indices: list[int]) -> None:
    lines = ["index,target,finite,Y,alpha,correct", *(f"{index},0,1,0.5,0.25,1" for index in indices)]
    (folder / name).write_text("\n".join(lines) + "\n")


def test_what_a_resume_runs_again(tmp_path: Path) -> None:
    """Per method: complete -> nothing; calibrated -> the missing samples at the pooled alpha; calibration not
    recorded, or a calibration sample's row missing -> start over; a fixed alpha -> the missing samples."""
    calibration = {"alpha": 0.25, "folds": [0.1, 0.5], "curve": {"num_samples": 2}}
    _part(tmp_path, "A.0.rank0.csv", [0, 1, 2])
    write_method_state(tmp_path, "A", calibration=calibration, complete=False)
    assert plan_method(tmp_path, "A", 6, fixed_alpha=False) == MethodPlan([3, 4, 5], 1, 0.25)
    write_method_state(tmp_path, "A", complete=True)
    assert plan_method(tmp_path, "A", 6, fixed_alpha=False).indices == []
    _part(tmp_path, "B.0.rank0.csv", [0, 2])  # rank 1 died before it wrote calibration sample 1
    write_method_state(tmp_path, "B", calibration=calibration, complete=False)
    assert plan_method(tmp_path, "B", 6, fixed_alpha=False) == MethodPlan(list(range(6)), 0)
    assert sample_files(tmp_path, "B") == [] and not (tmp_path / "B.json").exists()  # its rows are dropped
    _part(tmp_path, "C.0.rank0.csv", [0, 1, 2, 3])  # killed before the calibration was recorded
    assert plan_method(tmp_path, "C", 6, fixed_alpha=False) == MethodPlan(list(range(6)), 0)
    _part(tmp_path, "D.0.rank0.csv", [0, 1, 2, 3])
    assert plan_method(tmp_path, "D", 6, fixed_alpha=True) == MethodPlan([4, 5], 1)
    assert plan_method(tmp_path, "E", 6, fixed_alpha=False) == MethodPlan(list(range(6)), 0)  # never started
