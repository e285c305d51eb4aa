"""The ``evet-lightning`` command: a demo training run and a paper-style evaluation, on embedded defaults.

``evet-lightning demo`` trains a small CNN on synthetic shapes with :class:`~evet_lightning.EVETCallback`
attached and writes metrics, plots, heatmaps, a checkpoint and a (offline) W&B run; ``evet-lightning evaluate``
reproduces the layout of the paper's Tables 1-5 for a model and a dataset. The work itself lives in
:mod:`evet_lightning.evaluation`; this package generates the options from the configuration dataclasses
(:mod:`.arguments`), builds the parser (:mod:`.parser`), runs a subcommand and prints, and turns user errors
into one line on stderr with exit code 2 (:mod:`.commands`).

Importing this package is light (no torch): :func:`main` imports the rest, so a Ctrl+C at any point of the start-up
ends in one line and exit code 130 (decision 35).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evet_lightning.cli.parser import build_parser

__all__ = ["INTERRUPTED", "OUTPUT_ERROR", "PROG", "USAGE_ERROR", "build_parser", "interrupted_during_start_up", "main"]

PROG = "evet-lightning"
#: Exit code of a user error, found before the run (argparse's own code for a bad option).
USAGE_ERROR = 2
#: Exit code of a result that could not be written mid-run (``EX_IOERR`` of BSD's sysexits.h).
OUTPUT_ERROR = 74
#: Exit code after Ctrl+C (a shell's 128 + SIGINT).
INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``evet-lightning`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code
    (:func:`evet_lightning.cli.commands.main`). A Ctrl+C while the command's modules load is exit code 130."""
    try:
        commands = importlib.import_module("evet_lightning.cli.commands")
    except KeyboardInterrupt:
        return interrupted_during_start_up()
    code: int = commands.main(argv)
    return code


def interrupted_during_start_up() -> int:
    """Ctrl+C before a subcommand runs (loading modules, parsing): one line on stderr, exit code 130."""
    print(f"\n{PROG}: interrupted during start-up", file=sys.stderr)
    return INTERRUPTED


def __getattr__(name: str) -> Any:
    if name != "build_parser":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module("evet_lightning.cli.parser").build_parser
