"""``evaluate`` on multi-label data (VOC, COCO): (image, class) pairs, tables with micro means (over pairs, what the
callback logs) and per-class macro means (decisions 59, 60), both computed from the per-pair rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from evet_lightning.cli import main
from evet_lightning.evaluation import runner
from evet_lightning.evaluation.data import load_data
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.row_metrics import metrics_from_rows
from evet_lightning.evaluation.runner import EvaluationModule, evaluation_callback
from evet_lightning.evaluation.sample_file import SampleFileWriter, method_state, read_rows, sample_files
from evet_lightning.saliency.settings import EVETSettings
from tests._helpers.disk_datasets import make_coco, make_voc
from tests.cli._factories import coco_cnn, voc_cnn
from tests.cli.test_errors import assert_usage_error

FAST = ["--methods", "GradCAM", "--no-deletion-insertion", "--no-paper-stability", "--no-progress"]
FAST += ["--image-size", "16"]
METRICS = ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_coco_tables_hold_micro_and_macro_means_of_the_pairs(tmp_path: Path) -> None:
    """a.png holds a cat and a dog, b.png a person, c.png a cat: 4 pairs of 3 images, the cat twice. Micro means
    weigh the 4 pairs alike; the macro mean is (mean of the cat's 2 pairs + person + dog) / 3, checked by hand."""
    coco = make_coco(tmp_path / "coco")
    output = tmp_path / "out"
    data = ["--data", f"coco:{coco.images},{coco.annotations}", "--model", "tests.cli._factories:coco_cnn"]
    argv = ["evaluate", *data, *FAST, "--alpha", "0.5", "--heatmaps", "1", "--output", str(output)]
    assert main(argv) == 0
    rows = _rows(output / "samples" / "GradCAM.0.rank0.csv")
    assert [(int(row["index"]), int(row["target"])) for row in rows] == [(0, 1), (0, 2), (1, 0), (2, 1)]
    payload = json.loads((output / "tables.json").read_text())
    assert payload["settings"]["task"] == "multilabel" and payload["num_pairs"] == 4
    logged, means = payload["validate"]["GradCAM"], payload["class_means"]["GradCAM"]
    assert logged["evet/num_pairs"] == 4.0
    assert (means["num_pairs"], means["num_images"], means["num_classes"]) == (4, 3, 3)
    assert {name: record["pairs"] for name, record in means["per_class"].items()} == {"person": 1, "cat": 2, "dog": 1}
    macro_table = next(table for table in payload["tables"] if table["key"] == "macro")
    shown, label = {}, ""
    for row in macro_table["rows"]:  # continuation rows have an empty label
        label = row["metric"] or label
        shown[label, row["variant"]] = row["values"][0]
    for variant in ("original", "evet"):
        for name in METRICS:
            values = [float(row[f"{variant}/{name}"]) for row in rows]
            micro = sum(values) / 4
            cat, dog, person = (values[0] + values[3]) / 2, values[1], values[2]
            macro = (cat + dog + person) / 3
            assert logged[f"evet/{variant}/{name}"] == pytest.approx(micro, abs=1e-12)
            assert means["macro"][f"evet/{variant}/{name}"] == pytest.approx(macro, abs=1e-12)
            assert means["per_class"]["cat"][f"evet/{variant}/{name}"] == pytest.approx(cat, abs=1e-12)
        drop = [float(row[f"{variant}/average_drop"]) for row in rows]
        expected = 100 * ((drop[0] + drop[3]) / 2 + drop[1] + drop[2]) / 3
        assert shown["Average drop (%)", "Original" if variant == "original" else "w/ EVET"] == pytest.approx(expected)
    wins = [float(row["evet/O"]) > float(row["original/O"]) for row in rows]
    assert means["macro"]["evet/win"] == pytest.approx(((wins[0] + wins[3]) / 2 + wins[1] + wins[2]) / 3)
    correct = [int(row["correct"]) for row in rows]  # the model's decision on the pair's class is the label's
    model = coco_cnn().eval()
    data = load_data(f"coco:{coco.images},{coco.annotations}", EvaluationModel(model, "coco_cnn"), 3, image_size=16)
    with torch.no_grad():
        logits = model(torch.stack([data.dataset[index][0] for index in range(3)]))
    labels = torch.stack([data.dataset[index][1] for index in range(3)])
    pairs = [(int(row["index"]), int(row["target"])) for row in rows]
    assert correct == [int(bool(logits[i, k] > 0) == bool(labels[i, k] > 0.5)) for i, k in pairs]
    assert payload["accuracy"] == pytest.approx(sum(correct) / 4)
    markdown = (output / "tables.md").read_text()
    assert "3 images, 4 (image, class) pairs" in markdown and "**Per-class means (macro)" in markdown
    assert "mean over the (image, class) pairs (micro)" in markdown
    assert (output / "heatmaps" / "GradCAM.png").is_file()


def test_voc_runs_with_void_borders_and_the_paper_draw(tmp_path: Path) -> None:
    """``voc:ROOT`` end to end with ``--num-samples 2 --seed 5``: the drawn images' positive classes are the pairs."""
    voc = make_voc(tmp_path / "voc")
    output = tmp_path / "out"
    data = ["--data", f"voc:{voc.root}", "--model", "tests.cli._factories:voc_cnn", "--num-samples", "2"]
    argv = ["evaluate", *data, "--seed", "5", *FAST, "--alpha", "0.5", "--heatmaps", "0", "--output", str(output)]
    assert main(argv) == 0
    payload = json.loads((output / "tables.json").read_text())
    rows = _rows(output / "samples" / "GradCAM.0.rank0.csv")
    images = {int(row["index"]) for row in rows}
    assert images == {0, 1} and payload["num_samples"] == 2
    assert payload["num_pairs"] == len(rows) == payload["class_means"]["GradCAM"]["num_pairs"]
    for row in rows:
        assert 0.0 <= float(row["evet/energy_pointing_game"]) <= 1.0
    assert {table["key"] for table in payload["tables"]} >= {"table1", "table2", "table5", "macro"}


def test_rows_give_what_the_callback_logs_over_pairs(tmp_path: Path) -> None:
    """With ``alpha="auto"`` and 2 calibration images of 3 (the third image's pairs use the pooled alpha), every
    value computed from the per-pair rows equals the one the callback logged."""
    voc = make_voc(tmp_path / "voc")
    model = EvaluationModel(voc_cnn(), "voc_cnn")
    data = load_data(f"voc:{voc.root}", model, 3, image_size=16)
    settings = EVETSettings(task="multilabel", cam="GradCAM")
    callback = evaluation_callback(settings, 3, paper_stability=False, alpha_calibration=2)
    writer = SampleFileWriter(tmp_path / "samples", "GradCAM", 0, range(3), None)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, callbacks=[callback, writer], enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    (logged,) = trainer.validate(EvaluationModule(model.module), DataLoader(data.dataset, batch_size=2), verbose=False)
    rows = read_rows(sample_files(tmp_path / "samples", "GradCAM"))
    folds = method_state(tmp_path / "samples", "GradCAM")["calibration"]["folds"]
    computed = metrics_from_rows(rows, folds=folds, calibration=2)
    assert rows["index"].tolist() == [0, 0, 1, 2]  # 3 images, 4 pairs (the crop cuts the tvmonitor out)
    keys = {key for key in logged if key.startswith("evet/") and key != "evet/num_pairs"}
    assert keys and keys <= set(computed), keys - set(computed)
    for key in sorted(keys):
        assert computed[key] == pytest.approx(float(logged[key]), abs=1e-6), key
    assert float(logged["evet/num_pairs"]) == 4.0
    assert torch.equal(rows["finite"], torch.ones(4, dtype=torch.bool))


def test_multilabel_task_on_single_label_data_is_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", "tests.cli._factories:tiny_cnn", "--data", "synthetic", "--task", "multilabel"]
    assert_usage_error(capsys, [*argv, *FAST, "--output", str(tmp_path / "out")], "--task multilabel needs multi-label")


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--task", "multiclass"], ["--task multiclass explains one class per image", "use --task multilabel"]),
        (["--model", "tests.cli._factories:tiny_cnn"], ["has 20 classes, but tests.cli._factories:tiny_cnn has 4"]),
    ],
)
def test_multilabel_mistakes_are_exit_code_2(
    extra: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = make_voc(tmp_path / "voc")
    model = [] if "--model" in extra else ["--model", "tests.cli._factories:voc_cnn"]
    argv = ["evaluate", "--data", f"voc:{voc.root}", *model, *extra, *FAST, "--output", str(tmp_path / "out")]
    assert_usage_error(capsys, argv, *fragments)
    assert not (tmp_path / "out").exists()


class _KilledAfterBatch2(SampleFileWriter):
    """Ctrl+C after the third image (batch 2) of the first attempt, its rows written."""

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_validation_batch_end(trainer, *args, **kwargs)
        if self.attempt == 0 and self._seen == 3:
            raise KeyboardInterrupt


#: 4 VOC images of 20 x 20: aeroplane + person, aeroplane, dog, person (the first 2 hold 3 pairs).
_FOUR_IMAGES = (
    (20, 20, [(1, 3, 3, 9, 9), (15, 11, 11, 17, 17)]),
    (20, 20, [(1, 5, 5, 15, 15)]),
    (20, 20, [(12, 5, 5, 15, 15)]),
    (20, 20, [(15, 4, 4, 16, 16)]),
)


def test_a_killed_multilabel_run_resumes_from_its_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration set is 2 images holding 3 pairs: resume continues with the images not recorded (it does not
    wait for calibration *indices* 0-2), at the recorded alpha, and gives the uninterrupted tables."""
    voc = make_voc(tmp_path / "voc", layout=_FOUR_IMAGES)
    argv = ["evaluate", "--data", f"voc:{voc.root}", "--model", "tests.cli._factories:voc_cnn"]
    argv += [*FAST, "--heatmaps", "0", "--batch-size", "1", "--max-batch-size", "2", "--alpha-calibration", "2"]
    assert main([*argv, "--output", str(tmp_path / "full")]) == 0
    monkeypatch.setattr(runner, "SampleFileWriter", _KilledAfterBatch2)
    assert main([*argv, "--output", str(tmp_path / "killed")]) == 130
    samples = tmp_path / "killed" / "samples"
    recorded = read_rows(sample_files(samples, "GradCAM"))["index"].tolist()
    assert recorded[:3] == [0, 0, 1] and 3 not in recorded
    assert method_state(samples, "GradCAM")["calibration"]["images"] == 2
    assert main([*argv, "--output", str(tmp_path / "killed"), "--resume"]) == 0
    remaining = [index for index in range(4) if index not in recorded]
    assert sorted(set(read_rows([samples / "GradCAM.1.rank0.csv"])["index"].tolist())) == remaining
    resumed, full = (json.loads((tmp_path / name / "tables.json").read_text()) for name in ("killed", "full"))
    assert resumed["tables"] == full["tables"] and resumed["class_means"] == full["class_means"]
