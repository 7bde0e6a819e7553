"""Outcome data: per-query quality of every rung, the input of router training and evaluation."""

from ladder.outcomes.schema import Outcomes

__all__ = ["Outcomes"]
