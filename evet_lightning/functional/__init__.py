"""Pure functions behind the metrics and EVET's fusion step."""

from evet_lightning.functional.average_difference import average_difference
from evet_lightning.functional.average_drop import average_drop
from evet_lightning.functional.class_masks import pair_masks
from evet_lightning.functional.deletion_insertion import curve_auc, deletion_curve, insertion_curve
from evet_lightning.functional.energy_pointing_game import energy_pointing_game
from evet_lightning.functional.fusion import fuse_maps
from evet_lightning.functional.increase_in_confidence import increase_in_confidence
from evet_lightning.functional.perturbation import perturb, resolve_baseline, target_probabilities
from evet_lightning.functional.stability_index import stability_index
from evet_lightning.functional.win import win

__all__ = [
    "average_difference",
    "average_drop",
    "curve_auc",
    "deletion_curve",
    "energy_pointing_game",
    "fuse_maps",
    "increase_in_confidence",
    "insertion_curve",
    "pair_masks",
    "perturb",
    "resolve_baseline",
    "stability_index",
    "target_probabilities",
    "win",
]
