"""``evet-lightning demo`` and ``evet-lightning evaluate``: parse, run, print; a user error is one line, exit 2.

Exit codes: 0 success; 1 an unexpected failure (with its traceback); 2 a user error, found before the run
(:class:`~evet_lightning.evaluation.UsageError`); 74 (``EX_IOERR``) a result that could not be written mid-run
(:class:`~evet_lightning.evaluation.OutputError`); 130 interrupted (Ctrl+C). The last three end with one line
on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from evet_lightning.cli import INTERRUPTED, OUTPUT_ERROR, PROG, USAGE_ERROR, interrupted_during_start_up
from evet_lightning.cli.arguments import config_from_args
from evet_lightning.cli.parser import build_parser
from evet_lightning.evaluation import (
    DemoConfig,
    EvaluateConfig,
    Interrupted,
    OutputError,
    UsageError,
    epoch_table_markdown,
    last_epoch_intervals,
    run_demo,
    run_evaluation,
)

__all__ = ["main"]


class _MessageFormatter(logging.Formatter):
    """Log records as the message alone, warnings and errors prefixed with their level (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_MessageFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _demo(args: argparse.Namespace) -> int:
    config = config_from_args(DemoConfig, args)
    result = run_demo(config)
    print()
    if config.task == "multilabel":
        print(
            f"EVET demo, multi-label: original vs EVET on every (image, class) pair of the first {config.num_samples} "
            "validation images, means over the pairs, per epoch (%)"
        )
    else:
        print("EVET demo: original vs EVET on the first", config.num_samples, "validation samples, per epoch (%)")
    print()
    print(epoch_table_markdown(result.history))
    print()
    if config.task == "multilabel":
        print("Last epoch, EVET against the original map (paired over the pairs; decision 31's bootstrap interval):")
        print(last_epoch_intervals(result.history))
        print()
    print(f"Finished in {result.seconds:.1f} s. Wrote:")
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    result = run_evaluation(config_from_args(EvaluateConfig, args))
    print()
    print(result.markdown())
    print()
    print("Wrote:", ", ".join(result.files.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``evet-lightning`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 on success; 2 with one line on stderr for a user error (bad option, missing or corrupt file, unknown
    method or model, missing optional extra, an option that does not apply, a device that is not there, an
    output folder that cannot be written); 74 with one line when a file cannot be written mid-run (the files
    written before are kept); 130 when interrupted (Ctrl+C), the last line saying what was kept.
    """
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exit_:  # --help, --version, or a parse error already printed
            return int(exit_.code) if isinstance(exit_.code, int) else USAGE_ERROR
    except KeyboardInterrupt:  # the start-up, before a subcommand is known (decision 35)
        return interrupted_during_start_up()
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR

    try:
        _configure_logging()
        os.environ.setdefault("WANDB_SILENT", "true")
        command = _demo if args.command == "demo" else _evaluate
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            return command(args)
    except (UsageError, OutputError) as error:
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR if isinstance(error, UsageError) else OUTPUT_ERROR
    except KeyboardInterrupt as interrupt:
        kept = f": {_one_line(interrupt)}" if isinstance(interrupt, Interrupted) else ""
        print(f"\n{PROG} {args.command}: interrupted{kept}", file=sys.stderr)
        return INTERRUPTED


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
