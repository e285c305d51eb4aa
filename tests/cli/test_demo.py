"""``evet-lightning demo`` writes what its help says: metrics.json, plot, heatmaps, checkpoint, W&B offline run."""

from __future__ import annotations

import json

import pytest
import torch

from evet_lightning.cli import main
from evet_lightning.evaluation import DEMO_EPOCH_KEYS
from evet_lightning.models import MultiLabelShapesClassifier, ShapesClassifier
from tests.cli.conftest import TINY_DEMO, DemoRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAIRED = ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")


def test_demo_succeeds_and_prints_one_row_per_epoch(demo_run: DemoRun) -> None:
    assert demo_run.exit_code == 0
    rows = [line for line in demo_run.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1"]
    # every paired metric is shown as "original -> EVET"
    assert all(row.count("->") == len(PAIRED) for row in rows)


def test_metrics_json_has_the_documented_keys_per_epoch(demo_run: DemoRun) -> None:
    payload = json.loads((demo_run.output / "metrics.json").read_text())
    epochs = payload["epochs"]
    assert [record["epoch"] for record in epochs] == [0, 1]
    expected = {*DEMO_EPOCH_KEYS, "evet/win", "evet/average_difference"}
    expected |= {f"evet/{variant}/{name}" for variant in ("original", "evet") for name in PAIRED}
    for record in epochs:
        assert expected <= set(record), expected - set(record)
        for name in PAIRED:
            assert 0.0 <= record[f"evet/evet/{name}"] <= 1.0
    assert epochs[1]["global_step"] > epochs[0]["global_step"] > 0
    assert payload["config"]["num_samples"] == 4 and payload["config"]["logger"] == "wandb"


def test_printed_table_matches_metrics_json(demo_run: DemoRun) -> None:
    epochs = json.loads((demo_run.output / "metrics.json").read_text())["epochs"]
    last = next(line for line in demo_run.stdout.splitlines() if line.startswith("| 1 |"))
    cells = [cell.strip() for cell in last.strip("|").split("|")]
    drop = f"{100 * epochs[1]['evet/original/average_drop']:.1f} -> {100 * epochs[1]['evet/evet/average_drop']:.1f}"
    assert cells[2] == drop
    assert cells[-2] == f"{100 * epochs[1]['evet/win']:.1f}"
    assert cells[-1] == f"{epochs[1]['evet/alpha']:.3f}"  # alpha="auto": the alpha the callback chose


def test_demo_chooses_alpha_by_default(demo_run: DemoRun) -> None:
    payload = json.loads((demo_run.output / "metrics.json").read_text())
    config = payload["config"]
    assert (config["alpha"], config["alpha_grid"], config["alpha_objective"]) == (
        "auto",
        [0.0, 0.1, 0.25, 0.5, 1.0],
        "faithful_boost",
    )
    for record in payload["epochs"]:
        assert record["evet/alpha"] in {(a + b) / 2 for a in config["alpha_grid"] for b in config["alpha_grid"]}
    assert "alpha (chosen)" in demo_run.stdout


def test_plot_heatmaps_and_checkpoint(demo_run: DemoRun) -> None:
    plot = demo_run.output / "metrics.png"
    assert plot.read_bytes()[:8] == PNG_SIGNATURE and plot.stat().st_size > 10_000
    sheets = sorted(path.name for path in (demo_run.output / "heatmaps").glob("*.png"))
    assert sheets == ["epoch_000.png", "epoch_001.png"]
    model = ShapesClassifier.load_from_checkpoint(demo_run.output / "model.ckpt", map_location="cpu")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    assert model.hparams["width"] == 4


def test_wandb_offline_run_holds_the_heatmaps(demo_run: DemoRun) -> None:
    runs = list((demo_run.output / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no W&B run file"
    # the callback logged its heatmaps to W&B (media written next to the offline run)
    assert list(runs[0].glob("files/media/images/evet/*.png"))


def test_csv_logger_gets_the_callback_heatmap_files(tmp_path: pytest.TempPathFactory) -> None:
    output = tmp_path / "csv_demo"  # type: ignore[operator]
    args = [arg if arg != "2" else "1" for arg in TINY_DEMO]  # one epoch
    assert main(["demo", "--output", str(output), "--logger", "csv", *args]) == 0
    files = list((output / "csv").glob("version_*/evet_heatmaps/epoch_000/*.png"))
    assert len(files) == 4  # log_images = num_samples = 4
    assert (output / "csv" / "version_0" / "metrics.csv").is_file()


class _Started(Exception):
    """Raised by the recording ``wandb.init`` instead of starting a run."""


def test_the_demo_logger_passes_no_anonymous_setting_to_wandb(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: Lightning passes `anonymous` to `wandb.init`, and W&B warns that the setting has no effect on every
    demo run."""
    import wandb

    from evet_lightning.evaluation import DemoConfig
    from evet_lightning.evaluation.demo import _demo_logger

    calls: list[dict[str, object]] = []

    def record(**kwargs: object) -> None:
        calls.append(kwargs)
        raise _Started

    monkeypatch.setattr(wandb, "init", record)
    monkeypatch.setattr(wandb, "run", None)
    logger = _demo_logger(DemoConfig(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(_Started):
        logger.experiment  # noqa: B018 (the property starts the run)
    assert len(calls) == 1 and calls[0]["project"] == "evet-lightning"
    assert "anonymous" not in calls[0]


def test_multilabel_demo_prints_pairs_f1_map_and_the_last_epochs_intervals(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """``demo --task multilabel``: multi-object shapes, BCE, the callback explaining every positive class; the table
    shows macro F1, mAP and the pairs, and the last epoch's differences come with the logged intervals."""
    output = tmp_path / "multilabel"  # type: ignore[operator]
    assert main(["demo", "--task", "multilabel", "--output", str(output), "--logger", "csv", *TINY_DEMO]) == 0
    stdout = capsys.readouterr().out
    epochs = json.loads((output / "metrics.json").read_text())["epochs"]
    last = epochs[-1]
    # 4 images of 2-3 objects each: 8 to 12 (image, class) pairs, logged as evet/num_pairs
    assert 8 <= last["evet/num_pairs"] <= 12
    assert 0.0 <= last["val_f1"] <= 1.0 and 0.0 <= last["val_map"] <= 1.0
    header = next(line for line in stdout.splitlines() if line.startswith("| epoch"))
    assert "val F1 (%)" in header and "val mAP (%)" in header and "| pairs |" in header and "val acc" not in header
    row = next(line for line in stdout.splitlines() if line.startswith("| 1 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    expected = [f"{100 * last['val_f1']:.1f}", f"{100 * last['val_map']:.1f}", str(int(last["evet/num_pairs"]))]
    assert cells[1:4] == expected
    drop = [100 * last[f"evet/diff/average_drop{end}"] for end in ("", "_low", "_high")]
    line = next(line for line in stdout.splitlines() if line.strip().startswith("average drop (%)"))
    assert f"EVET - original {drop[0]:+.1f} [95% interval {drop[1]:+.1f}, {drop[2]:+.1f}]" in line
    assert any(line.strip().startswith("energy pointing game (%)") for line in stdout.splitlines())
    assert any(line.strip().startswith("stability index") for line in stdout.splitlines())
    assert sorted(path.name for path in (output / "heatmaps").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    model = MultiLabelShapesClassifier.load_from_checkpoint(output / "model.ckpt", map_location="cpu")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
