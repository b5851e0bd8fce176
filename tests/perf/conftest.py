"""The pytest-benchmark speed suite (``tox -e perf``): GPU-only, timed with CUDA events.

Each test builds a runner (``deltalab.harness.timing.make_runner``: inputs built once, one call of the
public op per round) and hands it to the ``cuda_benchmark`` fixture, which drives
``benchmark.pedantic``: one untimed call (Triton compiles), a CUDA-event estimate of one call to size the
warm-up and the number of rounds (about ``warmup_ms`` and ``rep_ms`` of GPU time), and per round a setup
that zeroes a 256 MB buffer (L2 flushed, outside the timing) and arms ``CLOCK`` (tests/perf/cuda_clock.py),
so pytest-benchmark's statistics, saved runs, --benchmark-compare and --benchmark-compare-fail all see
GPU time. Test modules mark themselves ``pytest.mark.benchmark(timer=CLOCK)``; the fixture refuses to
time with any other timer. Without a CUDA GPU (or under TRITON_INTERPRET=1) the tests skip.
"""

from __future__ import annotations

import os

import pytest
import torch

from cuda_clock import CLOCK

HAS_CUDA = torch.cuda.is_available()
MIN_ROUNDS = 10
MAX_ROUNDS = 2000


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved runs name the GPU and library versions, so comparing across machines is visible."""
    import triton

    machine_info["gpu"] = torch.cuda.get_device_name() if HAS_CUDA else "cpu"
    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"


def _estimate_ms(fn, flush: torch.Tensor, calls: int = 3) -> float:
    """GPU time of one call of ``fn`` (CUDA events around ``calls`` calls, L2 flushed before each)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        flush.zero_()
        fn()
    end.record()
    end.synchronize()
    return max(start.elapsed_time(end) / calls, 1e-3)


@pytest.fixture
def cuda_benchmark(benchmark):
    """``run(fn, *, warmup_ms=25, rep_ms=100, group=None, **extra_info)``: time ``fn`` with
    CUDA-event rounds through pytest-benchmark (see the module docstring); returns fn's last result."""
    from deltalab.harness.timing import L2_FLUSH_BYTES
    from deltalab.variants.common import triton_interpreting

    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    if triton_interpreting():
        pytest.skip("TRITON_INTERPRET=1: interpreter timings say nothing about kernel speed")
    timer = getattr(benchmark, "_timer", CLOCK)
    if timer is not CLOCK:
        raise RuntimeError("perf tests must be marked pytest.mark.benchmark(timer=CLOCK) (cuda_clock.CLOCK)")

    def run(fn, *, warmup_ms: float = 25.0, rep_ms: float = 100.0, group: str | None = None, **extra_info):
        flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        fn()  # untimed: compilation (and autotuning, for peers)
        torch.cuda.synchronize()
        estimate = _estimate_ms(fn, flush)
        rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(rep_ms / estimate)))
        warmup_rounds = max(1, min(MAX_ROUNDS, int(warmup_ms / estimate)))

        def setup():
            flush.zero_()  # enqueued before the start event: evicts the previous round's operands
            CLOCK.arm()

        if group:
            benchmark.group = group
        benchmark.extra_info.update(extra_info, timer="cuda events", l2_flush_bytes=L2_FLUSH_BYTES, estimate_ms=estimate)
        return benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    return run
