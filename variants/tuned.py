"""Exported tuning results, as the op reads them (written by ``deltalab export``).

Placeholder until the tuner lands: no results are known, so dispatch falls back to its rule.
"""

from __future__ import annotations

from typing import Optional

from .registry import Config, Problem, Variant


def best_variant(problem: Problem, family: str) -> Optional[str]:
    return None


def lookup_config(variant: Variant, problem: Problem) -> Optional[Config]:
    return None
