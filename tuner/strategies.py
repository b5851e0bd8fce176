"""Search strategies: which Optuna sampler proposes the configs of a study.

* "tpe" -- Optuna's TPE (the default for large spaces), multivariate, with the constant liar so that
  concurrent workers and the configs of one compile batch do not all land on the same point;
* "grid" -- exhaustive: every point of the space that passes the constraints is enqueued into the
  study (default config first),
  and workers take them from the shared queue, so each point is run once even with many workers; the
  underlying sampler is Optuna's GridSampler (used only if a worker asks past the end of the queue);
* "random" -- Optuna's RandomSampler (a baseline for comparing strategies);
* "auto" -- "grid" when the constraint-valid points fit in the trial budget, else "tpe".
"""

from __future__ import annotations

from typing import Optional

import optuna

from .space import SearchSpace

SAMPLERS = ("auto", "tpe", "grid", "random")


class _QuietGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its end-of-grid ``study.stop()``: the tuner drives trials by ask/tell
    (where ``stop`` is not allowed) and decides itself when the space is exhausted."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102
        return None


def choose(name: str, space: SearchSpace, budget: int) -> str:
    """The strategy a study uses: ``name``, with "auto" resolved against the space and trial budget."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")
    if name == "grid" and space.valid_points is None:
        raise ValueError(f"sampler: grid cannot enumerate a space of {space.size} points; use tpe or random")
    if name != "auto":
        return name
    return "grid" if space.valid_points is not None and space.valid_size <= budget else "tpe"


def make_sampler(strategy: str, space: SearchSpace, seed: Optional[int] = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``strategy`` (one of "tpe", "grid", "random") over ``space``."""
    if strategy == "tpe":
        n_startup = max(4, min(10, space.size // 4))
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup, multivariate=True, constant_liar=True
        )
    if strategy == "grid":
        return _QuietGridSampler(space.params, seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler: expected one of tpe, grid, random, got {strategy!r}")
