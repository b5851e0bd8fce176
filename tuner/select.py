"""Noise-aware choice of a study's winner.

The search ranks configs by one timing each, taken minutes apart; clocks, temperature and neighbours
drift in between, and two configs within a percent of each other are often in the wrong order. So the
best few configs (and the default) are timed again, interleaved -- round 1: A B C, round 2: A B C, ...
-- so that drift hits all of them alike, and compared round by round:

* the fastest is the config with the lowest median over its round medians (ties: smallest key);
* every other config is compared with it by the ratio of their medians in each round; it is beaten
  only when even its lower-quartile ratio exceeds 1 + ``min_gain`` (slower beyond the measured spread
  in at least three rounds of four, and by more than ``min_gain``);
* configs not beaten are tied with the fastest ("contenders"); among them the default config wins
  if present (a change must earn its place), else the lexicographically smallest config key.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .space import config_key

DEFAULT_MIN_GAIN = 0.01


@dataclass
class Selection:
    """The outcome of a selection: the winner, its timing, and the comparison behind it."""

    winner: dict
    winner_key: str
    median_ms: float
    default_key: Optional[str]
    default_median_ms: Optional[float]
    contenders: list[str]
    fastest_key: str
    candidates: dict[str, dict] = field(default_factory=dict)
    rounds: int = 0
    min_gain: float = DEFAULT_MIN_GAIN

    @property
    def speedup(self) -> Optional[float]:
        """Default time / winner time (None when the default config was not among the candidates)."""
        if self.default_median_ms is None or not self.median_ms:
            return None
        return self.default_median_ms / self.median_ms

    def to_dict(self) -> dict:
        return {
            "winner": self.winner,
            "winner_key": self.winner_key,
            "median_ms": self.median_ms,
            "default_key": self.default_key,
            "default_median_ms": self.default_median_ms,
            "speedup": self.speedup,
            "contenders": self.contenders,
            "fastest_key": self.fastest_key,
            "candidates": self.candidates,
            "rounds": self.rounds,
            "min_gain": self.min_gain,
        }


def interleaved_rounds(
    configs: list[dict], measure: Callable[[dict], float], rounds: int
) -> dict[str, list[float]]:
    """Time every config once per round, in the same order each round (A B C A B C ...).

    ``measure(config)`` returns one timing in ms (e.g. the median of a short benchmark). Returns
    config key -> the ``rounds`` timings.
    """
    if rounds < 1:
        raise ValueError(f"rounds: need at least 1, got {rounds}")
    timings: dict[str, list[float]] = {config_key(c): [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            timings[config_key(config)].append(float(measure(config)))
    return timings


def select_winner(
    round_medians: dict[str, list[float]],
    configs: dict[str, dict],
    default_key: Optional[str] = None,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> Selection:
    """Choose the winner from interleaved timings (see the module docstring).

    ``round_medians``: config key -> one timing per round (all lists the same length);
    ``configs``: config key -> config; ``default_key``: the default config's key, if it was timed.
    """
    if not round_medians:
        raise ValueError("round_medians: no candidates to select from")
    lengths = {len(v) for v in round_medians.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"round_medians: every candidate needs the same, non-zero number of rounds, got {sorted(lengths)}")
    medians = {key: statistics.median(values) for key, values in round_medians.items()}
    fastest = min(medians, key=lambda key: (medians[key], key))
    reference = np.asarray(round_medians[fastest], dtype=float)

    candidates: dict[str, dict] = {}
    contenders = []
    for key, values in sorted(round_medians.items()):
        ratios = np.asarray(values, dtype=float) / reference
        low, mid, high = (float(x) for x in np.quantile(ratios, [0.25, 0.5, 0.75]))
        beaten = key != fastest and low > 1.0 + min_gain
        candidates[key] = {
            "config": configs[key],
            "round_ms": [float(v) for v in values],
            "median_ms": medians[key],
            "ratio_to_fastest": {"q25": low, "median": mid, "q75": high},
            "beaten": beaten,
        }
        if not beaten:
            contenders.append(key)

    if default_key is not None and default_key in contenders:
        winner = default_key
    else:
        winner = min(contenders)
    return Selection(
        winner=configs[winner],
        winner_key=winner,
        median_ms=medians[winner],
        default_key=default_key if default_key in round_medians else None,
        default_median_ms=medians.get(default_key) if default_key is not None else None,
        contenders=contenders,
        fastest_key=fastest,
        candidates=candidates,
        rounds=lengths.pop(),
        min_gain=min_gain,
    )
