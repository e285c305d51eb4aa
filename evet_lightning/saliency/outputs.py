"""Logits from whatever a model's forward returns (defined in the bottom layer, :mod:`evet_lightning._outputs`,
so that ``functional/`` can read them too; this is the public path)."""

from __future__ import annotations

from evet_lightning._outputs import LogitsModel, OutputTransform, logits_from_output, not_logits, require_graph

__all__ = ["LogitsModel", "OutputTransform", "logits_from_output", "not_logits", "require_graph"]
