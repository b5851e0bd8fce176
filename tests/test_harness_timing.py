"""Timing (harness.timing), roofline arithmetic (harness.roofline), peers and the environment record.

CPU tests check the statistics on recorded samples, the sampling loop's bounds with a function of known
duration, and that the runners do what their mode says; the CUDA-event and CUDA-graph paths and the
ceilings are @pytest.mark.gpu (run on the GPU by the lead).
"""

import math
import statistics
import time

import pytest
import torch

from deltalab.harness import env, peers, roofline, timing
from deltalab.harness.timing import Timing, benchmark, make_runner, time_variant
from deltalab.variants import Cost, Problem, registry

RECORDED = [1.20, 1.05, 1.10, 0.98, 1.31, 1.02, 1.07]  # ms, as a run might record them


def test_timing_statistics_on_recorded_samples():
    t = Timing(list(RECORDED))
    assert t.n == 7
    assert t.median_ms == pytest.approx(1.07)
    assert t.mean_ms == pytest.approx(sum(RECORDED) / 7)
    assert t.std_ms == pytest.approx(statistics.stdev(RECORDED))
    assert t.cv == pytest.approx(statistics.stdev(RECORDED) / (sum(RECORDED) / 7))
    assert t.min_ms == 0.98
    d = t.to_dict()
    assert d["samples_ms"] == RECORDED and d["n_samples"] == 7 and d["median_ms"] == t.median_ms
    assert d["method"] == "cuda_events"


def test_timing_edge_cases():
    one = Timing([2.0])
    assert one.median_ms == one.mean_ms == one.min_ms == 2.0 and one.std_ms == 0.0 and one.cv == 0.0
    empty = Timing([])
    assert math.isnan(empty.median_ms) and math.isnan(empty.cv)


def test_cpu_benchmark_measures_the_function():
    calls = []

    def sleeper():
        calls.append(1)
        time.sleep(0.002)

    t = benchmark(sleeper, warmup_ms=1.0, rep_ms=10.0, min_reps=3, max_reps=50, device="cpu")
    assert t.method == "perf_counter"
    assert 3 <= t.n <= 50 and len(calls) >= t.n + 1  # + the untimed first call
    assert t.min_ms >= 2.0 and t.median_ms < 50


def test_cpu_benchmark_rep_bounds():
    calls = []
    t = benchmark(lambda: calls.append(1), warmup_ms=0, rep_ms=0, min_reps=4, max_reps=10, device="cpu")
    assert t.n == 4 and len(calls) == 4  # no warm-up: every call is timed
    t = benchmark(lambda: time.sleep(0.001), warmup_ms=0, rep_ms=1000, min_reps=1, max_reps=5, device="cpu")
    assert t.n == 5


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_reps"):
        benchmark(lambda: None, min_reps=0, device="cpu")
    with pytest.raises(ValueError, match="warmup_ms"):
        benchmark(lambda: None, warmup_ms=-1, device="cpu")
    with pytest.raises(ValueError, match="cuda_graph"):
        benchmark(lambda: None, cuda_graph="sometimes", device="cpu")


PROBLEM = Problem(B=2, T=24, H=2, K=16, V=8, dtype=torch.float32, device="cpu")


def test_runner_modes_compute_what_they_say():
    cfg = {"chunk_size": 8}
    o = make_runner("torch_chunk", PROBLEM, cfg, "fwd")()
    assert o.shape == (2, 24, 2, 8) and torch.isfinite(o).all() and not o.requires_grad
    backward_only = make_runner("torch_chunk", PROBLEM, cfg, "bwd")
    grads1, grads2 = backward_only(), backward_only()  # the graph is retained; nothing accumulates
    both = make_runner("torch_chunk", PROBLEM, cfg, "fwd+bwd")()
    assert len(grads1) == 4
    for g1, g2, g3 in zip(grads1, grads2, both):
        assert torch.isfinite(g1).all() and g1.abs().sum() > 0
        assert torch.equal(g1, g2) and torch.allclose(g1, g3, rtol=1e-5, atol=1e-6)
    # the same inputs as the reference would see: the runner's o matches the reference on them
    o_ref = make_runner("reference", PROBLEM, None, "fwd")()
    assert (o - o_ref).norm() / o_ref.norm() < 1e-5
    with pytest.raises(ValueError, match="mode"):
        make_runner("torch_chunk", PROBLEM, cfg, "forward")


def test_time_variant_on_cpu():
    t = time_variant("torch_chunk", PROBLEM, None, "fwd+bwd", warmup_ms=0, rep_ms=0, min_reps=3)
    assert t.n == 3 and t.method == "perf_counter" and all(s > 0 for s in t.samples_ms)


def test_sdpa_peer_runs_on_cpu_and_fla_says_why_not():
    o = make_runner("sdpa", PROBLEM, None, "fwd")()
    assert o.shape == (2, 24, 2, 8) and torch.isfinite(o).all()
    grads = make_runner("sdpa", PROBLEM, None, "fwd+bwd")()
    assert grads[3] is None and torch.isfinite(grads[0]).all()  # SDPA has no beta
    assert "sdpa" in peers.available()
    assert peers.unsupported_reason("fla_chunk", PROBLEM) is not None
    varlen = Problem(B=1, T=24, H=2, K=16, V=8, device="cpu", num_seqs=2, varlen=True)
    assert "varlen" in peers.unsupported_reason("sdpa", varlen)
    with pytest.raises(ValueError, match="unknown peer"):
        peers.unsupported_reason("nope", PROBLEM)


def test_peer_costs():
    p = Problem(B=1, T=1024, H=2, K=64, V=64, dtype=torch.bfloat16)
    sdpa = peers.cost("sdpa", p, "fwd")
    assert sdpa.flops == pytest.approx(2 * 1024**2 * 128)  # causal: T^2/2 pairs x 2(K+V) FLOPs per head
    assert peers.cost("sdpa", p, "fwd+bwd").flops == pytest.approx(3.5 * sdpa.flops)
    assert peers.cost("fla_chunk", p, "fwd").flops == registry.delta_rule_cost(p, 64).flops


# ---------------------------------------------------------------------------------------------- roofline


def test_floor_and_achieved_arithmetic():
    ceilings = {"copy_gbps": 4000.0, "matmul_bf16_tflops": 700.0, "matmul_fp32_tflops": 50.0}
    memory_bound = Cost(flops=1e9, bytes=4e9)  # 1 ms of traffic, ~0.0014 ms of bf16 math
    assert roofline.floor_ms(memory_bound, ceilings, torch.bfloat16) == pytest.approx(1.0)
    compute_bound = Cost(flops=1e11, bytes=1e6)
    assert roofline.floor_ms(compute_bound, ceilings, torch.float32) == pytest.approx(2.0)  # fp32 rate
    assert roofline.floor_ms(compute_bound, ceilings, torch.float16) == pytest.approx(1e11 / 700e12 * 1e3)
    got = roofline.achieved(Cost(flops=2e9, bytes=3e6), ms=2.0)  # 1e12 FLOP/s, 1.5e9 B/s
    assert got == pytest.approx({"tflops": 1.0, "gbps": 1.5})


def test_mode_cost_scales_the_variants_own_model():
    p = Problem(B=1, T=4096, H=16, K=128, V=128, dtype=torch.bfloat16)
    variant = registry.get("torch_chunk")
    fwd = roofline.mode_cost(variant, p, {"chunk_size": 64}, "fwd")
    assert fwd == registry.delta_rule_cost(p, 64)
    bwd = roofline.mode_cost(variant, p, {"chunk_size": 64}, "bwd")
    assert bwd.flops == pytest.approx(registry.delta_rule_cost(p, 64, backward=True).flops)
    both = roofline.mode_cost(variant, p, None, "fwd+bwd")
    assert both.flops == pytest.approx(fwd.flops + bwd.flops)


def test_cpu_ceilings_are_labelled():
    c = roofline.measure_ceilings("cpu")
    assert c["device"] == "cpu" and "indicative" in c["method"]
    assert all(c[k] > 0 and math.isfinite(c[k]) for k in ("copy_gbps", "matmul_bf16_tflops", "matmul_fp32_tflops"))


# ---------------------------------------------------------------------------------------------- environment


def test_environment_fields():
    e = env.environment("cpu")
    for key in ("gpu", "compute_capability", "sm_count", "clocks", "driver", "cuda", "torch", "triton",
                "deltalab", "python", "git_commit", "date", "hostname", "interpreter"):
        assert key in e
    assert e["gpu"] == "cpu" and e["torch"] == torch.__version__ and e["date"].endswith("+00:00")
    assert env.gpu_slug({"gpu": "NVIDIA H200"}) == "nvidia-h200"


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_event_and_graph_timing():
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    t = benchmark(lambda: a @ a, warmup_ms=5, rep_ms=20, device="cuda")
    assert t.method == "cuda_events" and t.n >= 5 and 0 < t.median_ms < 10
    assert 0 < t.extra["host_ms"] < 10  # the host's time to issue one call
    g = benchmark(lambda: a @ a, warmup_ms=5, rep_ms=20, cuda_graph=True, device="cuda")
    assert g.method == "cuda_graph" and g.n >= 5 and 0 < g.median_ms < 10
    # both measure the same matmul: within a factor of two of each other
    assert 0.5 < g.median_ms / t.median_ms < 2
    # "auto" replays a graph only for calls too short for eager launches to be timed fairly
    tiny = torch.randn(16, device="cuda")
    assert benchmark(lambda: tiny + 1, warmup_ms=1, rep_ms=5, cuda_graph="auto", device="cuda").method == "cuda_graph"
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)  # ~2 ms per product
    assert benchmark(lambda: big @ big, warmup_ms=1, rep_ms=5, cuda_graph="auto", device="cuda").method == "cuda_events"
    # a call that synchronises the host cannot be captured: timed eagerly instead
    synced = benchmark(lambda: (a @ a).sum().item(), warmup_ms=1, rep_ms=5, cuda_graph=True, device="cuda")
    assert synced.method == "cuda_events" and synced.n >= 5


@pytest.mark.gpu
def test_first_cuda_measurement_spins_the_gpu_up_once():
    """The first measurement on a device in a process runs SPIN_UP_MS more of untimed calls (clock ramp);
    later ones only their warm-up."""
    a = torch.randn(1024, 1024, device="cuda")
    timing._spun_up.discard(torch.cuda.current_device())
    first = benchmark(lambda: a @ a, warmup_ms=1, rep_ms=5, device="cuda")
    again = benchmark(lambda: a @ a, warmup_ms=1, rep_ms=5, device="cuda")
    assert first.extra["spin_up_ms"] == timing.SPIN_UP_MS and again.extra["spin_up_ms"] == 0
    assert first.extra["warmup_calls"] > again.extra["warmup_calls"]


@pytest.mark.gpu
def test_gpu_ceilings_and_environment():
    c = roofline.measure_ceilings("cuda")
    assert c["copy_gbps"] > 200 and c["matmul_bf16_tflops"] > c["matmul_fp32_tflops"] > 1
    e = env.environment("cuda")
    assert e["gpu"] != "cpu" and e["compute_capability"] and e["sm_count"] > 0


@pytest.mark.gpu
def test_gpu_runner_modes():
    p = Problem(B=2, T=512, H=4, K=64, V=64, dtype=torch.bfloat16)
    for mode in ("fwd", "bwd", "fwd+bwd"):
        t = time_variant("torch_chunk", p, None, mode, warmup_ms=2, rep_ms=10)
        assert t.n >= 5 and t.median_ms > 0
