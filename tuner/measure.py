"""What a trial measures with: the timer and the numerics checker (both swappable, e.g. in tests).

* a *timer* is ``timer(variant, problem, config, mode, *, family, device, warmup_ms, rep_ms) ->
  list[float]``: timing samples in ms of one call of ``variant`` with ``config`` in ``mode``;
  ``HarnessTimer`` is the real one (``harness.timing``: CUDA events, L2 flushed between calls; one
  untimed first call, so compilation never counts);
* a *checker* is ``checker(variant, problem, config, *, family, backward, device)`` returning an object
  with ``passed``, ``skipped``, ``reason`` and ``errors`` -- ``harness.numerics.check_variant``.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from deltalab.variants.registry import Problem


class Timer(Protocol):
    def __call__(
        self, variant: str, problem: Problem, config: dict, mode: str, *, family: str, device, warmup_ms: float,
        rep_ms: float,
    ) -> list[float]: ...


class HarnessTimer:
    """Times through ``harness.timing``; keeps the runners (inputs built once) of recent configs so
    the interleaved re-timing rounds do not rebuild inputs every round."""

    def __init__(self, keep: int = 8) -> None:
        self._runners: dict[tuple, Callable[[], object]] = {}
        self._keep = keep

    def __call__(self, variant, problem, config, mode, *, family, device, warmup_ms, rep_ms) -> list[float]:
        from deltalab.harness.timing import benchmark, make_runner

        from .space import config_key

        key = (family, variant, problem, config_key(config), mode, str(device))
        runner = self._runners.get(key)
        if runner is None:
            while len(self._runners) >= self._keep:
                self._runners.pop(next(iter(self._runners)))
            runner = make_runner(variant, problem, config, mode, family=family, device=device)
            self._runners[key] = runner
        return list(benchmark(runner, warmup_ms=warmup_ms, rep_ms=rep_ms, device=device).samples_ms)

    def clear(self) -> None:
        """Drop the cached runners (and the device memory their inputs hold)."""
        self._runners.clear()


def harness_checker(variant: str, problem: Problem, config: dict, *, family: str, backward: bool, device: Optional[str]):
    """``harness.numerics.check_variant`` with the tuner's arguments."""
    from deltalab.harness.numerics import check_variant

    return check_variant(variant, problem, config, family=family, backward=backward, device=device)
