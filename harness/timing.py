"""Timing: honest, repeated measurements of one call, with every sample kept.

On CUDA each call is timed on the GPU with a pair of CUDA events (the loop of
``triton.testing.do_bench``, but keeping all samples): one untimed call first (Triton compiles
there), warm-up calls for ``warmup_ms``, then ``rep_ms`` worth of timed calls, the L2 cache flushed
(a 256 MB buffer zeroed) before each one, outside the timed region; the host's time to issue each call
is kept too (``extra["host_ms"]``, median): a call whose host time nears its GPU time leaves the GPU
idle inside the timed region. The first measurement on a device in a process first runs its call for
``SPIN_UP_MS`` more: an idle GPU sits at low clocks, and a few milliseconds of warm-up did not bring
them up (a sweep's first row read 1.4x slow on an H200 in two of six processes,
reports/h200-2026-11-29-s5/). Small problems can instead be captured once in a CUDA graph and
replayed, which removes the host's launch overhead from the samples.
On CPU (Triton's interpreter, torch on CPU) calls are timed with ``time.perf_counter``, with no
untimed call when ``warmup_ms`` is 0 (the interpreter compiles nothing and is slow).

``make_runner`` turns (variant, problem, config, mode) into a zero-argument closure over inputs built
once; ``time_variant`` times it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from deltalab.variants.registry import Problem

MODES = ("fwd", "bwd", "fwd+bwd")

# Bytes zeroed before each timed CUDA call so that no operand is still in L2 (H200: 60 MB of L2).
L2_FLUSH_BYTES = 256 * 1024 * 1024
# With cuda_graph="auto", calls shorter than this (ms) are timed as CUDA-graph replays.
GRAPH_AUTO_MS = 0.05
# GPU time (ms) of untimed calls before the first measurement on each device of a process (clock ramp-up).
SPIN_UP_MS = 300.0
_spun_up: set[int] = set()


@dataclass
class Timing:
    """Repeated samples of one call, in milliseconds, and their statistics.

    ``method`` says how they were taken: "cuda_events", "cuda_graph" or "perf_counter".
    """

    samples_ms: list[float]
    method: str = "cuda_events"
    flush_l2: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else math.nan

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms) if self.samples_ms else math.nan

    @property
    def std_ms(self) -> float:
        """Sample standard deviation (0 for a single sample)."""
        return statistics.stdev(self.samples_ms) if len(self.samples_ms) > 1 else 0.0

    @property
    def cv(self) -> float:
        """Coefficient of variation, std / mean."""
        mean = self.mean_ms
        return self.std_ms / mean if mean and math.isfinite(mean) else math.nan

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else math.nan

    def to_dict(self) -> dict:
        """The statistics, the method and all samples, JSON-able."""
        return {
            "median_ms": self.median_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "min_ms": self.min_ms,
            "cv": self.cv,
            "n_samples": self.n,
            "method": self.method,
            "flush_l2": self.flush_l2,
            "samples_ms": list(self.samples_ms),
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------- benchmark


def _rep_count(estimate_ms: float, budget_ms: float, min_reps: int, max_reps: int) -> int:
    """How many calls of ``estimate_ms`` each fit in ``budget_ms``, clamped to [min_reps, max_reps]."""
    wanted = int(budget_ms / max(estimate_ms, 1e-6))
    return max(min_reps, min(max_reps, wanted))


def _benchmark_cpu(fn: Callable[[], object], warmup_ms: float, rep_ms: float, min_reps: int, max_reps: int) -> Timing:
    """Wall-clock samples with time.perf_counter: one untimed call and more warm-up calls for
    ``warmup_ms`` (none when warmup_ms == 0: under Triton's interpreter nothing compiles and a call
    can take seconds), then timed calls until ``rep_ms`` has passed (at least ``min_reps``, at most
    ``max_reps``)."""
    if warmup_ms > 0:
        fn()  # untimed: first-call costs (imports, caches)
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(samples, method="perf_counter", flush_l2=False)


def _capture_graph(fn: Callable[[], object], device: torch.device) -> Optional["torch.cuda.CUDAGraph"]:
    """``fn`` captured in a CUDA graph (after warm-up calls on a side stream), or None if it cannot be
    captured (host synchronisation inside, unsupported ops)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize(device)
        return graph
    except Exception:  # noqa: BLE001 -- any capture failure means: time it eagerly
        torch.cuda.synchronize(device)
        return None


def _estimate_ms(call: Callable[[], object], cache: Optional[torch.Tensor], n: int = 5) -> float:
    """Mean time of one call (with its L2 flush) over ``n`` back-to-back calls, CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        if cache is not None:
            cache.zero_()
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def _benchmark_cuda(
    fn: Callable[[], object],
    device: torch.device,
    warmup_ms: float,
    rep_ms: float,
    flush_l2: bool,
    cuda_graph,
    min_reps: int,
    max_reps: int,
) -> Timing:
    """CUDA-event samples of ``fn`` (or of a replayed CUDA graph of it); see the module docstring."""
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        fn()  # untimed: Triton compiles (and autotunes, for peers) here
        torch.cuda.synchronize()
        cache = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if flush_l2 else None
        # the time of one call sizes the warm-up and the timed loop (and decides "auto" graphs)
        method, call = "cuda_events", fn
        estimate_ms = _estimate_ms(call, cache)
        # "auto" judges the call alone: the L2 flush in ``estimate_ms`` would hide a tiny call
        if cuda_graph is True or (cuda_graph == "auto" and _estimate_ms(call, None) < GRAPH_AUTO_MS):
            graph = _capture_graph(fn, device)
            if graph is not None:
                method, call = "cuda_graph", graph.replay
                estimate_ms = _estimate_ms(call, cache)
        spin_up_ms = 0.0 if device.index in _spun_up else SPIN_UP_MS
        _spun_up.add(device.index)
        n_warmup = _rep_count(estimate_ms, warmup_ms + spin_up_ms, 1, max(max_reps, 10_000))
        n_repeat = _rep_count(estimate_ms, rep_ms, min_reps, max_reps)

        for _ in range(n_warmup):
            call()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
        host_ms = []
        for i in range(n_repeat):
            if cache is not None:
                cache.zero_()  # outside the events: evicts the previous call's operands from L2
            starts[i].record()
            host_start = time.perf_counter()
            call()
            host_ms.append((time.perf_counter() - host_start) * 1e3)
            ends[i].record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(samples, method=method, flush_l2=flush_l2,
                  extra={"estimate_ms": estimate_ms, "warmup_calls": n_warmup, "spin_up_ms": spin_up_ms,
                         "host_ms": statistics.median(host_ms)})


def benchmark(
    fn: Callable[[], object],
    *,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    flush_l2: bool = True,
    cuda_graph: Union[bool, str] = False,
    min_reps: int = 5,
    max_reps: int = 1000,
    device=None,
) -> Timing:
    """Time ``fn()`` repeatedly and keep every sample (see the module docstring for the protocol).

    ``device``: where ``fn`` runs; defaults to the current CUDA device when CUDA is available, else
    CPU. ``cuda_graph=True`` captures ``fn`` in a CUDA graph and times its replays (falls back to eager
    calls, ``method="cuda_events"``, when capture fails); ``cuda_graph="auto"`` does so only for calls
    shorter than ``GRAPH_AUTO_MS``, where host launch overhead would dominate the samples.
    """
    if cuda_graph not in (True, False, "auto"):
        raise ValueError(f"cuda_graph: expected True, False or 'auto', got {cuda_graph!r}")
    if warmup_ms < 0 or rep_ms < 0:
        raise ValueError(f"warmup_ms, rep_ms: must be >= 0, got {warmup_ms}, {rep_ms}")
    if not 1 <= min_reps <= max_reps:
        raise ValueError(f"min_reps, max_reps: need 1 <= min_reps <= max_reps, got {min_reps}, {max_reps}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return _benchmark_cuda(fn, device, warmup_ms, rep_ms, flush_l2, cuda_graph, min_reps, max_reps)
    return _benchmark_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps)


# ---------------------------------------------------------------------------------------------- runners


def _default_device(problem: Problem, device) -> torch.device:
    if device is None:
        device = "cuda" if problem.device == "cuda" and torch.cuda.is_available() else "cpu"
    return torch.device(device)


def make_runner(
    variant: str,
    problem: Problem,
    config: Optional[dict] = None,
    mode: str = "fwd",
    *,
    family: str = "delta_rule",
    seed: int = 0,
    device=None,
) -> Callable[[], object]:
    """A zero-argument closure running one call of ``variant`` on ``problem`` in ``mode``.

    Inputs (``harness.numerics.random_inputs``, no initial state, no final state: the training call)
    are built once, outside the closure. Modes: "fwd" -- the forward under torch.no_grad(); "bwd" --
    the forward is run once with grad, the closure runs only the backward (autograd with
    retain_graph=True; gradients are returned rather than accumulated into .grad, so no extra add is
    timed; None for beta with SDPA, which ignores it); "fwd+bwd" -- forward and backward. Our
    variants run through the public op (``variant=``, ``config=``); the peer names of
    ``harness.peers`` ("fla_chunk", "fla_recurrent", "sdpa") run the peer on the same inputs.
    """
    from deltalab.harness import peers
    from deltalab.harness.numerics import random_inputs
    from deltalab.variants.op import block_diag_delta_rule, delta_rule

    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    device = _default_device(problem, device)
    inputs = random_inputs(problem, seed=seed, device=device, initial_state=False)
    leaves = [inputs.q, inputs.k, inputs.v, inputs.beta]

    if peers.is_peer(variant):
        forward = peers.make_forward(variant, problem, inputs)
    else:
        def forward(q, k, v, beta):
            kwargs = dict(cu_seqlens=inputs.cu_seqlens, variant=variant, config=config)
            if family == "block_diag":
                return block_diag_delta_rule(q, k, v, beta, block_size=problem.block_size, **kwargs)[0]
            return delta_rule(q, k, v, beta, **kwargs)[0]

    if mode == "fwd":
        def run_forward():
            with torch.no_grad():
                return forward(*leaves)

        return run_forward

    grad_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(problem.B, problem.T, problem.H, problem.V, generator=gen).to(device=device, dtype=problem.dtype)

    if mode == "bwd":
        out = forward(*grad_leaves)

        def run_backward():
            return torch.autograd.grad(out, grad_leaves, do, retain_graph=True, allow_unused=True)

        return run_backward

    def run_forward_backward():
        return torch.autograd.grad(forward(*grad_leaves), grad_leaves, do, allow_unused=True)

    return run_forward_backward


def time_variant(
    variant: str,
    problem: Problem,
    config: Optional[dict] = None,
    mode: str = "fwd",
    *,
    family: str = "delta_rule",
    seed: int = 0,
    **benchmark_kwargs,
) -> Timing:
    """``benchmark(make_runner(variant, problem, config, mode, ...), **benchmark_kwargs)``."""
    device = _default_device(problem, benchmark_kwargs.pop("device", None))
    runner = make_runner(variant, problem, config, mode, family=family, seed=seed, device=device)
    return benchmark(runner, device=device, **benchmark_kwargs)
