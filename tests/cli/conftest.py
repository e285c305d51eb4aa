"""Shared CLI fixtures: one tiny ``evet-lightning demo`` run (default W&B logger, offline) for the whole session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from evet_lightning.cli import main

#: A demo small enough for a test: 2 epochs of 2 steps at 32 px, 4 explained samples.
TINY_DEMO = [
    "--max-epochs", "2", "--train-samples", "32", "--val-samples", "8", "--num-samples", "4",
    "--image-size", "32", "--width", "4", "--batch-size", "16", "--no-progress",
]  # fmt: skip


@dataclass
class DemoRun:
    """What the session's demo run left behind."""

    output: Path
    exit_code: int
    stdout: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``evet-lightning demo`` with the default logger (W&B, offline), tiny sizes, run once."""
    import contextlib
    import io

    output = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exit_code = main(["demo", "--output", str(output), *TINY_DEMO])
    return DemoRun(output=output, exit_code=exit_code, stdout=stdout.getvalue())
