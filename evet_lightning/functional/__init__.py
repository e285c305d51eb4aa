"""Pure functions behind the metrics and EVET's fusion step."""

from evet_lightning.functional.perturbation import perturb, resolve_baseline, target_probabilities

__all__ = ["perturb", "resolve_baseline", "target_probabilities"]
