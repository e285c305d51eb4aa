"""Mistakes found before the long run: one line on stderr, exit code 2, no traceback, and no work started.

Each test that says "before any work" replaces the expensive step that would come next with one that fails
the test, so the check is proven to run first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from evet_lightning.evaluation import demo as demo_module
from evet_lightning.evaluation import pipeline
from tests.cli.conftest import TINY_DEMO, DemoRun
from tests.cli.test_errors import assert_usage_error

TINY = "tests.cli._factories:tiny_cnn"


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any method starts running."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started although a check should have stopped it")

    monkeypatch.setattr(pipeline, "run_method", fail)


def image_folder(root: Path, classes: int = 2, per_class: int = 2, masks: bool = False) -> Path:
    """``root/images/<class>/<i>.png`` (40 x 48 random RGB) and, with ``masks``, ``root/masks/...`` alike."""
    generator = torch.Generator().manual_seed(0)
    for label in range(classes):
        for index in range(per_class):
            image = (torch.rand(3, 40, 48, generator=generator) * 255).to(torch.uint8)
            (root / "images" / f"class{label}").mkdir(parents=True, exist_ok=True)
            write_png(image, str(root / "images" / f"class{label}" / f"{index}.png"))
            if masks:
                mask = torch.zeros(1, 40, 48, dtype=torch.uint8)
                mask[:, 10:30, 12:36] = 255
                (root / "masks" / f"class{label}").mkdir(parents=True, exist_ok=True)
                write_png(mask, str(root / "masks" / f"class{label}" / f"{index}.png"))
    return root / "images"


def evaluate_folder(tmp_path: Path, *extra: str) -> list[str]:
    output = tmp_path / "out"
    return ["evaluate", "--no-progress", "--model", TINY, "--image-size", "32", "--output", str(output), *extra]


# --------------------------------------------------------------------------------------------- corrupt files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])  # the PNG signature and header survive, the data does not


@pytest.mark.parametrize("damage", ["broken_png", "text_as_jpg", "broken_mask"])
def test_a_corrupt_file_is_named_before_any_work(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    images = image_folder(tmp_path, masks=True)
    if damage == "broken_png":
        bad = images / "class1" / "1.png"
        _truncate(bad)
    elif damage == "text_as_jpg":
        bad = images / "class0" / "notes.jpg"
        bad.write_text("this is not an image\n")
        mask = tmp_path / "masks" / "class0" / "notes.png"
        write_png(torch.zeros(1, 40, 48, dtype=torch.uint8), str(mask))
    else:
        bad = tmp_path / "masks" / "class0" / "1.png"
        _truncate(bad)
    argv = evaluate_folder(tmp_path, "--data", str(images), "--masks", str(tmp_path / "masks"))
    assert_usage_error(capsys, argv, "cannot decode", str(bad))
    assert not (tmp_path / "out").exists()  # a mistake leaves no empty output folder behind


def test_a_mask_of_another_size_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None) -> None:
    images = image_folder(tmp_path, masks=True)
    write_png(torch.zeros(1, 20, 20, dtype=torch.uint8), str(tmp_path / "masks" / "class0" / "0.png"))
    argv = evaluate_folder(tmp_path, "--data", str(images), "--masks", str(tmp_path / "masks"))
    assert_usage_error(capsys, argv, "20x20 pixels", "40")


def test_only_the_samples_used_are_decoded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = image_folder(tmp_path, classes=2, per_class=1)
    _truncate(images / "class1" / "0.png")  # sample 1 of 2; --num-samples 1 never reads it
    argv = evaluate_folder(tmp_path, "--data", str(images), "--num-samples", "1", "--methods", "Gradient")
    assert main_ok(argv, capsys)


def main_ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> bool:
    from evet_lightning.cli import main

    code = main([*argv, "--heatmaps", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return True


# --------------------------------------------------------------------------------------------- output folder


@pytest.mark.parametrize("where", ["proc", "file"])
def test_an_unwritable_output_fails_before_any_work(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although --output cannot be written")

    monkeypatch.setattr(pipeline, "load_model", fail)
    output = Path("/proc/x") if where == "proc" else tmp_path / "a_file"
    if where == "file":
        output.write_text("already here")
    fragment = "cannot be written" if where == "proc" else "is a file, not a folder"
    assert_usage_error(capsys, ["evaluate", "--model", TINY, "--output", str(output)], "--output", fragment)
    assert_usage_error(capsys, ["demo", "--output", str(output), *TINY_DEMO], "--output", fragment)


# --------------------------------------------------------------------------------------------- labels


def test_demo_checkpoint_on_imagenet_photos(demo_run: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--model", str(demo_run.output / "model.ckpt"), "--data", "photos", "--no-progress"]
    assert_usage_error(capsys, argv, "labels up to", "4 classes", "--target prediction")


def test_six_class_folder_with_a_four_class_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    images = image_folder(tmp_path, classes=6, per_class=1)
    argv = evaluate_folder(tmp_path, "--data", str(images))
    assert_usage_error(capsys, argv, "labels up to 5", "4 classes")
    assert not (tmp_path / "out").exists()


def test_target_prediction_explains_a_folder_whose_labels_are_not_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = image_folder(tmp_path, classes=6, per_class=1)
    argv = evaluate_folder(tmp_path, "--data", str(images), "--target", "prediction", "--methods", "Gradient")
    assert main_ok(argv, capsys)


# --------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["evaluate", "--model", TINY, "--masks", "/tmp"], ["--masks only applies", "--data synthetic"]),
        (["evaluate", "--model", "demo:x.ckpt", "--num-classes", "3"], ["--num-classes only applies"]),
        (["evaluate", "--model", "x.ckpt", "--weights", "w.pt"], ["--weights only applies"]),
        (["evaluate", "--model", "efficientnet_lite0", "--weights", "w.pt"], ["--weights only applies"]),
        (["evaluate", "--model", TINY, "--num-classes", "3"], ["--num-classes only applies"]),
        (["demo", "--logger", "csv", "--wandb-online"], ["--wandb-online only applies to --logger wandb"]),
    ],
)
def test_an_option_that_does_not_apply_is_an_error(
    argv: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(capsys, [*argv, "--output", str(tmp_path)], *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    "argv", [["demo", *TINY_DEMO, "--accelerator", "gpu"], ["evaluate", "--model", TINY, "--accelerator", "cuda"]]
)
def test_asking_for_a_missing_gpu_is_an_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(capsys, [*argv, "--output", str(tmp_path)], "no CUDA GPU is available")


def test_more_samples_than_memory_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None) -> None:
    argv = evaluate_folder(tmp_path, "--num-samples", "1000000000")
    line = assert_usage_error(capsys, argv, "--num-samples 1000000000 needs about", "available")
    assert "or fewer" in line


def test_pixels_that_are_not_8_or_16_bit_integers_are_named_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_run: None
) -> None:
    """Issue 21: pixels are scaled by their bit depth; a decoded type that has none is exit 2 naming the file."""
    import torchvision.io

    images = image_folder(tmp_path)
    decode = torchvision.io.decode_image
    monkeypatch.setattr(torchvision.io, "decode_image", lambda *args, **kwargs: decode(*args, **kwargs).float())
    argv = evaluate_folder(tmp_path, "--data", str(images))
    assert_usage_error(capsys, argv, "as [0, 1] pixels: it decodes to torch.float32", str(images / "class0" / "0.png"))


# --------------------------------------------------------------------------------------------- probabilities


def test_a_model_that_outputs_probabilities_gets_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["evaluate", "--no-progress", "--model", "tests.cli._factories:softmax_cnn", "--image-size", "32"]
    with caplog.at_level(logging.WARNING):
        assert main_ok([*argv, "--methods", "Gradient", "--num-samples", "2", "--output", str(tmp_path)], capsys)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "outputs probabilities" in warnings[0] and "\n" not in warnings[0]


def test_logits_get_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["evaluate", "--no-progress", "--model", TINY, "--image-size", "32", "--methods", "Gradient"]
    with caplog.at_level(logging.WARNING):
        assert main_ok([*argv, "--num-samples", "2", "--output", str(tmp_path)], capsys)
    assert not [record for record in caplog.records if "probabilities" in record.getMessage()]


# --------------------------------------------------------------------------------------------- nothing lost


def test_a_failing_method_keeps_the_finished_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from evet_lightning.cli import main

    real = pipeline.run_method

    def second_fails(model: object, data: object, method: str, **kwargs: object) -> object:
        if method == "GradCAM":
            raise RuntimeError("GradCAM failed on purpose")
        return real(model, data, method, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "run_method", second_fails)
    argv = ["evaluate", "--no-progress", "--model", TINY, "--image-size", "32", "--num-samples", "2"]
    with pytest.raises(RuntimeError, match="on purpose"):
        main([*argv, "--methods", "Gradient,GradCAM", "--output", str(tmp_path)])
    payload = json.loads((tmp_path / "tables.json").read_text())
    assert payload["complete"] is False
    assert payload["methods"] == ["Gradient", "GradCAM"] and list(payload["validate"]) == ["Gradient"]
    assert "partial: 1 of 2 methods" in (tmp_path / "tables.md").read_text()
    assert (tmp_path / "heatmaps" / "Gradient.png").is_file()


def test_demo_writes_metrics_after_every_epoch_and_before_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from evet_lightning.cli import main
    from evet_lightning.visualization import plots

    written: list[tuple[int, bool]] = []
    real = demo_module._EpochHistory.write_metrics

    def spy(self: demo_module._EpochHistory, complete: bool) -> Path:
        written.append((len(self.history), complete))
        return real(self, complete)

    def broken_plot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("plot failed on purpose")

    monkeypatch.setattr(demo_module._EpochHistory, "write_metrics", spy)
    monkeypatch.setattr(plots, "plot_metric_history", broken_plot)
    with pytest.raises(RuntimeError, match="on purpose"):
        main(["demo", "--output", str(tmp_path), "--logger", "csv", *TINY_DEMO])
    assert written == [(1, False), (2, False), (2, True)]
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["complete"] is True and [record["epoch"] for record in payload["epochs"]] == [0, 1]
    assert (tmp_path / "model.ckpt").is_file()


# --------------------------------------------------------------------------------------------- reshape transform


@pytest.mark.parametrize(
    ("model", "spec", "fragments"),
    [
        (
            "demo",
            "vit",
            ["--reshape-transform vit fails on the output (1, 16, 4, 4)", "Expected tokens of shape (B, N, C)"],
        ),
        (
            "demo",
            "swin",
            [
                "swin turns the output (1, 16, 4, 4) of layer 'model.features' into (1, 4, 16, 4)",
                "reads unambiguously as channels first",
            ],
        ),
        ("vit", "tests.cli._factories:drop_class_token", ["into (1, 16, 16)", "not a (B, C, h, w) map"]),
        ("vit", "tests.cli._factories:make_tokens_to_map", ["returned function", "looks like a factory"]),
        ("vit", "evet_lightning.saliency.reshape:TokensToMap", ["TokensToMap is a class"]),
    ],
)
def test_a_reshape_transform_is_tried_before_any_work(
    model: str,
    spec: str,
    fragments: list[str],
    demo_run: DemoRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_run: None,
) -> None:
    path = str(demo_run.output / "model.ckpt") if model == "demo" else "tests.cli._factories:tiny_vit"
    argv = ["evaluate", "--model", path, "--image-size", "32", "--methods", "Gradient,GradCAM"]
    line = assert_usage_error(capsys, [*argv, "--reshape-transform", spec, "--output", str(tmp_path / "out")])
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "out").exists()


def test_a_damaged_png_is_one_line_on_the_real_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], no_run: None
) -> None:
    """libpng writes ``libpng error: IHDR: CRC error`` to file descriptor 2 beside the error; only ``capfd``
    (not ``capsys``) sees it."""
    from evet_lightning.cli import main
    from tests.data.test_image_folder import damage

    images = image_folder(tmp_path)
    bad = images / "class1" / "0.png"
    damage(bad, "ihdr_crc")
    code = main(evaluate_folder(tmp_path, "--data", str(images)))
    err = capfd.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"evet-lightning evaluate: error: --data {images}: cannot decode image {bad}: the CRC of its IHDR chunk "
        "does not match (the file is damaged)"
    ], err


@pytest.mark.parametrize(
    ("shape", "ok"),
    [
        ((2, 8, 4, 4), True),  # the 16 patches of 1 + 16 tokens, 8 channels
        ((2, 8, 2, 8), True),  # another grid of the same tokens: plausible, so allowed
        ((2, 136, 1, 1), False),  # one cell: every CAM would be constant
        ((2, 5, 4, 4), False),  # 5 channels: not one of the output's sizes
        ((2, 8, 40, 1), False),  # taller than the 32 px image
        ((1, 8, 4, 4), False),  # another batch size
        ((2, 17, 8, 2), False),  # more values than the output has
    ],
)
def test_a_reshape_result_must_be_a_plausible_map_when_the_output_is_ambiguous(
    shape: tuple[int, ...], ok: bool
) -> None:
    from evet_lightning.evaluation import UsageError
    from evet_lightning.evaluation.checks import check_reshape_transform

    tokens = torch.randn(2, 17, 8)

    def transform(activation: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape)

    if ok:
        check_reshape_transform(transform, tokens, (32, 32), "blocks.1", None, "mine")
    else:
        with pytest.raises(UsageError, match=r"--reshape-transform mine turns the output \(2, 17, 8\)"):
            check_reshape_transform(transform, tokens, (32, 32), "blocks.1", None, "mine")


def test_the_memory_estimate_grows_only_by_per_sample_values(tmp_path: Path) -> None:
    """A streamed run holds one batch and the calibration samples in images; only the scalars grow with N."""
    from torch.utils.data import TensorDataset

    from evet_lightning.evaluation import EvaluationData
    from evet_lightning.evaluation.checks import MAPS_PER_SAMPLE, SCALAR_BYTES_PER_SAMPLE, estimate_memory

    def data(count: int) -> EvaluationData:
        return EvaluationData(TensorDataset(torch.zeros(count, 3, 8, 8), torch.zeros(count)), "zeros", False)

    per_image = 4 * 3 * 64 + 4 * 64 * MAPS_PER_SAMPLE[1]  # float32 image + float32 maps (paper stability on)
    assert estimate_memory(data(64), batch_size=16, calibration=32) == 2 * 48 * per_image + 64 * SCALAR_BYTES_PER_SAMPLE
    grown = estimate_memory(data(2048), batch_size=16) - estimate_memory(data(64), batch_size=16)
    assert grown == (2048 - 64) * SCALAR_BYTES_PER_SAMPLE
    assert (
        estimate_memory(data(4), batch_size=16, paper_stability=False) == 2 * 8 * (4 * 3 * 64 + 4 * 64 * 10) + 4 * 2048
    )
