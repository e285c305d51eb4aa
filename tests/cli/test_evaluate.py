"""``evet-lightning evaluate``: the paper's tables printed, written as JSON and CSV, and consistent with each other."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from evet_lightning.cli import main
from evet_lightning.evaluation import MethodRun, Timing, build_tables, direction_mark
from evet_lightning.evaluation.tables import interval_mark
from tests.cli.conftest import DemoRun

Cells = dict[tuple[str, str], list[str]]
MARKS = ("✓", "✗", "=", "≈")


def value_and_mark(cell: str) -> tuple[str, str]:
    """``"32.6 ✓"`` -> ``("32.6", "✓")``; ``"32.6 ≈ [-1.0, +0.5]"`` -> ``("32.6", "≈")``; ``"8.3"``: no mark."""
    value, _, rest = cell.partition(" ")
    mark = rest.split(" ")[0] if rest else ""
    assert mark in ("", *MARKS), cell
    return value, mark


def expected_mark(before: float, after: float, better: str, digits: int, interval: list[float] | None) -> str:
    """The mark of a cell: from its interval when the callback logged one (it must then be shown), else by value."""
    return direction_mark(before, after, better, digits) if interval is None else interval_mark(*interval, better)


def printed_tables(stdout: str) -> dict[str, Cells]:
    """``{"Table 1": {(metric, variant): [cells]}}`` from the printed markdown (metric carried down blank rows);
    cells keep their direction marks (``"32.6 ✓"``)."""
    tables: dict[str, Cells] = {}
    current: Cells | None = None
    for line in stdout.splitlines():
        if line.startswith("**Table "):
            current = tables.setdefault(line[2:].split(":")[0], {})
            metric, header_seen = "", False
        elif current is not None and line.startswith("| ") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not header_seen:
                header_seen = True
                width = 2 if cells[1] == "" else 1
                continue
            metric = cells[0] or metric
            variant = cells[1] if width == 2 else ""
            current[(metric, variant)] = cells[width:]
    return tables


def run_evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["evaluate", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def two_methods(demo_run: DemoRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Gradient and GradCAM on 8 synthetic images with the demo checkpoint."""
    import contextlib
    import io

    output = tmp_path_factory.mktemp("evaluate")
    stdout = io.StringIO()
    args = ["--model", f"demo:{demo_run.output / 'model.ckpt'}", "--methods", "Gradient,GradCAM"]
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["evaluate", "--no-progress", *args, "--num-samples", "8", "--deletion-steps", "4", "--output", str(output)]
        )
    assert code == 0
    return output, stdout.getvalue()


def test_prints_tables_1_2_5_6_without_score_cam(two_methods: tuple[Path, str]) -> None:
    _, stdout = two_methods
    tables = printed_tables(stdout)
    assert sorted(tables) == ["Table 1", "Table 2", "Table 5", "Table 6"]  # deletion / insertion: on by default
    assert list(tables["Table 1"]) == [
        ("Average drop (%)", "Original"),
        ("Average drop (%)", "w/ EVET"),
        ("Increase in confidence (%)", "Original"),
        ("Increase in confidence (%)", "w/ EVET"),
        ("Win (%)", "Original"),
        ("Win (%)", "w/ EVET"),
        ("Alpha (chosen)", "w/ EVET"),
    ]
    assert list(tables["Table 6"]) == [
        ("Deletion AUC", "Original"),
        ("Deletion AUC", "w/ EVET"),
        ("Insertion AUC", "Original"),
        ("Insertion AUC", "w/ EVET"),
    ]
    assert "**Table 6: deletion / insertion AUC (RISE, 4 steps)" in stdout
    assert "| Metric |  | Gradient | Grad-CAM |" in stdout
    protocols = ("Rotate 5 (unseen, Fig. 4b)", "Paper: mean of 4 (Fig. 4a)")
    assert list(tables["Table 5"]) == [
        (method, protocol) for method in ("Gradient", "Grad-CAM") for protocol in protocols
    ]
    assert "8 samples" in stdout and "alpha auto" in stdout


def test_every_evet_value_is_marked_with_its_direction(two_methods: tuple[Path, str]) -> None:
    output, stdout = two_methods
    printed = printed_tables(stdout)
    payload = json.loads((output / "tables.json").read_text())
    checked = checked_intervals = 0
    for table in payload["tables"]:
        cells = printed["Table " + table["key"][-1]]
        metric, previous = "", list[float]()
        for row in table["rows"]:
            metric = row["metric"] or metric
            digits = row["digits"] if row["digits"] is not None else table["digits"]
            marks = [value_and_mark(cell)[1] for cell in cells[(metric, row["variant"])]]
            intervals = row.get("intervals") or [None] * len(row["values"])
            if row["better"] is not None:
                expected = [
                    expected_mark(a, b, row["better"], digits, interval)
                    for a, b, interval in zip(previous, row["values"], intervals, strict=True)
                ]
                assert marks == expected and all(marks), (table["key"], metric)
                checked += len(marks)
                checked_intervals += sum(interval is not None for interval in intervals)
            elif table["better_column"] is not None:
                first, last = row["values"][0], row["values"][-1]
                mark = expected_mark(first, last, table["better_column"], digits, intervals[0])
                assert marks == ["", mark]
                checked += 1
                checked_intervals += intervals[0] is not None
            else:
                assert marks == [""] * len(marks), (table["key"], metric)  # Original rows, alpha: no mark
            previous = row["values"]
    # Table 1: 3 metrics, Table 2: 1, Table 6: 2, for 2 methods; Table 5: 2 methods x 2 protocols
    assert checked == 2 * (3 + 1 + 2) + 4
    # every metric but Win carries the logged interval: Table 1: 2, Table 2: 1, Table 6: 2 (2 methods); Table 5: 4
    assert checked_intervals == 2 * (2 + 1 + 2) + 4
    assert interval_mark(-1.0, 0.5, "lower") == "≈" and interval_mark(0.1, 0.5, "lower") == "✗"
    assert direction_mark(50.8, 32.6, "lower", 1) == "✓" and direction_mark(1.0, 2.0, "lower", 1) == "✗"
    assert direction_mark(0.1234, 0.1231, "higher", 3) == "=" and direction_mark(None, 1.0, "higher", 1) == ""


def test_json_csv_and_printed_tables_agree(two_methods: tuple[Path, str]) -> None:
    output, stdout = two_methods
    printed = printed_tables(stdout)
    payload = json.loads((output / "tables.json").read_text())
    with (output / "tables.csv").open() as handle:
        csv_values = {
            (row["table"], row["metric"], row["variant"], row["column"]): float(row["value"])
            for row in csv.DictReader(handle)
        }
    for table in payload["tables"]:
        cells = printed["Table " + table["key"][-1]]
        metric = ""
        for row in table["rows"]:
            metric = row["metric"] or metric
            digits = row["digits"] if row["digits"] is not None else table["digits"]
            shown = [value_and_mark(cell)[0] for cell in cells[(metric, row["variant"])]]
            assert shown == [f"{value:.{digits}f}" for value in row["values"]]
            for column, value in zip(table["columns"], row["values"], strict=True):
                assert csv_values[(table["key"], metric, row["variant"], column)] == pytest.approx(value)
    assert (output / "tables.md").read_text().strip() in stdout


def test_tables_are_the_values_trainer_validate_returned(two_methods: tuple[Path, str]) -> None:
    output, _ = two_methods
    payload = json.loads((output / "tables.json").read_text())
    tables = {table["key"]: table for table in payload["tables"]}
    for column, method in enumerate(["Gradient", "GradCAM"]):
        validate = payload["validate"][method]
        table1 = tables["table1"]["rows"]
        assert table1[0]["values"][column] == pytest.approx(100 * validate["evet/original/average_drop"])
        assert table1[1]["values"][column] == pytest.approx(100 * validate["evet/evet/average_drop"])
        assert table1[3]["values"][column] == pytest.approx(100 * validate["evet/evet/increase_in_confidence"])
        assert table1[5]["values"][column] == pytest.approx(100 * validate["evet/win"])
        # ties count for neither side
        assert table1[4]["values"][column] + table1[5]["values"][column] <= 100.0 + 1e-9
        epg = tables["table2"]["rows"][1]["values"][column]
        assert epg == pytest.approx(100 * validate["evet/evet/energy_pointing_game"])
        for offset, name in enumerate(("stability_index", "stability_index_paper")):  # both protocols
            row = tables["table5"]["rows"][2 * column + offset]
            assert row["values"] == pytest.approx(
                [validate[f"evet/{variant}/{name}"] for variant in ("original", "evet")]
            )
            interval = [validate[f"evet/diff/{name}{end}"] for end in ("_low", "_high")]
            assert row["intervals"] == [pytest.approx(interval)]
        table6 = [row["values"][column] for row in tables["table6"]["rows"]]
        assert table6 == pytest.approx(
            [
                validate[f"evet/{variant}/{name}_auc"]
                for name in ("deletion", "insertion")
                for variant in ("original", "evet")
            ]
        )
        for value in table6:
            assert 0.0 <= value <= 1.0
    assert sorted(path.name for path in (output / "heatmaps").glob("*.png")) == ["GradCAM.png", "Gradient.png"]


def test_the_chosen_alpha_is_the_logged_one(two_methods: tuple[Path, str]) -> None:
    output, _ = two_methods
    payload = json.loads((output / "tables.json").read_text())
    assert payload["alpha"] == "auto" and payload["settings"]["alpha_objective"] == "faithful_boost"
    grid = payload["settings"]["alpha_grid"]
    assert grid == [0.0, 0.1, 0.25, 0.5, 1.0]
    table1 = next(table for table in payload["tables"] if table["key"] == "table1")
    alpha_row = table1["rows"][-1]
    assert (alpha_row["metric"], alpha_row["variant"]) == ("Alpha (chosen)", "w/ EVET")
    for column, method in enumerate(["Gradient", "GradCAM"]):
        logged = payload["validate"][method]["evet/alpha"]
        chosen = payload["alpha_by_method"][method]
        assert chosen["alpha"] == pytest.approx(logged)
        assert alpha_row["values"][column] == pytest.approx(logged)
        assert all(alpha in grid for alpha in chosen["folds"])
        assert sum(chosen["folds"]) / 2 == pytest.approx(logged)  # the logged alpha is the folds' mean
        curve = chosen["curve"]
        assert curve["alphas"] == grid and curve["num_samples"] == 8
        for name in ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index"):
            # synthetic data: masks; evaluate runs the stability transforms, so each alpha has a stability index
            assert len(curve[name]) == len(grid) and all(0.0 <= value <= 1.0 for value in curve[name])
            assert 0.0 <= curve["original"][name] <= 1.0
        # the curve's original map is the one the metrics logged (same samples, same maps)
        logged = payload["validate"][method]
        assert curve["original"]["average_drop"] == pytest.approx(logged["evet/original/average_drop"], abs=1e-6)
        assert curve["original"]["stability_index"] == pytest.approx(logged["evet/original/stability_index"], abs=1e-6)


def test_score_cam_tables_3_and_4_on_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "tests.cli._factories:tiny_cnn", "--image-size", "32", "--num-samples", "4"]
    args += ["--no-deletion-insertion"]
    code, out, _ = run_evaluate([*args, "--methods", "GradCAM,ScoreCAM", "--output", str(tmp_path)], capsys)
    assert code == 0
    tables = printed_tables(out)
    assert sorted(tables) == ["Table 1", "Table 2", "Table 3", "Table 4", "Table 5"]  # no Table 6
    assert list(tables["Table 3"]) == [("Average difference", ""), ("Win (%)", "")]
    timing = tables["Table 4"]
    # the third row is the callback's own, batched, timing (EVETCallback.last_timing)
    assert list(timing) == [("Grad-CAM*", ""), ("Score-CAM", ""), ("Grad-CAM* in EVETCallback (batched)", "")]
    table4 = next(
        table for table in json.loads((tmp_path / "tables.json").read_text())["tables"] if table["key"] == "table4"
    )
    assert all(row["values"][0] > 0 for row in table4["rows"])  # seconds per image (printed ones may round to 0)
    assert "time than Score-CAM" in out


def test_no_paper_stability_drops_only_the_second_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "tests.cli._factories:tiny_cnn", "--image-size", "32", "--num-samples", "4"]
    args += ["--no-deletion-insertion", "--methods", "GradCAM", "--heatmaps", "0"]
    payloads, tables = [], []
    for extra, folder in (([], "both"), (["--no-paper-stability"], "rotate")):
        code, out, _ = run_evaluate([*args, *extra, "--output", str(tmp_path / folder)], capsys)
        assert code == 0
        tables.append(printed_tables(out)["Table 5"])
        payloads.append(json.loads((tmp_path / folder / "tables.json").read_text()))
    both, rotate = tables
    assert list(both) == [("Grad-CAM", "Rotate 5 (unseen, Fig. 4b)"), ("Grad-CAM", "Paper: mean of 4 (Fig. 4a)")]
    assert list(rotate) == [("Grad-CAM", "Rotate 5 (unseen, Fig. 4b)")]
    assert rotate[("Grad-CAM", "Rotate 5 (unseen, Fig. 4b)")] == both[("Grad-CAM", "Rotate 5 (unseen, Fig. 4b)")]
    assert [payload["settings"]["paper_stability"] for payload in payloads] == [True, False]
    logged = [payload["validate"]["GradCAM"] for payload in payloads]
    assert "evet/evet/stability_index_paper" in logged[0] and "evet/evet/stability_index_paper" not in logged[1]
    # every other logged value is the same: the second protocol never enters the alpha choice or the maps
    assert {key: value for key, value in logged[0].items() if "paper" not in key} == pytest.approx(logged[1], abs=1e-7)


def _run(method: str, original: list[float], enhanced: list[float], clean: float = 0.9) -> MethodRun:
    count = len(original)
    return MethodRun(
        method=method,
        metrics={"evet/win": 0.5},
        targets=torch.zeros(count, dtype=torch.long),
        clean_scores=torch.full((count,), clean),
        original_scores=torch.tensor(original),
        evet_scores=torch.tensor(enhanced),
        original_maps=torch.zeros(count, 2, 2),
        evet_maps=torch.zeros(count, 2, 2),
    )


def test_table_3_compares_grad_cam_and_grad_cam_star_with_score_cam() -> None:
    grad_cam = _run("GradCAM", original=[0.2, 0.6, 0.3, 0.3], enhanced=[0.5, 0.7, 0.1, 0.3])
    score_cam = _run("ScoreCAM", original=[0.4, 0.4, 0.3, 0.3], enhanced=[0.4, 0.4, 0.3, 0.3])
    timing = Timing(grad_cam_star=(0.5, 0.05), score_cam=(2.0, 0.1))
    tables = {table.key: table for table in build_tables([grad_cam, score_cam], has_masks=False, timing=timing)}
    assert sorted(tables) == ["table1", "table3", "table4", "table5"]
    difference, wins = tables["table3"].rows
    # Grad-CAM: (-0.2 + 0.2 + 0 + 0) / 4 = 0; Grad-CAM*: (0.1 + 0.3 - 0.2 + 0) / 4 = 0.05
    assert difference.values == pytest.approx([0.0, 0.05], abs=1e-6)
    # Grad-CAM beats Score-CAM on sample 1 only; Grad-CAM* on samples 0 and 1 (ties count for neither)
    assert wins.values == pytest.approx([25.0, 50.0])
    assert [row.values for row in tables["table4"].rows] == [[0.5, 0.05], [2.0, 0.1]]
    assert "75.0% less time than Score-CAM (4.0x faster)" in "\n".join(tables["table4"].notes)
    # Table 1's "Original" win: the original map beats EVET on sample 2 only
    assert tables["table1"].rows[4].values == pytest.approx([25.0, 0.0])


def test_table_4_says_when_score_cam_is_faster() -> None:
    runs = [_run("GradCAM", [0.5], [0.5])]
    slow = Timing(grad_cam_star=(0.3, 0.0), score_cam=(0.1, 0.0), callback=0.05)
    table4 = {table.key: table for table in build_tables(runs, has_masks=True, timing=slow)}["table4"]
    assert "200.0% more time than Score-CAM (3.0x slower)" in "\n".join(table4.notes)
    assert table4.rows[2].values == [0.05, None]  # the callback's own (batched) timing, when it has one


def test_time_score_cam_gives_table_4_without_a_score_cam_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", "tests.cli._factories:tiny_cnn", "--image-size", "32", "--num-samples", "2"]
    args += ["--methods", "GradCAM", "--time-score-cam", "--no-deletion-insertion", "--output", str(tmp_path)]
    code, out, _ = run_evaluate(args, capsys)
    assert code == 0
    assert sorted(printed_tables(out)) == ["Table 1", "Table 2", "Table 4", "Table 5"]


def _image_folder(root: Path, *, masks: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        for index in range(2):
            image = (torch.rand(3, 40, 48, generator=generator) * 255).to(torch.uint8)
            (root / "images" / label).mkdir(parents=True, exist_ok=True)
            write_png(image, str(root / "images" / label / f"{index}.png"))
            if masks:
                mask = torch.zeros(1, 40, 48, dtype=torch.uint8)
                mask[:, 10:30, 12:36] = 255
                (root / "masks" / label).mkdir(parents=True, exist_ok=True)
                write_png(mask, str(root / "masks" / label / f"{index}.png"))


def test_image_folder_with_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image_folder(tmp_path, masks=True)
    args = ["--model", "tests.cli._factories:tiny_cnn", "--data", str(tmp_path / "images"), "--masks"]
    code, out, _ = run_evaluate(
        [
            *args,
            str(tmp_path / "masks"),
            "--image-size",
            "32",
            "--methods",
            "GradCAM",
            "--deletion-steps",
            "4",
            "--output",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    assert "Table 2" in out and "4 samples" in out
    payload = json.loads((tmp_path / "tables.json").read_text())
    assert payload["num_samples"] == 4 and payload["data"] == str(tmp_path / "images")


def test_outside_methods_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--methods`` takes Captum and zennit names and a user function's import path, one column each (issue 17)."""
    pytest.importorskip("captum")
    pytest.importorskip("zennit")
    # an input attribution first: the CAM layer check must still find GradCAM's layer
    methods = ["captum:Saliency", "GradCAM", "zennit:EpsilonPlusFlat", "tests._helpers.saliency:input_times_gradient"]
    args = ["--model", "tests.cli._factories:tiny_cnn", "--image-size", "32", "--num-samples", "2"]
    args += ["--no-deletion-insertion", "--methods", ",".join(methods), "--output", str(tmp_path)]
    code, out, _ = run_evaluate(args, capsys)
    assert code == 0
    assert f"| Metric |  | captum:Saliency | Grad-CAM | {' | '.join(methods[2:])} |" in out
    assert "CAM layer features.block4" in out
    payload = json.loads((tmp_path / "tables.json").read_text())
    assert payload["methods"] == methods
    sheets = sorted(path.name for path in (tmp_path / "heatmaps").iterdir())
    assert sheets == sorted(f"{method.replace(':', '_')}.png" for method in methods)
    code, _, err = run_evaluate([*args[:-4], "--methods", "captum:NoSuchMethod"], capsys)
    assert code == 2 and "captum:NoSuchMethod" in err
