"""Speed of the main delta-rule variants at the paper's setting (B*T = 16384, H*D = 2048, T = 4K, bf16),
forward and forward+backward, one pytest-benchmark group per (mode, head dim) so that variants (and the
fla peer, with DELTALAB_PERF_PEERS=1) sit side by side. GPU only.

    tox -e perf                                   # run and save (.benchmarks/)
    tox -e perf -- --benchmark-compare --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import os

import pytest
import torch

from cuda_clock import CLOCK

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark(timer=CLOCK)]

TOKENS = 16384
HIDDEN = 2048
SEQ_LEN = 4096
VARIANTS = ("chunk", "recurrent")
PEERS = ("fla_chunk",)
HEAD_DIMS = (64, 128, 256)
MODES = ("fwd", "fwd+bwd")


def paper_problem(head_dim: int):
    from deltalab.variants.registry import Problem

    return Problem(
        B=TOKENS // SEQ_LEN,
        T=SEQ_LEN,
        H=HIDDEN // head_dim,
        K=head_dim,
        V=head_dim,
        dtype=torch.bfloat16,
        device="cuda",
    )


def _skip_reason(name: str, problem, mode: str) -> str | None:
    """Why ``name`` cannot be timed here (None when it can)."""
    from deltalab.harness import peers
    from deltalab.variants import registry

    if name in PEERS:
        if os.environ.get("DELTALAB_PERF_PEERS") != "1":
            return "peers are timed only with DELTALAB_PERF_PEERS=1 (first calls autotune for minutes)"
        return None if name in peers.available() else f"peer {name} not installed"
    if name not in registry.names("delta_rule"):
        return f"variant {name!r} not registered"
    variant = registry.get(name)
    reason = variant.unsupported_reason(problem)
    if reason is None and mode != "fwd" and not variant.supports_backward:
        reason = "no backward"
    return reason


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("name", VARIANTS + PEERS)
def test_delta_rule_speed(cuda_benchmark, name, head_dim, mode):
    from deltalab.harness.timing import make_runner

    problem = paper_problem(head_dim)
    reason = _skip_reason(name, problem, mode)
    if reason:
        pytest.skip(reason)
    runner = make_runner(name, problem, None, mode)
    result = cuda_benchmark(
        runner,
        group=f"delta_rule {mode} D={head_dim} {problem.B}x{problem.T} H={problem.H} bf16",
        variant=name,
        mode=mode,
        shape=problem.describe(),
        gpu=torch.cuda.get_device_name(),
    )
    # the timed call really ran: forward output (or gradients) finite
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    for tensor in outputs:
        if tensor is not None:
            assert torch.isfinite(tensor).all()


def test_clock_measures_gpu_time(cuda_benchmark, benchmark):
    """The CUDA-event clock sees GPU work the host does not wait for: a torch.cuda._sleep spin (it
    returns to the host at once) must be timed as long as CUDA events around it say, not microseconds."""
    cycles = 2_000_000  # about 1 ms at H200 clocks
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    direct = []
    for _ in range(5):
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        direct.append(start.elapsed_time(end))
    direct.sort()
    reference_ms = direct[2]
    cuda_benchmark(lambda: torch.cuda._sleep(cycles), rep_ms=40.0, group="clock self-check")
    clock_ms = benchmark.stats.stats.median * 1e3
    assert reference_ms > 0.1
    assert abs(clock_ms - reference_ms) < 0.15 * reference_ms, (clock_ms, reference_ms)
