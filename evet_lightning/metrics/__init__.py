"""Explanation-quality metrics as torchmetrics ``Metric`` classes (math in :mod:`evet_lightning.functional`)."""

from evet_lightning.metrics.average_difference import AverageDifference
from evet_lightning.metrics.average_drop import AverageDrop
from evet_lightning.metrics.deletion_insertion import DeletionAUC, InsertionAUC
from evet_lightning.metrics.energy_pointing_game import EnergyPointingGame
from evet_lightning.metrics.increase_in_confidence import IncreaseInConfidence
from evet_lightning.metrics.paired_difference import PairedDifference
from evet_lightning.metrics.stability_index import StabilityIndex
from evet_lightning.metrics.win import Win

__all__ = [
    "AverageDifference",
    "AverageDrop",
    "DeletionAUC",
    "EnergyPointingGame",
    "IncreaseInConfidence",
    "InsertionAUC",
    "PairedDifference",
    "StabilityIndex",
    "Win",
]
