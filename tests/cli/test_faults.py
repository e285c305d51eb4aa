"""Faults in the middle of a run: Ctrl+C and a disk that turns read-only. What finished is kept on disk, the
last line on stderr says what happened, and the exit code says which (130 interrupted, 74 not written)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evet_lightning
from evet_lightning.cli import main
from evet_lightning.evaluation.runner import EvaluationModule
from evet_lightning.models import ShapesClassifier
from tests.cli.conftest import TINY_DEMO

TINY = "tests.cli._factories:tiny_cnn"
EVALUATE = ["evaluate", "--no-progress", "--model", TINY, "--image-size", "32", "--num-samples", "2"]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def test_ctrl_c_in_evaluate_exits_130_and_keeps_the_finished_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = EvaluationModule.validation_step
    calls = []

    def interrupted_in_the_second_method(self: EvaluationModule, batch: object, batch_idx: int) -> None:
        calls.append(batch_idx)
        if len(calls) == 2:  # one batch per method: the second method's first batch
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(EvaluationModule, "validation_step", interrupted_in_the_second_method)
    handler = signal.getsignal(signal.SIGINT)
    code = main([*EVALUATE, "--methods", "Gradient,GradCAM", "--output", str(tmp_path), "--heatmaps", "0"])
    err = capsys.readouterr().err
    assert code == 130, err
    line = last_line(err)
    assert line.startswith("evet-lightning evaluate: interrupted"), line
    assert f"kept 1 finished method of 2 in {tmp_path}" in line
    assert "Traceback" not in err
    payload = json.loads((tmp_path / "tables.json").read_text())
    assert payload["complete"] is False and list(payload["validate"]) == ["Gradient"]
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning set SIG_IGN; a second Ctrl+C must work


def test_ctrl_c_in_demo_exits_130_and_keeps_the_finished_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = ShapesClassifier.training_step

    def interrupted_in_epoch_1(self: ShapesClassifier, batch: object, batch_idx: int) -> object:
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)  # type: ignore[arg-type]

    monkeypatch.setattr(ShapesClassifier, "training_step", interrupted_in_epoch_1)
    handler = signal.getsignal(signal.SIGINT)
    code = main(["demo", "--output", str(tmp_path), "--logger", "csv", *TINY_DEMO])
    err = capsys.readouterr().err
    assert code == 130, err
    line = last_line(err)
    assert line.startswith("evet-lightning demo: interrupted"), line
    assert f"kept 1 finished epoch of 2 in {tmp_path}" in line
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["complete"] is False and [record["epoch"] for record in payload["epochs"]] == [0]
    assert signal.getsignal(signal.SIGINT) == handler


def test_a_disk_that_turns_read_only_keeps_the_earlier_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Path.open
    opened: list[str] = []

    def read_only_after_the_first_tables(self: Path, *args: object, **kwargs: object) -> object:
        if self.name.startswith(".tables.json."):  # write_text's temporary file
            opened.append(self.name)
            if len(opened) == 2:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", read_only_after_the_first_tables)
    code = main([*EVALUATE, "--methods", "Gradient,GradCAM", "--output", str(tmp_path), "--heatmaps", "0"])
    err = capsys.readouterr().err
    assert code == 74, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {tmp_path / 'tables.json'}: Read-only file system" in lines[0]
    assert "kept 1 finished method of 2" in lines[0]
    payload = json.loads((tmp_path / "tables.json").read_text())  # the first method's, whole
    assert payload["complete"] is False and list(payload["validate"]) == ["Gradient"]
    assert not list(tmp_path.glob(".tables.json.*"))  # no temporary file left behind


def test_a_heatmap_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "heatmaps" / "Gradient.png").mkdir()  # a folder where the sheet goes: open() fails
    code = main([*EVALUATE, "--methods", "Gradient", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 74, err
    assert f"cannot write {tmp_path / 'heatmaps' / 'Gradient.png'}: Is a directory" in last_line(err)
    assert json.loads((tmp_path / "tables.json").read_text())["complete"] is False


def test_a_heatmap_the_demo_callback_cannot_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evet_lightning.callbacks import image_logging

    real = image_logging.write_png
    written: list[str] = []

    def read_only_in_epoch_1(image: object, path: str) -> None:
        written.append(path)
        if "epoch_001" in path:
            raise OSError(errno.EROFS, "Read-only file system", path)
        real(image, path)  # type: ignore[arg-type]

    monkeypatch.setattr(image_logging, "write_png", read_only_in_epoch_1)
    code = main(["demo", "--output", str(tmp_path), "--logger", "csv", *TINY_DEMO])
    err = capsys.readouterr().err
    assert code == 74, err
    line = last_line(err)
    assert f"cannot write {written[-1]}: Read-only file system" in line and "Traceback" not in err
    assert f"kept 1 finished epoch of 2 in {tmp_path}" in line
    assert [record["epoch"] for record in json.loads((tmp_path / "metrics.json").read_text())["epochs"]] == [0]


class _InterruptImport:
    """A meta-path finder: importing ``name`` raises ``KeyboardInterrupt``, as a Ctrl+C while it loads would."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == self.name:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["import", "parser", "arguments"])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(
    where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: a Ctrl+C while the command's modules load or its arguments are parsed printed a traceback."""
    from evet_lightning.cli import commands

    if where == "import":
        monkeypatch.delitem(sys.modules, "evet_lightning.cli.commands")
        monkeypatch.setattr(sys, "meta_path", [_InterruptImport("evet_lightning.cli.commands"), *sys.meta_path])
    else:

        def interrupt(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(commands, "build_parser" if where == "parser" else "_configure_logging", interrupt)
    assert main(EVALUATE) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = "evet-lightning evaluate: interrupted" if where == "arguments" else "evet-lightning: interrupted"
    assert err.strip().startswith(expected) and len(err.strip().splitlines()) == 1


def test_importing_the_command_loads_neither_torch_nor_lightning() -> None:
    """What runs before ``main`` can catch a Ctrl+C (the console script's import of ``evet_lightning.cli``) is
    only Python's own start-up: the package imports torch and Lightning on first use."""
    code = "import sys, evet_lightning.cli; print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    root = str(Path(evet_lightning.__file__).parent.parent)  # this checkout, not another installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env, cwd=root
    )
    assert result.stdout.strip() == "[]"


def test_a_real_ctrl_c_one_second_into_the_command_is_exit_130_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT to ``python -m evet_lightning evaluate`` while it starts (torch alone takes seconds to import)."""
    root = str(Path(evet_lightning.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "evet_lightning", *EVALUATE, "--output", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
    )
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in last_line(err)
