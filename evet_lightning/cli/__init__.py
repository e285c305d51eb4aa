"""The ``evet-lightning`` command: a demo training run and a paper-style evaluation, on embedded defaults.

``evet-lightning demo`` trains a small CNN on synthetic shapes with :class:`~evet_lightning.EVETCallback`
attached and writes metrics, plots, heatmaps, a checkpoint and a (offline) W&B run; ``evet-lightning evaluate``
reproduces the layout of the paper's Tables 1-5 for a model and a dataset. The work itself lives in
:mod:`evet_lightning.evaluation`; this package generates the options from the configuration dataclasses
(:mod:`.arguments`), builds the parser (:mod:`.parser`), runs a subcommand and prints, and turns user errors
into one line on stderr with exit code 2 (:mod:`.commands`).
"""

from evet_lightning.cli.commands import main
from evet_lightning.cli.parser import INTERRUPTED, OUTPUT_ERROR, PROG, USAGE_ERROR, build_parser

__all__ = ["INTERRUPTED", "OUTPUT_ERROR", "PROG", "USAGE_ERROR", "build_parser", "main"]
