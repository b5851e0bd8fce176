"""Variant "chunk": the Triton chunkwise WY kernels, forward and backward, against the float64 reference.

On CPU the kernels run under Triton's interpreter (slow: shapes stay small); float32 with
input_precision "ieee" and float16 are checked there (the interpreter's bfloat16 tl.dot is not usable).
Tests marked ``gpu`` check bfloat16/float16/float32 at larger shapes, sampled configs, and the long-sequence
stability of chunk 128 in bfloat16 on a CUDA device.

Every check: fresh random inputs (keys L2-normalised), random upstream gradients for o and the final
state, every intermediate buffer of the op poisoned with NaN (so an element a kernel forgets to write
shows up), NaN/Inf always failing.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import sys
import warnings
from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

from deltalab.harness.numerics import random_inputs, rel_error, tolerance
from deltalab.variants import delta_rule, registry
from deltalab.variants.chunk import chunk_layout
from deltalab.variants.chunk_config import (
    DEFAULT_CONFIG,
    MAX_SCAN_STAGES,
    SPACE,
    _state_bwd_needs,
    _state_needs,
    _state_no_output_needs,
    constraints,
    device_limits,
    padded,
    resolve_plan,
)
from deltalab.variants.chunk_intra import chunk_inverse, load_tm
from deltalab.variants.registry import Problem

chunk_module = importlib.import_module("deltalab.variants.chunk")  # its launchers, spied on by some tests

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter (tests/conftest.py)

OUTPUTS = ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0")


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled floating tensors while a test runs."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))


def run_op(variant: str, inputs, config=None, *, upstream_seed: int = 1, backward: bool = True) -> dict:
    """o, final state and (with ``backward``) every gradient, for random upstream gradients drawn in
    float64 and rounded to the output dtypes, so that every variant sees the same values."""
    leaves = [x.detach().clone().requires_grad_(backward) for x in inputs.tensors()]
    q, k, v, beta = leaves[:4]
    h0 = leaves[4] if len(leaves) > 4 else None
    o, final_state = delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True,
                                cu_seqlens=inputs.cu_seqlens, variant=variant, config=config)
    out = {"o": o.detach(), "final_state": final_state.detach()}
    if backward:
        gen = torch.Generator().manual_seed(upstream_seed)
        do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(o.device)
        dht = torch.randn(final_state.shape, generator=gen, dtype=torch.float64).to(final_state.dtype).to(o.device)
        torch.autograd.backward([o, final_state], [do, dht])
        out.update(dq=q.grad, dk=k.grad, dv=v.grad, dbeta=beta.grad, dh0=None if h0 is None else h0.grad)
    return out


def assert_close(out: dict, ref: dict, dtype: torch.dtype, fwd_tol=None, grad_tol=None, label: str = "") -> None:
    fwd_tol = tolerance(dtype) if fwd_tol is None else fwd_tol
    grad_tol = tolerance(dtype, gradient=True) if grad_tol is None else grad_tol
    errors = {}
    for name in OUTPUTS:
        if name in out and out[name] is not None:
            assert torch.isfinite(out[name]).all(), f"{label} {name} holds NaN/Inf"
            errors[name] = rel_error(out[name], ref[name])
    bad = {n: e for n, e in errors.items() if e > (fwd_tol if n in ("o", "final_state") else grad_tol)}
    assert not bad, f"{label} errors beyond tolerance: {bad} (all: {errors})"


def check_against_reference(problem: Problem, config: dict, *, seed: int = 0, initial_state: bool = True,
                            backward: bool = True) -> dict:
    inputs = random_inputs(problem, seed=seed, device=DEVICE, initial_state=initial_state)
    out = run_op("chunk", inputs, config, backward=backward)
    ref = run_op("reference", inputs.to(torch.float64), backward=backward)
    assert_close(out, ref, problem.dtype, label=f"{problem.describe()} {config}")
    return out


# ---------------------------------------------------------------------------------------------- CPU + GPU
FP32_CASES = [
    # chunk, B, T, H, K, V: T never a multiple of the chunk, K != V, non-powers of two
    pytest.param(16, 2, 37, 1, 48, 32, id="c16-K48-V32-T37"),
    pytest.param(32, 1, 70, 1, 32, 100, id="c32-K32-V100-T70"),
    pytest.param(64, 1, 90, 1, 100, 48, id="c64-K100-V48-T90"),
    pytest.param(128, 1, 150, 1, 64, 40, id="c128-K64-V40-T150"),
]


@pytest.mark.parametrize("inverse", ["workspace", "kernel", "registers"])
@pytest.mark.parametrize("chunk_size, B, T, H, K, V", FP32_CASES)
def test_float32_matches_reference(poisoned_empty, chunk_size, B, T, H, K, V, inverse):
    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=torch.float32, device=DEVICE)
    check_against_reference(problem, {"chunk_size": chunk_size, "input_precision": "ieee", "inverse": inverse})


@pytest.mark.parametrize("inverse", ["workspace", "kernel", "registers"])
@pytest.mark.parametrize("chunk_size, B, T, K, V", [(64, 2, 100, 64, 48), (128, 1, 140, 48, 100)])
def test_float16_matches_reference(poisoned_empty, chunk_size, B, T, K, V, inverse):
    problem = Problem(B=B, T=T, H=1, K=K, V=V, dtype=torch.float16, device=DEVICE)
    check_against_reference(problem, {"chunk_size": chunk_size, "inverse": inverse})


@pytest.mark.parametrize("save", ["intermediates", "inputs"])
@pytest.mark.parametrize("wy_inverse", ["stored", "recompute"])
def test_inverse_kernel_gives_the_workspace_inverse(poisoned_empty, save, wy_inverse):
    """inverse="kernel" runs the same inverse in a kernel of its own and the intra-chunk kernel reads Tm
    back: float32 answers match the in-kernel inverse (packed sequences, partial chunks), with Tm kept
    for the backward, recomputed by it, or inverted again in the WY kernel."""
    problem = Problem(B=1, T=150, H=2, K=40, V=48, dtype=torch.float32, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=23, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 37, 100, 150], dtype=torch.int32, device=DEVICE)
    config = {"chunk_size": 32, "input_precision": "ieee", "save_for_backward": save, "wy_inverse": wy_inverse}
    ref = run_op("reference", inputs.to(torch.float64))
    kernel = run_op("chunk", inputs, dict(config, inverse="kernel"))
    assert_close(kernel, ref, torch.float32, label="inverse kernel")
    workspace = run_op("chunk", inputs, dict(config, inverse="workspace"))
    for name in workspace:
        assert rel_error(kernel[name], workspace[name]) <= 1e-6, name


@pytest.mark.parametrize("chunk_size, dtype", [(32, torch.float32), (64, torch.float16)])
def test_gradient_key_grid_matches_the_key_loop(poisoned_empty, chunk_size, dtype):
    """grads_keys="grid" (a gradient program per key tile, each recomputing S) gives the key loop's
    answers bit for bit and the reference's within tolerance: packed sequences, a partial last key tile
    (K = 72 in 32-wide tiles)."""
    problem = Problem(B=1, T=150, H=2, K=72, V=40, dtype=dtype, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=31, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 37, 100, 150], dtype=torch.int32, device=DEVICE)
    config = {"chunk_size": chunk_size, "input_precision": "ieee", "block_k_grads": 32}
    assert resolve_plan(dict(DEFAULT_CONFIG, **config, grads_keys="grid"), replace(problem, device="cuda")).grads_key_grid
    grid = run_op("chunk", inputs, dict(config, grads_keys="grid"))
    assert_close(grid, run_op("reference", inputs.to(torch.float64)), dtype, label="gradient key grid")
    loop = run_op("chunk", inputs, dict(config, grads_keys="loop"))
    for name in loop:
        assert torch.equal(grid[name], loop[name]), name


@pytest.mark.parametrize("chunk_size", [32, 64])
def test_register_inverse_in_the_wy_backward(poisoned_empty, chunk_size):
    """The WY backward inverting again (wy_inverse="recompute") with the register inverse, float32."""
    problem = Problem(B=1, T=2 * chunk_size + 5, H=2, K=48, V=40, dtype=torch.float32, device=DEVICE)
    check_against_reference(problem, {"chunk_size": chunk_size, "inverse": "registers", "input_precision": "ieee",
                                      "wy_inverse": "recompute", "save_for_backward": "inputs"}, seed=4)


@pytest.mark.parametrize("chunk_size, dtype", [(32, torch.float32), (64, torch.float16)])
def test_varlen_with_initial_state(poisoned_empty, chunk_size, dtype):
    # packed sequences of 7 (shorter than a chunk), 0 (empty), 70 (several chunks, partial last) and
    # 43 tokens; each starts from its own initial state
    offsets = [0, 7, 7, 77, 120]
    problem = Problem(B=1, T=120, H=1, K=32, V=48, dtype=dtype, num_seqs=4, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=3, device=DEVICE)
    inputs.cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    out = run_op("chunk", inputs, {"chunk_size": chunk_size})
    ref = run_op("reference", inputs.to(torch.float64))
    assert_close(out, ref, dtype, label=f"varlen {offsets}")
    # the empty sequence passes its initial state through, and its gradient back
    assert torch.equal(out["final_state"][1], inputs.initial_state[1])


@pytest.mark.parametrize("wy_inverse", ["stored", "recompute"])
@pytest.mark.parametrize("chunk_size, dtype", [(16, torch.float32), (64, torch.float16), (128, torch.float32)])
def test_both_wy_inverse_modes(poisoned_empty, chunk_size, dtype, wy_inverse):
    """wy_inverse="stored" (default): the backward's intra-chunk recompute writes Tm and the WY kernel
    reads it; "recompute": the WY kernel inverts again -- same answers, packed sequences and partial
    chunks included."""
    problem = Problem(B=1, T=150, H=2, K=48, V=40, dtype=dtype, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=8, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 37, 37 + min(chunk_size, 64) + 9, 150], dtype=torch.int32, device=DEVICE)
    config = {"chunk_size": chunk_size, "input_precision": "ieee", "wy_inverse": wy_inverse}
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).store_tm == (wy_inverse == "stored")
    out = run_op("chunk", inputs, config)
    assert_close(out, run_op("reference", inputs.to(torch.float64)), dtype, label=f"{wy_inverse} Tm, chunk {chunk_size}")


@pytest.mark.parametrize("chunk_size, dtype", [(32, torch.float32), (64, torch.float16)])
def test_kept_intermediates_match_recomputed_ones(poisoned_empty, chunk_size, dtype):
    """save_for_backward="intermediates" (default: the forward keeps W, U, Aqk, Tm, the chunk states and
    Vn for the backward) and "inputs" (the backward recomputes them) run the same kernels on the same
    values: identical outputs and gradients, both against the reference; packed sequences, initial states."""
    problem = Problem(B=1, T=130, H=2, K=40, V=48, dtype=dtype, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=12, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 50, 50 + chunk_size + 3, 130], dtype=torch.int32, device=DEVICE)
    check_kept_against_recomputed(inputs, {"chunk_size": chunk_size, "input_precision": "ieee"}, dtype)


def check_kept_against_recomputed(inputs, config: dict, dtype: torch.dtype) -> None:
    """save_for_backward "intermediates" and "inputs": identical outputs and gradients, within tolerance of
    the reference."""
    kept = run_op("chunk", inputs, dict(config, save_for_backward="intermediates"))
    recomputed = run_op("chunk", inputs, dict(config, save_for_backward="inputs"))
    assert_close(kept, run_op("reference", inputs.to(torch.float64)), dtype, label="kept intermediates")
    for name in OUTPUTS:
        assert torch.equal(kept[name], recomputed[name]), name


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("chunk_size, dtype, block_v_output", [(32, torch.float32, 16), (64, torch.float16, 0)])
def test_separate_output_matches_reference(poisoned_empty, chunk_size, dtype, block_v_output, grad):
    """output="separate": the scan stores every chunk's state and Vn, a parallel kernel reads O out --
    same answers as the fused scan (packed sequences, initial states, partial chunks; three V tiles per
    chunk with block_v_output=16), with the intermediates kept for the backward or, for inference, in
    buffers of its own."""
    problem = Problem(B=1, T=130, H=2, K=40, V=48, dtype=dtype, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=16, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 50, 50 + chunk_size + 3, 130], dtype=torch.int32, device=DEVICE)
    config = {"chunk_size": chunk_size, "input_precision": "ieee", "output": "separate",
              "block_v_output": block_v_output}
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).separate_output
    out = run_op("chunk", inputs, config, backward=grad)
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=grad), dtype, label="separate output")
    fused = run_op("chunk", inputs, dict(config, output="fused"), backward=False)
    assert rel_error(out["o"], fused["o"]) <= tolerance(dtype)
    assert torch.equal(out["final_state"], fused["final_state"])  # the same scan


@pytest.mark.parametrize("chunk_size, dtype, block_v_tm", [(32, torch.float32, 16), (64, torch.float16, 0)])
def test_tm_scan_matches_reference(poisoned_empty, chunk_size, dtype, block_v_tm):
    """forward_scan="tm": the inference forward's scan forms Vn = Tm diag(b) (V - K h) and Aqk from its own
    K and Q tiles (no intra-chunk kernel): the reference's answers on packed sequences with initial states
    and partial chunks (three V tiles with block_v_tm=16), close to the W / U scan's; a differentiated call
    keeping its intermediates runs the W / U scan (the same bits), one keeping only its inputs the Tm scan."""
    problem = Problem(B=1, T=130, H=2, K=40, V=48, dtype=dtype, num_seqs=3, varlen=True, device=DEVICE)
    inputs = random_inputs(problem, seed=18, device=DEVICE)
    inputs.cu_seqlens = torch.tensor([0, 50, 50 + chunk_size + 3, 130], dtype=torch.int32, device=DEVICE)
    config = {"chunk_size": chunk_size, "input_precision": "ieee", "forward_scan": "tm", "block_v_tm": block_v_tm}
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).tm_scan
    out = run_op("chunk", inputs, config, backward=False)
    ref = run_op("reference", inputs.to(torch.float64), backward=False)
    assert_close(out, ref, dtype, label="tm scan")
    wu = run_op("chunk", inputs, dict(config, forward_scan="wu"), backward=False)
    assert not torch.equal(out["o"], wu["o"])  # a different kernel ran
    assert rel_error(out["o"], wu["o"]) <= tolerance(dtype)
    trained = run_op("chunk", inputs, config)
    assert torch.equal(trained["o"], wu["o"])
    assert_close(trained, run_op("reference", inputs.to(torch.float64)), dtype, label="tm scan, training")
    recomputing = run_op("chunk", inputs, dict(config, save_for_backward="inputs"))
    assert torch.equal(recomputing["o"], out["o"])


@pytest.mark.parametrize("B, K, dtype, tm", [
    (8, 64, torch.bfloat16, True),     # 64-wide tiles
    (2, 64, torch.bfloat16, True),     # 32-wide
    (1, 64, torch.bfloat16, True),     # 64-wide on 4 segments a sequence (scan_segments)
    (4, 128, torch.bfloat16, True),
    (1, 128, torch.float16, True),
    (8, 256, torch.bfloat16, True),
    (8, 128, torch.float32, False),    # unmeasured in float32
])
def test_auto_forward_scan_is_tm_where_its_tiles_are_wide(B, K, dtype, tm):
    problem = Problem(B=B, T=16384 // B, H=2048 // K, K=K, V=K, dtype=dtype)
    plan = resolve_plan(DEFAULT_CONFIG, problem)
    assert plan.tm_scan is tm
    assert (plan.scan_tm.block_v >= 32) is (tm or dtype == torch.float32)
    assert not resolve_plan(dict(DEFAULT_CONFIG, forward_scan="wu"), problem).tm_scan
    assert not resolve_plan(dict(DEFAULT_CONFIG, chunk_size=32), problem).tm_scan
    assert constraints(DEFAULT_CONFIG, problem) is None
    # without segments, 16-wide at B = 1: the longer chain per step costs more than the kernel it saves
    assert resolve_plan(dict(DEFAULT_CONFIG, scan_segments=1), problem).tm_scan is (B > 1 and tm)


def test_tm_scan_config_is_checked():
    problem = Problem(B=1, T=256, H=2, K=64, V=64, dtype=torch.bfloat16)
    assert "output=\"separate\" needs" in constraints(dict(DEFAULT_CONFIG, forward_scan="tm", output="separate"), problem)
    assert not resolve_plan(dict(DEFAULT_CONFIG, output="separate"), problem).tm_scan
    assert "block_v_tm=128 exceeds V=64" in constraints(dict(DEFAULT_CONFIG, block_v_tm=128), problem)
    wide = Problem(B=1, T=256, H=2, K=256, V=256, dtype=torch.bfloat16)
    assert "stages_tm=1" in constraints(dict(DEFAULT_CONFIG, forward_scan="tm", stages_tm=1), wide)
    assert "forward_scan='tm'" in constraints(dict(DEFAULT_CONFIG, forward_scan="tm", block_v_tm=128, warps_tm=1), wide)


@pytest.mark.parametrize("B, T, K, V, segments, tma_runs, order", [
    (2, 64, 32, 48, 1, True, "kv"),     # 16-wide V tiles: three per head
    (1, 128, 32, 32, 2, True, "kv"),    # on segments (16-wide summary tiles: value and key tiles)
    (1, 128, 32, 32, 2, True, "vk"),    # their transposes (summary_order)
    (2, 40, 32, 32, 1, False, "kv"),    # T not whole chunks: pointers
    (2, 64, 24, 32, 1, False, "kv"),    # K short of its tile: a tile would read the next head's keys
])
def test_tm_scan_through_tensor_descriptors(poisoned_empty, monkeypatch, B, T, K, V, segments, tma_runs, order):
    """tma="on": the Tm scan's q, k, v, Tm and O tiles (and the segment summaries' k, v and Tm tiles) through
    tensor descriptors where whole tiles of whole chunks exist, else pointers; either way the reference's o
    and final state, and the pointer scan's."""
    problem = Problem(B=B, T=T, H=2, K=K, V=V, dtype=torch.float32, device=DEVICE)
    inputs = random_inputs(problem, seed=37, device=DEVICE, initial_state=True)
    config = {"chunk_size": 16, "input_precision": "ieee", "forward_scan": "tm", "scan_segments": segments,
              "block_v_tm": 16, "tma": "on", "summary_order": order}
    views = _spy_on_tma_views(monkeypatch)
    out = run_op("chunk", inputs, config, backward=False)
    launches = 2 if segments > 1 else 1  # the segments' summaries, then the scan
    assert [view is not None for view in views] == [tma_runs] * launches
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=False), torch.float32, label="tma")
    pointers = run_op("chunk", inputs, dict(config, tma="off"), backward=False)
    assert views[launches:] == [None] * launches
    assert rel_error(out["o"], pointers["o"]) <= 1e-5
    assert resolve_plan(dict(DEFAULT_CONFIG, tma="auto"), replace(problem, device="cpu")).tma == "off"


def _spy_on_tma_views(monkeypatch) -> list:
    """What each call of chunk.tma_views returns from now on (descriptors, or None where the kernels take pointers)."""
    views = []
    tma_views = chunk_module.tma_views
    monkeypatch.setattr(chunk_module, "tma_views", lambda *args: views.append(tma_views(*args)) or views[-1])
    return views


def _fake_gpu(monkeypatch, capability) -> None:
    """A CUDA GPU of compute capability ``capability()`` as chunk_config sees it, with H200 limits (SMs, shared
    memory: the lru-cached device_limits would otherwise ask the CPU build of torch for its properties)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: capability())
    monkeypatch.setattr(importlib.import_module("deltalab.variants.chunk_config"), "device_limits",
                        lambda: (132, 232448))


def test_tma_on_is_refused_on_a_gpu_without_it(monkeypatch):
    """tma="on" on a CUDA GPU older than Hopper: a clear refusal naming the setting, before any launch; "auto"
    there takes pointers; the interpreter (device cpu) runs descriptors."""
    _fake_gpu(monkeypatch, lambda: (8, 0))
    problem = Problem(B=1, T=320, H=3, K=64, V=64, dtype=torch.bfloat16, device="cuda")
    assert 'tma="on": tensor descriptors need compute capability 9.0' in constraints(dict(DEFAULT_CONFIG, tma="on"),
                                                                                        problem)
    assert "this GPU has 8.0" in constraints(dict(DEFAULT_CONFIG, tma="on"), problem)
    assert constraints(dict(DEFAULT_CONFIG, tma="auto"), problem) is None
    assert resolve_plan(dict(DEFAULT_CONFIG, tma="auto"), problem).tma == "off"
    assert constraints(dict(DEFAULT_CONFIG, tma="on"), replace(problem, device="cpu")) is None


def test_gluon_inverse_is_chosen_and_refused_where_it_should_be(monkeypatch):
    """inverse_gluon: "auto" takes the Gluon inverse only on a GPU of compute capability 9 (where it was
    measured), 16-bit, chunk 16-64; "on" elsewhere is refused before any launch, naming the setting and the
    reason -- in the interpreter (device cpu), float32, chunk 128, one warp, a GPU older than 8.0."""
    problem = Problem(B=1, T=576, H=3, K=64, V=64, dtype=torch.bfloat16, device="cpu")
    on = dict(DEFAULT_CONFIG, inverse_gluon="on")
    assert not resolve_plan(DEFAULT_CONFIG, problem).inverse_gluon
    assert "not device 'cpu'" in constraints(on, problem) and 'inverse_gluon="on"' in constraints(on, problem)
    capability = [(9, 0)]
    _fake_gpu(monkeypatch, lambda: capability[0])
    gpu = replace(problem, device="cuda")
    assert resolve_plan(DEFAULT_CONFIG, gpu).inverse_gluon and constraints(on, gpu) is None
    # its launch: whole keys up to 128 under a 128-register cap; 64-wide key tiles, uncapped, at K = 256
    launch = resolve_plan(DEFAULT_CONFIG, replace(gpu, K=128, V=128)).inverse_kernel
    assert (launch.block_k, launch.max_regs, launch.options["maxnreg"]) == (128, 128, 128)
    launch = resolve_plan(DEFAULT_CONFIG, replace(gpu, K=256, V=256)).inverse_kernel
    assert (launch.block_k, launch.max_regs) == (64, 0)
    assert resolve_plan(dict(DEFAULT_CONFIG, inverse_gluon="off"), replace(gpu, K=128, V=128)).inverse_kernel.max_regs == 0
    assert not resolve_plan(dict(DEFAULT_CONFIG, inverse_gluon="off"), gpu).inverse_gluon
    for config, other, reason in [
        (on, replace(gpu, dtype=torch.float32), "16-bit inputs"),
        (dict(on, chunk_size=128), gpu, "chunk_size in (16, 32, 64)"),
        (dict(on, warps_inverse=1), gpu, "at least 2 warps"),
    ]:
        assert reason in constraints(config, other), (config, other)
        assert not resolve_plan(dict(config, inverse_gluon="auto"), other).inverse_gluon
    # (plans are cached per config and problem -- one GPU a process: each capability here, and in the tma test,
    # gets shapes of its own)
    capability[0] = (8, 0)  # "on" runs (mma_v2 is there), "auto" keeps the Triton kernel (not measured)
    ampere = replace(gpu, T=640)
    assert constraints(on, ampere) is None and not resolve_plan(DEFAULT_CONFIG, ampere).inverse_gluon
    capability[0] = (7, 5)
    assert "compute capability 8.0 or later, this GPU has 7.5" in constraints(on, replace(gpu, T=704))


def test_gluon_scan_and_summary_order_are_chosen_and_refused_where_they_should_be(monkeypatch):
    """scan_gluon: "auto" takes the Gluon Tm scan on compute capability 9 at K = 64 and 128 in 16 bits, chunk 64,
    where the call takes descriptors; "on" elsewhere is refused before any
    launch, naming the setting and the reason -- in the interpreter, float32, chunk 32, K = 96, a GPU that is
    not a Hopper (8.0, 10.0), a config without the Tm scan. summary_order "auto": the transposed summaries
    ("vk": 64-wide tiles, 3+ stages) at padded K = 128 in 16 bits, chunk 64; "kv" elsewhere."""
    problem = Problem(B=1, T=1024, H=4, K=128, V=128, dtype=torch.bfloat16, device="cpu")
    base = dict(DEFAULT_CONFIG, forward_scan="tm")
    on = dict(base, scan_gluon="on")
    segments = dict(base, scan_segments=4)
    plan = resolve_plan(segments, problem)
    assert plan.scan_gluon == "off" and plan.summary_order == "vk" and plan.segments == 4
    assert (plan.summary.block_v, plan.summary.stages >= 3) == (64, True)
    assert resolve_plan(segments, replace(problem, K=64, V=64)).summary_order == "kv"
    assert resolve_plan(segments, replace(problem, dtype=torch.float32)).summary_order == "kv"
    assert resolve_plan(dict(segments, summary_order="kv"), problem).summary.block_v < 64  # (few programs: narrower)
    assert 'scan_gluon="on"' in constraints(on, problem) and "not device 'cpu'" in constraints(on, problem)
    capability = [(9, 0)]
    _fake_gpu(monkeypatch, lambda: capability[0])
    gpu = replace(problem, device="cuda", T=1088)
    assert resolve_plan(base, gpu).scan_gluon == "auto" and constraints(on, gpu) is None
    assert resolve_plan(on, gpu).scan_gluon == "on"
    assert resolve_plan(base, replace(gpu, K=64, V=64)).scan_gluon == "auto"
    assert constraints(on, replace(gpu, K=64, V=64)) is None
    for config, other, reason in [
        (on, replace(gpu, dtype=torch.float32), "16-bit inputs"),
        (dict(on, chunk_size=32), gpu, "chunk_size=64"),
        (on, replace(gpu, K=96, V=96), "K in (64, 128)"),
        (on, replace(gpu, V=96), "V a multiple of 64"),
        (on, replace(gpu, varlen=True, num_seqs=3), "fixed-length batches"),
        (dict(on, forward_scan="wu"), gpu, "the Tm scan"),
    ]:
        assert reason in constraints(config, other), (config, other)
        assert resolve_plan(dict(config, scan_gluon="auto"), other).scan_gluon == "off"
    for other_capability, T in (((8, 0), 1152), ((10, 0), 1216)):  # (plans are cached per problem: shapes of their own)
        capability[0] = other_capability
        other = replace(gpu, T=T)
        assert "compute capability 9.x" in constraints(on, other)
        assert resolve_plan(base, other).scan_gluon == "off"


def test_gluon_scan_launch_passes_what_the_kernel_expects(monkeypatch):
    """chunk._scan_gluon's launch, with the kernel replaced by a recorder (the interpreter cannot run Gluon):
    its grid (64-wide V tiles x segments x heads), descriptors of [B T, H D] views with [C, width] blocks and
    the shared-memory layouts chunk_aot compiles, the segment length, and "auto" outside a graph capture (no
    descriptors) launching nothing."""
    from deltalab.variants import chunk_scan_tm_gluon

    launches = {}
    monkeypatch.setattr(chunk_scan_tm_gluon, "chunk_scan_tm_gluon_kernel", _LaunchRecorder(launches, "scan"))
    B, T, H, K, V, segments = 1, 512, 2, 128, 192, 4
    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=torch.bfloat16, device="cpu")
    inputs = random_inputs(problem, seed=5, device="cpu", initial_state=True)
    plan = replace(resolve_plan(dict(DEFAULT_CONFIG, forward_scan="tm", scan_segments=segments), problem),
                   scan_gluon="on")
    layout = chunk_layout(B, T, None, plan.chunk_size, "cpu")
    tm = torch.empty(B, T, H, plan.chunk_size, dtype=torch.bfloat16)
    output, final_state = torch.empty_like(inputs.v), torch.empty(B, H, K, V)
    args = (inputs.q, inputs.k, inputs.v, inputs.beta, tm, output, inputs.initial_state, final_state, 0.1, segments)
    assert chunk_module._scan_gluon(plan, layout, *args)
    (grid, launched, constants), = launches["scan"]
    assert grid == (V // 64, segments * H)
    views = launched[:5]
    assert [view.block_shape for view in views] == [[64, K], [64, K], [64, 64], [64, 64], [64, 64]]
    assert [list(view.shape) for view in views] == [[B * T, H * K]] * 2 + [[B * T, H * V], [B * T, H * 64], [B * T, H * V]]
    assert [view.layout for view in views] == [chunk_scan_tm_gluon.tile_layout(torch.bfloat16, 64, w)
                                               for w in (K, K, 64, 64, 64)]
    assert launched[5:] == (inputs.beta, inputs.initial_state, final_state, T // segments, 0.1)
    assert constants == dict(H=H, K=K, V=V, C=64, BLOCK_V=64, HAS_H0=True, STORE_HT=True, SEGMENTS=segments,
                             STAGES=3, num_warps=4)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # an eager call on a GPU
    assert not chunk_module._scan_gluon(replace(plan, scan_gluon="auto", tma="auto"), layout, *args)
    assert len(launches["scan"]) == 1


class _LaunchRecorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` appends (grid, args, kwargs) to
    ``launches[name]`` (the interpreter cannot run Gluon; the launch tests check what a launcher passes)."""

    def __init__(self, launches: dict, name: str):
        self.launches, self.name = launches, name

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.setdefault(self.name, []).append((grid, args, kwargs))


def test_gluon_summaries_launch_passes_what_the_kernel_expects(monkeypatch):
    """chunk._summaries_gluon's launch inside _segment_states, with the kernels replaced by recorders: its grid
    (64-wide value tiles, then key tiles x summaries x heads), descriptors of [B T, H D] views with [C, width]
    blocks and the layouts chunk_aot compiles, the summaries' buffers and segment length; the combine then
    reads those buffers. Where the Gluon scan does not take the call ("auto" outside a graph capture) the
    Triton summaries launch instead."""
    from deltalab.variants import chunk_scan_tm_gluon, chunk_segments_gluon

    launches = {}
    monkeypatch.setattr(chunk_segments_gluon, "chunk_segment_summary_gluon_kernel",
                        _LaunchRecorder(launches, "gluon"))
    monkeypatch.setattr(chunk_module, "chunk_segment_summary_kernel", _LaunchRecorder(launches, "triton"))
    monkeypatch.setattr(chunk_module, "chunk_segment_combine_kernel", _LaunchRecorder(launches, "combine"))
    B, T, H, K, V, segments = 2, 512, 3, 128, 192, 4
    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=torch.bfloat16, device="cpu")
    inputs = random_inputs(problem, seed=7, device="cpu", initial_state=True)
    plan = replace(resolve_plan(dict(DEFAULT_CONFIG, forward_scan="tm", scan_segments=segments), problem),
                   scan_gluon="on")
    layout = chunk_layout(B, T, None, plan.chunk_size, "cpu")
    tm = torch.empty(B, T, H, plan.chunk_size, dtype=torch.bfloat16)
    args = (inputs.k, inputs.v, inputs.beta, tm, inputs.initial_state)
    chunk_module._segment_states(plan, layout, *args)
    (grid, launched, constants), = launches.pop("gluon")
    assert grid == (V // 64 + K // 64, B * (segments - 1) * H)
    views = launched[:3]
    assert [view.block_shape for view in views] == [[64, K], [64, 64], [64, 64]]
    assert [list(view.shape) for view in views] == [[B * T, H * K], [B * T, H * V], [B * T, H * 64]]
    assert [view.layout for view in views] == [chunk_scan_tm_gluon.tile_layout(torch.bfloat16, 64, w)
                                               for w in (K, 64, 64)]
    beta, h0, seg_values, seg_transitions, segment_length = launched[3:]
    assert beta is inputs.beta and h0 is inputs.initial_state and segment_length == T // segments
    assert seg_values.shape == (B * (segments - 1), H, K, V) and seg_transitions.shape == (B * (segments - 1), H, K, K)
    assert constants == dict(SEGMENTS=segments, H=H, K=K, V=V, C=64, BLOCK_N=64, HAS_H0=True, STAGES=3, NUM_WARPS=4,
                             num_warps=4)
    (_, combined, _), = launches.pop("combine")
    assert combined[1] is seg_values and combined[2] is seg_transitions
    assert "triton" not in launches
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # an eager call on a GPU
    chunk_module._segment_states(replace(plan, scan_gluon="auto", tma="auto"), layout, *args)
    assert sorted(launches) == ["combine", "triton"]


@pytest.mark.parametrize("dtype, segments, block_summary, h0, order", [
    (torch.float32, 4, 16, True, "kv"), (torch.float16, 2, 0, True, "kv"), (torch.float32, 8, 0, False, "kv"),
    (torch.float32, 4, 16, True, "vk"), (torch.float16, 2, 0, False, "vk")])
def test_tm_scan_segments_match_reference(poisoned_empty, monkeypatch, dtype, segments, block_summary, h0, order):
    """scan_segments: the Tm scan cut into segments (their summaries [b | A] -- in either summary_order, the
    column tiles or their transposes --, the combine of entering states, the scan of all segments at once)
    gives the reference's o and final state, with and without an initial
    state (two sequences: the final state is each one's last segment's; the first segment's summary runs
    from the initial state), K != V (value and key column tiles of different counts; 16-wide: three value
    tiles, two key tiles), and stays close to the one-run scan."""
    segment_calls = []
    segment_states = chunk_module._segment_states
    monkeypatch.setattr(chunk_module, "_segment_states",
                        lambda *args: segment_calls.append(args[0].segments) or segment_states(*args))
    problem = Problem(B=2, T=128, H=2, K=32, V=48, dtype=dtype, device=DEVICE)
    inputs = random_inputs(problem, seed=31, device=DEVICE, initial_state=h0)
    config = {"chunk_size": 16, "input_precision": "ieee", "forward_scan": "tm", "scan_segments": segments,
              "block_summary": block_summary, "summary_order": order}
    assert constraints(dict(DEFAULT_CONFIG, **config), problem) is None
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).segments == segments
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).summary_order == order
    out = run_op("chunk", inputs, config, backward=False)
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=False), dtype, label=f"G={segments}")
    assert segment_calls == [segments]  # the summaries and the combine ran
    whole = run_op("chunk", inputs, dict(config, scan_segments=1), backward=False)
    assert segment_calls == [segments]
    assert rel_error(out["o"], whole["o"]) <= tolerance(dtype)


@pytest.mark.parametrize("B, K, dtype, segments", [
    (1, 128, torch.bfloat16, 4),    # 16 heads x 4 segments x two 64-wide tiles = 128 programs
    (1, 64, torch.float16, 4),      # 32 x 4 x one
    (1, 256, torch.bfloat16, 1),    # wide keys: the summaries and combine cost more than they save
    (2, 128, torch.bfloat16, 1),    # the one-run Tm scan's tiles are 32 wide already
    (8, 128, torch.bfloat16, 1),
])
def test_auto_segments_where_the_one_run_scan_is_starved(B, K, dtype, segments):
    """scan_segments=0: segments where the one-run Tm scan's automatic tile would be 16 wide (K <= 128), the
    fewest whose 64-wide tiles fill the SMs (at B = 1 "auto" then takes the Tm scan, 16-wide without)."""
    problem = Problem(B=B, T=16384 // B, H=2048 // K, K=K, V=K, dtype=dtype)
    plan = resolve_plan(DEFAULT_CONFIG, problem)
    assert plan.segments == segments
    if segments > 1:
        assert plan.tm_scan and plan.scan_tm.block_v == 64 and plan.summary.block_v == (64 if K == 128 else 32)
    assert resolve_plan(dict(DEFAULT_CONFIG, scan_segments=1), problem).segments == 1
    assert constraints(DEFAULT_CONFIG, problem) is None
    # no segments where they cannot be whole chunks, on packed sequences, or on the W / U scan
    assert resolve_plan(DEFAULT_CONFIG, replace(problem, T=16384 // B + 1)).segments == 1
    assert resolve_plan(DEFAULT_CONFIG, replace(problem, num_seqs=3, varlen=True)).segments == 1
    assert resolve_plan(dict(DEFAULT_CONFIG, forward_scan="wu"), problem).segments == 1
    # each segment at least MIN_SEGMENT_CHUNKS chunks
    assert resolve_plan(DEFAULT_CONFIG, replace(problem, T=1024)).segments == min(segments, 2)  # 16 chunks


def test_segments_config_is_checked():
    problem = Problem(B=1, T=1024, H=2, K=64, V=64, dtype=torch.bfloat16)
    assert "T=1024 is not a multiple" in constraints(dict(DEFAULT_CONFIG, scan_segments=32), problem)
    assert "scan_segments=4 splits the Tm scan" in constraints(dict(DEFAULT_CONFIG, scan_segments=4, forward_scan="wu"),
                                                                  problem)
    packed = Problem(B=1, T=1024, H=2, K=64, V=64, dtype=torch.bfloat16, num_seqs=3, varlen=True)
    assert "packed sequences" in constraints(dict(DEFAULT_CONFIG, scan_segments=4, forward_scan="tm"), packed)
    assert "block_summary=128 exceeds" in constraints(dict(DEFAULT_CONFIG, scan_segments=4, block_summary=128), problem)
    assert constraints(dict(DEFAULT_CONFIG, scan_segments=4, forward_scan="tm"), problem) is None


def test_separate_output_widens_the_scan_at_wide_key_dims():
    """Without Q and Aqk tiles the forward scan fits 32-wide V tiles at three stages (64-wide at two) at
    K = V = 256 in bf16 (the fused scan: 16-wide), when there are programs enough to fill the SMs."""
    problem = Problem(B=8, T=2048, H=8, K=256, V=256, dtype=torch.bfloat16)
    separate = resolve_plan(dict(DEFAULT_CONFIG, output="separate"), problem)
    fused = resolve_plan(dict(DEFAULT_CONFIG, output="fused"), problem)
    assert (separate.state.block_v, fused.state.block_v) == (32, 16)
    assert separate.state.stages == 3 and constraints(dict(DEFAULT_CONFIG, output="separate"), problem) is None
    assert constraints(dict(DEFAULT_CONFIG, output="separate", block_v=64), problem) is None
    # the fused scan cannot take those tiles: refused for shared memory before anything compiles
    assert "shared memory" in constraints(dict(DEFAULT_CONFIG, output="fused", block_v=64), problem)


@pytest.mark.parametrize("B, K, dtype, separate", [
    (8, 256, torch.bfloat16, True),    # 64 programs x 8 tiles of 32
    (4, 256, torch.bfloat16, True),    # 32 programs x 8 tiles of 32
    (2, 256, torch.bfloat16, True),    # 16 programs x 8 tiles of 32 = 128 (7/8 of the SMs)
    (1, 256, torch.bfloat16, False),   # 8 programs: 16-wide either way, the output kernel would be extra
    (8, 256, torch.float32, False),    # float32 scans run one stage, 16-wide
    (8, 128, torch.bfloat16, False),   # the fused scan already takes 64-wide tiles
])
def test_auto_output_is_separate_where_it_widens_the_scan(B, K, dtype, separate):
    """output="auto" (default) picks the separate output kernel exactly where the scan gets wider V tiles
    (measured on an H200: -15 % / -16 % forward kernel time at K = 256, 8 x 2K / 2 x 8K; slower where the
    tiles stay)."""
    problem = Problem(B=B, T=16384 // B, H=2048 // K, K=K, V=K, dtype=dtype)
    plan = resolve_plan(DEFAULT_CONFIG, problem)
    assert plan.separate_output is separate
    fused = resolve_plan(dict(DEFAULT_CONFIG, output="fused"), problem)
    assert (plan.state.block_v > fused.state.block_v) is separate
    # an explicit tile the fused scan cannot hold also routes "auto" through the separate kernel
    if K == 256 and dtype == torch.bfloat16:
        assert resolve_plan(dict(DEFAULT_CONFIG, block_v=32), problem).separate_output


def test_output_kernel_tiles_are_checked():
    problem = Problem(B=1, T=256, H=2, K=256, V=96, dtype=torch.bfloat16)
    assert "block_v_output=256 exceeds V=96" in constraints(dict(DEFAULT_CONFIG, output="separate", block_v_output=256), problem)
    # the output kernel's tiles are checked only when it runs
    too_wide = dict(DEFAULT_CONFIG, output="separate", block_v_output=128, warps_output=1)
    assert "output kernel needs" in constraints(too_wide, problem)
    assert constraints(dict(too_wide, output="fused"), problem) is None


def _forward_op(inputs, config: str, grad: bool):
    """The forward custom op itself: (o, final_state, residual)."""
    K = inputs.q.shape[-1]
    return torch.ops.deltalab.delta_rule_fwd(inputs.q, inputs.k, inputs.v, inputs.beta, inputs.initial_state, None,
                                             K ** -0.5, True, "delta_rule", "chunk", config, K, grad)


def test_forward_keeps_intermediates_only_for_differentiated_calls():
    """The residual holds W, U, Vn ([B,T,H,K|V]), Aqk and Tm ([B,T,H,C]) and the chunk states
    ([chunks,H,K,V]) when the call will be differentiated; nothing for inference or with "inputs"; the
    backward reads it (a poisoned residual poisons the gradients) and refuses one of the wrong size."""
    B, T, H, K, V, C = 2, 40, 2, 32, 16, 16
    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=torch.float32, device=DEVICE)
    inputs = random_inputs(problem, seed=13, device=DEVICE)
    chunks = B * math.ceil(T / C)
    config = f"chunk_size:i={C}"
    _, _, residual = _forward_op(inputs, config, grad=True)
    assert residual.numel() == B * T * H * (K + 2 * V + 2 * C) + chunks * H * K * V
    assert _forward_op(inputs, config, grad=False)[2].numel() == 0
    assert _forward_op(inputs, config + ";save_for_backward:s=inputs", grad=True)[2].numel() == 0

    impl = registry.get("chunk")
    full = impl.full_config({"chunk_size": C})
    args = dict(scale=K ** -0.5, initial_state=inputs.initial_state, cu_seqlens=None, config=full, block_size=K,
                do=torch.randn(B, T, H, V), dfinal_state=None)
    grads = impl.backward(inputs.q, inputs.k, inputs.v, inputs.beta, residual=residual, **args)
    assert all(torch.isfinite(g).all() for g in grads)
    poisoned = impl.backward(inputs.q, inputs.k, inputs.v, inputs.beta, residual=torch.full_like(residual, float("nan")),
                             **args)
    assert torch.isnan(poisoned[0]).all()
    with pytest.raises(ValueError, match="residual: expected"):
        impl.backward(inputs.q, inputs.k, inputs.v, inputs.beta, residual=residual[1:], **args)


def test_forward_without_states_matches_reference(poisoned_empty):
    problem = Problem(B=1, T=50, H=1, K=32, V=32, dtype=torch.float32, device=DEVICE)
    inputs = random_inputs(problem, seed=5, device=DEVICE, initial_state=False)
    o, final_state = delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk", config={"chunk_size": 16})
    ref, _ = delta_rule(*(x.double() for x in (inputs.q, inputs.k, inputs.v, inputs.beta)), variant="reference")
    assert final_state is None
    assert rel_error(o, ref) <= tolerance(torch.float32)


def test_qk_l2norm_inside_op(poisoned_empty):
    # unnormalised q, k: the op wrapper normalises them, gradients flow through the normalisation
    problem = Problem(B=1, T=40, H=1, K=16, V=16, dtype=torch.float32, device=DEVICE)
    inputs = random_inputs(problem, seed=7, device=DEVICE)
    inputs.k = inputs.k * 3.0 + 0.1
    results = []
    for variant, inp in (("chunk", inputs), ("reference", inputs.to(torch.float64))):
        leaves = [x.detach().clone().requires_grad_() for x in inp.tensors()]
        o, ht = delta_rule(*leaves[:4], initial_state=leaves[4], output_final_state=True, qk_l2norm=True,
                           variant=variant, config={"chunk_size": 16} if variant == "chunk" else None)
        (o.sum() + ht.square().sum()).backward()
        results.append([o, ht] + [x.grad for x in leaves])
    for out, ref in zip(*results):
        assert rel_error(out, ref) <= tolerance(torch.float32, gradient=True)


# ---------------------------------------------------------------------------------------------- configs
@triton.jit
def _inverse_probe_kernel(k, beta, scratch, out, T, K: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tm of chunk program_id(0) of one head ([T, 1, K] keys) into out [num_chunks, C, C]."""
    chunk = tl.program_id(0)
    start = chunk * C
    workspace = scratch + chunk * C * C
    chunk_inverse(k, beta, start, tl.minimum(start + C, T), 0, workspace, 1, K, C, BLOCK_K, "ieee", "ieee")
    rows = tl.arange(0, C)
    tl.store(out + chunk * C * C + rows[:, None] * C + rows[None, :], load_tm(workspace, C, False))


def _inverse_reference(k: torch.Tensor, beta: torch.Tensor, C: int) -> torch.Tensor:
    """(I + strict_lower(diag(b) K K^T))^{-1} per chunk in float64, [num_chunks, C, C] (identity rows
    past the end of a partial last chunk)."""
    T = k.shape[0]
    out = []
    for start in range(0, T, C):
        kc = torch.zeros(C, k.shape[1], dtype=torch.float64)
        bc = torch.zeros(C, dtype=torch.float64)
        kc[: min(C, T - start)] = k[start:start + C].double().cpu()
        bc[: min(C, T - start)] = beta[start:start + C].double().cpu()
        a = torch.tril(bc[:, None] * (kc @ kc.T), -1)
        eye = torch.eye(C, dtype=torch.float64)
        out.append(torch.linalg.solve_triangular(eye + a, eye, upper=False))
    return torch.stack(out)


def _adversarial_keys(kind: str, shape: tuple, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [..., K] normalised, betas [...]): random; all identical with beta = 1 (A the strict lower
    triangle of ones: the Neumann series explodes, the inverse stays bounded); or two tight clusters."""
    *lead, K = shape
    if kind == "random":
        k, beta = torch.randn(shape, generator=gen), torch.rand(lead, generator=gen)
    elif kind == "identical":
        k, beta = torch.randn(K, generator=gen).expand(shape).clone(), torch.ones(lead)
    else:
        centres = torch.randn(2, K, generator=gen)
        k = centres[torch.arange(math.prod(lead)) % 2].view(shape) + 1e-3 * torch.randn(shape, generator=gen)
        beta = 0.5 + 0.5 * torch.rand(lead, generator=gen)
    return torch.nn.functional.normalize(k, dim=-1), beta


@pytest.mark.parametrize("chunk_size", [16, 32, 64, 128])
@pytest.mark.parametrize("keys", ["random", "identical", "two_clusters"])
def test_inverse_is_accurate_on_adversarial_keys(chunk_size, keys):
    """The triangular inverse (16x16 forward substitution + row-block products in a workspace) against
    float64 on normalised keys that are random, all identical (beta = 1: A is the strict lower triangle
    of ones, whose Neumann series explodes while the inverse stays bounded) or two tight clusters; a
    partial last chunk too. float32 keys, "ieee" products: relative error <= 1e-5."""
    T, K = 2 * chunk_size + 5, 48
    k, beta = _adversarial_keys(keys, (T, K), torch.Generator().manual_seed(7))
    k, beta = k.to(DEVICE), beta.to(DEVICE)
    num_chunks = triton.cdiv(T, chunk_size)
    scratch = torch.full((num_chunks, chunk_size, chunk_size), float("nan"), device=DEVICE)
    out = torch.full((num_chunks, chunk_size, chunk_size), float("nan"), device=DEVICE)
    _inverse_probe_kernel[(num_chunks,)](k, beta, scratch, out, T, K=K, C=chunk_size, BLOCK_K=64)
    ref = _inverse_reference(k, beta, chunk_size)
    assert torch.isfinite(out).all()
    assert rel_error(out, ref) <= 1e-5, rel_error(out, ref)


def test_registered_with_its_space():
    variant = registry.get("chunk")
    assert variant.is_triton and variant.supports_backward and variant.varlen
    assert set(variant.space) == set(SPACE) and set(variant.default_config) == set(SPACE)
    assert variant.space["chunk_size"] == (16, 32, 64, 128)
    assert {"ieee", "tf32"} <= set(variant.space["input_precision"])
    assert variant.default_config["input_precision"] == "ieee"
    problem = Problem(B=1, T=4096, H=8, K=128, V=128)
    assert variant.cost(problem, {"chunk_size": 128}).flops > variant.cost(problem, {"chunk_size": 32}).flops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_default_config_valid_for_every_supported_shape(dtype):
    """Automatic settings fit every head dim for chunks up to 64; chunk 128 fits 16-bit K <= 128 and is
    otherwise refused for shared memory (the scans hold [128, K] tiles; measured with ptxas)."""
    for chunk_size in SPACE["chunk_size"]:
        for K in (16, 48, 128, 200, 256):
            for V in (16, 100, 256):
                for B, T, H in ((1, 16384, 16), (8, 2048, 32), (1, 64, 1)):
                    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=dtype)
                    config = dict(DEFAULT_CONFIG, chunk_size=chunk_size)
                    reason = constraints(config, problem)
                    if chunk_size <= 64 or (dtype != torch.float32 and K <= 128):
                        assert reason is None, (problem.describe(), chunk_size, reason)
                    elif reason is not None:
                        assert "shared memory" in reason, reason
                        continue
                    plan = resolve_plan(config, problem)
                    assert plan.key_tile == padded(K) >= K
                    assert plan.state.block_v <= padded(V) and plan.grads.block_k <= padded(K)


def test_automatic_block_v_splits_v_when_programs_are_few():
    few = resolve_plan(DEFAULT_CONFIG, Problem(B=1, T=16384, H=16, K=128, V=128))
    many = resolve_plan(DEFAULT_CONFIG, Problem(B=8, T=2048, H=32, K=128, V=128))
    assert few.state.block_v < many.state.block_v
    assert 16 * math.ceil(128 / few.state.block_v) >= 64


@pytest.mark.parametrize("B, H, K, block_v", [
    (2, 16, 128, 32),   # 32 x 4 = 128 programs of 132 SMs: one nearly full wave, not two of 16-wide tiles
    (4, 16, 128, 64),   # 64 x 2 = 128
    (1, 16, 128, 16),   # 32-wide would leave half the SMs idle
    (2, 8, 256, 32),    # K = 256 with output="auto": the separate kernel's scan, 16 x 8 = 128
    (4, 8, 256, 32),    # K = 256: 64-wide would fill the SMs but fits two stages only (32-wide: three)
])
def test_automatic_block_v_takes_one_nearly_full_wave(B, H, K, block_v):
    """The automatic scan tile keeps 7/8 of the SMs busy rather than all of them (measured on an H200:
    wider tiles in one wave beat narrower ones in two; see FILL_FRACTION)."""
    plan = resolve_plan(DEFAULT_CONFIG, Problem(B=B, T=16384 // B, H=H, K=K, V=K, dtype=torch.bfloat16))
    assert plan.state.block_v == block_v


@pytest.mark.parametrize("dtype, chunk_size, K, warps_wy, warps_grads, block_k_grads, key_grid", [
    (torch.bfloat16, 64, 64, 4, 4, 64, False),   # a program per key tile: slower at K = 64
    (torch.bfloat16, 64, 128, 4, 4, 64, True),   # the key loop would take 32-wide tiles (64 spill at 4 warps);
                                                 # a program per 64-wide key tile is faster
    (torch.bfloat16, 64, 256, 4, 8, 64, False),  # 4 warps with 32-wide key tiles, or the key grid: slower
    (torch.float32, 64, 128, 8, 8, 64, False),   # float32 spills more at 4 warps (untimed)
    (torch.bfloat16, 128, 128, 8, 8, 64, False),  # [128, 128] float32 tiles want 8 warps
])
def test_backward_kernels_take_the_warps_measured_faster(dtype, chunk_size, K, warps_wy, warps_grads, block_k_grads,
                                                         key_grid):
    """The WY and gradient kernels run 4 warps (two programs per SM) where that was measured faster on an
    H200 (bf16, C = 64; see chunk_config) and their registers fit without spills (ptxas for sm_90); the
    gradient kernel runs a program per key tile (grads_keys="auto") where that was measured faster."""
    problem = Problem(B=1, T=4096, H=16, K=K, V=K, dtype=dtype)
    plan = resolve_plan(dict(DEFAULT_CONFIG, chunk_size=chunk_size), problem)
    assert (plan.wy.warps, plan.grads.warps, plan.grads.block_k) == (warps_wy, warps_grads, min(K, block_k_grads))
    assert plan.grads_key_grid == key_grid
    loop = resolve_plan(dict(DEFAULT_CONFIG, chunk_size=chunk_size, grads_keys="loop"), problem)
    assert not loop.grads_key_grid and loop.grads.block_k == (32 if key_grid else plan.grads.block_k)


@pytest.mark.parametrize("B, H, K, stages, stages_bwd", [
    (1, 16, 128, 3, 3),   # 128 programs, one per SM: as deep as shared memory allows (4 does not fit)
    (1, 32, 64, 4, 4),    # D = 64: four fit
    (8, 16, 128, 3, 3),   # 256 programs of 64-wide tiles: two waves at any depth, so as deep as one fits
    (1, 8, 256, 2, 2),    # K = 256, fused output: only two fit
    (2, 8, 256, 3, 2),    # K = 256, separate output (32-wide scan without Q / Aqk): three fit
    (4, 8, 256, 3, 2),    # the same at 256 programs: two waves either way
])
def test_automatic_scan_stages_are_the_deepest_that_keep_one_wave(B, H, K, stages, stages_bwd):
    """The scans prefetch as many chunk steps ahead as shared memory allows with as many programs
    resident as two stages would allow (MAX_SCAN_STAGES at most), measured faster on an H200 (see
    MAX_SCAN_STAGES): a depth above two fits with that many resident, and one more stage would not (two
    is the fallback otherwise)."""
    problem = Problem(B=B, T=16384 // B, H=H, K=K, V=K, dtype=torch.bfloat16)
    plan = resolve_plan(DEFAULT_CONFIG, problem)
    assert (plan.state.stages, plan.state_bwd.stages) == (stages, stages_bwd)
    sms, smem = device_limits()
    for launch, needs in ((plan.state, _state_no_output_needs if plan.separate_output else _state_needs),
                          (plan.state_bwd, _state_bwd_needs)):
        at_two_stages = smem // needs(64, K, launch.block_v, 2, 2, launch.warps)[0]
        resident = min(-(-problem.num_seqs * H * -(-K // launch.block_v) // sms), at_two_stages)
        if launch.stages > 2:
            assert resident * needs(64, K, launch.block_v, 2, launch.stages, launch.warps)[0] <= smem
        if launch.stages < MAX_SCAN_STAGES:
            assert resident * needs(64, K, launch.block_v, 2, launch.stages + 1, launch.warps)[0] > smem
    # an explicit depth wins over the rule
    assert resolve_plan(dict(DEFAULT_CONFIG, stages_state=2), problem).state.stages == 2


@pytest.mark.parametrize(
    "config, problem, fragment",
    [
        ({"block_v": 128}, Problem(B=1, T=64, H=1, K=64, V=48), "block_v=128 exceeds V=48"),
        ({"block_k_grads": 64}, Problem(B=1, T=64, H=1, K=32, V=64), "block_k_grads=64 exceeds K=32"),
        ({"chunk_size": 128, "stages_state": 4}, Problem(B=1, T=64, H=1, K=256, V=256), "shared memory"),
        ({"chunk_size": 128}, Problem(B=1, T=64, H=1, K=256, V=256), "state scan needs ~468 KB shared memory (chunk_size=128, stages=2"),
        ({"chunk_size": 128, "warps_wy": 1}, Problem(B=1, T=64, H=1, K=64, V=64), "registers"),
    ],
)
def test_bad_config_rejected_with_reason(config, problem, fragment):
    full = dict(DEFAULT_CONFIG, **config)
    reason = constraints(full, problem)
    assert reason is not None and fragment in reason, reason


def test_bad_config_rejected_by_the_op_before_launch():
    problem = Problem(B=1, T=32, H=1, K=32, V=32, dtype=torch.float32, device=DEVICE)
    inputs = random_inputs(problem, device=DEVICE)
    with pytest.raises(ValueError, match="block_v=64 exceeds V=32"):
        delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk", config={"block_v": 64})
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk", config={"chunk_size": 256})


def test_chunk_layout_keeps_chunks_inside_sequences():
    cu = torch.tensor([0, 5, 5, 40, 41])
    layout = chunk_layout(1, 41, cu, 16, "cpu")
    assert layout.num_seqs == 4
    assert layout.chunk_table.tolist() == [[0, 5], [5, 21], [21, 37], [37, 40], [40, 41]]
    assert layout.chunk_offsets.tolist() == [0, 1, 1, 4]
    fixed = chunk_layout(3, 100, None, 32, "cpu")
    assert fixed.num_chunks == 3 * 4 and fixed.chunk_table is None


def _aot_report(*args: str) -> dict:
    """``python -m deltalab.variants.chunk_aot --dtype bfloat16 ARGS`` in a process without the interpreter:
    every kernel's registers, spill bytes and shared memory compiled for sm_90 (skips without ptxas)."""
    import subprocess
    import sys

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not all(os.path.exists(os.path.join(bin_dir, tool)) for tool in ("ptxas", "cuobjdump")):
        pytest.skip("triton wheel without its bundled ptxas / cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "deltalab.variants.chunk_aot", "--dtype", "bfloat16", *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", [["--K", "128", "--V", "128"],
                                   ["--K", "256", "--V", "256", "--H", "8", "--B", "4", "--T", "4096"]],
                         ids=["D128-T16K", "D256-B4-T4K"])
def test_default_plan_compiles_for_sm90_without_spills(shape):
    """The interpreter never compiles: compile every kernel of the default bf16 plan (chunk 64) for sm_90
    with Triton's bundled ptxas, and require that each fits the H100/H200 shared memory and spills no
    registers (spills are what turn a scan latency-bound). Shapes: D = 128 (the issue's), and D = 256 at
    B = 4, T = 4096 -- where the backward faulted on an H200 and the old automatic warps and WY tiles
    spilled, and where output="auto" picks the separate output kernel (64-wide scan tiles)."""
    report = _aot_report(*shape, "--chunk-size", "64")
    # the default builds Tm in the inverse kernel (the intra-chunk kernel and the WY kernel load it);
    # "state_keep" is the forward scan of a differentiated call (output, states and Vn)
    # the inference forward's Tm scan (forward_scan="auto": 32-64-wide tiles, 4 warps): at D = 128, B = 1 on 4
    # segments a sequence (their summary and combine kernels)
    # "inverse_gluon": the inverse kernel's Gluon version (inverse_gluon, chunk_inverse_gluon.py), which the
    # interpreter cannot run -- this compile is its CPU-side check; on a Hopper GPU the plan runs it in place of
    # the Triton "inverse"
    # "scan_tm_gluon" and "summary_gluon": the Tm scan's and its segment summaries' Gluon versions (scan_gluon,
    # chunk_scan_tm_gluon.py and chunk_segments_gluon.py) at K = 128 likewise
    wide = {"output"} if "256" in shape else {"summary", "combine", "scan_tm_gluon", "summary_gluon"}
    gluon = resolve_plan(DEFAULT_CONFIG, Problem(B=1, T=4096, H=8, K=128, V=128, dtype=torch.bfloat16)).inverse_gluon
    assert set(report) == {"inverse_gluon", "intra", "state", "state_keep", "state_recompute",
                           "state_bwd", "grads", "wy", "scan_tm"} | wide | (set() if gluon else {"inverse"})
    for name, usage in report.items():
        assert usage["shared_bytes"] <= 232448, (name, usage)
        # the Gluon scan at 255 registers keeps one value in an 8-byte stack frame, stored before its loop and
        # loaded after it (ptxas -v: 4 bytes of spill stores; cuobjdump -sass: no local access in the loop)
        assert usage["spill_bytes"] <= (8 if name == "scan_tm_gluon" else 0), (name, usage)
        assert 0 < usage["registers"] <= 255, (name, usage)


def test_register_caps_reach_the_compiler(poisoned_empty):
    """regs_intra / regs_wy cap the persistent kernels' registers (ptxas .maxnreg): compiled for sm_90 they
    use at most that many (spilling the rest); the interpreter ignores the cap, so the answers still hold."""
    problem = Problem(B=1, T=70, H=2, K=32, V=48, dtype=torch.float32, device=DEVICE)
    check_against_reference(problem, {"chunk_size": 32, "input_precision": "ieee", "regs_intra": 64, "regs_wy": 80})
    plan = resolve_plan(dict(DEFAULT_CONFIG, regs_intra=64, regs_wy=80), problem)
    assert plan.intra.options["maxnreg"] == 64 and plan.wy.options["maxnreg"] == 80
    assert "maxnreg" not in resolve_plan(DEFAULT_CONFIG, problem).intra.options

    # the in-kernel inverse (119 registers uncapped): the intra-chunk kernel the cap matters for
    report = _aot_report("--K", "128", "--V", "128", "--chunk-size", "64", "--config",
                         '{"regs_intra": 64, "regs_wy": 80, "inverse": "workspace"}')
    assert report["intra"]["registers"] <= 64 and report["intra_store_tm"]["registers"] <= 64
    assert report["wy"]["registers"] <= 80
    assert report["grads"]["registers"] > 80  # uncapped kernels keep the compiler's choice


def test_separate_output_plan_compiles_for_sm90_without_spills():
    """The 64-wide, two-stage forward scan that output="separate" picks at K = V = 256 (bf16, B = 8) and
    the output kernel: compiled for sm_90, within shared memory, no spills."""
    report = _aot_report("--K", "256", "--V", "256", "--H", "8", "--B", "8", "--T", "2048", "--chunk-size", "64",
                         "--config", '{"output": "separate"}')
    assert {"output", "state", "state_keep"} <= set(report)
    for name, usage in report.items():
        assert usage["shared_bytes"] <= 232448, (name, usage)
        assert usage["spill_bytes"] == 0, (name, usage)


# ---------------------------------------------------------------------------------------------- GPU
GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
GPU_CASES = [
    # dtype, chunk, K, V: every chunk size in bf16; fp16/fp32 at two chunk sizes; odd and wide dims
    (torch.bfloat16, 16, 128, 128),
    (torch.bfloat16, 32, 64, 100),
    (torch.bfloat16, 64, 128, 128),
    (torch.bfloat16, 128, 128, 128),
    (torch.bfloat16, 64, 256, 48),
    (torch.float16, 64, 64, 100),
    (torch.float16, 64, 128, 100),  # the gradient kernel's key grid (grads_keys="auto" at K = 128)
    (torch.float16, 128, 128, 256),
    (torch.float32, 32, 128, 128),
    (torch.float32, 64, 100, 256),
    (torch.float32, 64, 256, 48),  # float32's scans at K > 128 run at one stage (16-bit ones fault there)
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, chunk_size, K, V", GPU_CASES,
                         ids=[f"{str(c[0])[6:]}-c{c[1]}-K{c[2]}-V{c[3]}" for c in GPU_CASES])
def test_gpu_matches_reference(poisoned_empty, dtype, chunk_size, K, V):
    problem = Problem(B=2, T=500, H=3, K=K, V=V, dtype=dtype, device="cuda")
    check_against_reference(problem, {"chunk_size": chunk_size, "input_precision": "ieee"})


@pytest.mark.gpu
@pytest.mark.parametrize("wy_inverse", ["stored", "recompute"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_both_wy_inverse_modes(poisoned_empty, dtype, wy_inverse):
    problem = Problem(B=2, T=500, H=3, K=128, V=96, dtype=dtype, device="cuda")
    check_against_reference(problem, {"chunk_size": 64, "input_precision": "ieee", "wy_inverse": wy_inverse})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_kept_intermediates_match_recomputed_ones(poisoned_empty, dtype):
    """The forward's kept intermediates (default) and the backward's recompute ("inputs"): the same
    kernels on the same values, so the same bits; both against the reference."""
    problem = Problem(B=2, T=500, H=3, K=128, V=96, dtype=dtype, device="cuda")
    check_kept_against_recomputed(random_inputs(problem, seed=14, device="cuda"), {}, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, B, tiles", [
    (torch.bfloat16, 256, 8, {}), (torch.bfloat16, 256, 4, {}), (torch.bfloat16, 128, 2, {}), (torch.float32, 256, 2, {}),
    (torch.bfloat16, 256, 8, {"block_v_output": 128, "warps_output": 8}),
    (torch.bfloat16, 256, 2, {"block_v": 32, "block_v_output": 256, "warps_output": 8}),
])
def test_gpu_separate_output(poisoned_empty, dtype, K, B, tiles):
    """output="separate" on the GPU, the wide V tiles it allows at K = 256 included (B = 8 and 4: 64-wide;
    32-wide explicitly) and wider output-kernel tiles."""
    problem = Problem(B=B, T=500, H=8, K=K, V=K, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=17, device="cuda")
    config = {"output": "separate", **tiles}
    out = run_op("chunk", inputs, config)
    assert_close(out, run_op("reference", inputs.to(torch.float64)), dtype, label=f"separate output K={K} {tiles}")
    inference = run_op("chunk", inputs, config, backward=False)
    assert torch.equal(inference["o"], out["o"])


GPU_TM_CASES = [
    # dtype, K, B, tiles: the automatic tiles (32-64 wide at B = 8, 16 at B = 1), then explicit ones
    (torch.bfloat16, 64, 8, {}), (torch.bfloat16, 128, 8, {}), (torch.bfloat16, 256, 8, {}), (torch.bfloat16, 256, 1, {}),
    (torch.float16, 100, 2, {"block_v_tm": 32, "warps_tm": 8}), (torch.float32, 128, 2, {}), (torch.float32, 256, 1, {}),
    (torch.bfloat16, 256, 4, {"block_v_tm": 64, "warps_tm": 8}), (torch.bfloat16, 128, 4, {"block_v_tm": 16, "stages_tm": 4}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, B, tiles", GPU_TM_CASES,
                         ids=[f"{str(c[0])[6:]}-K{c[1]}-B{c[2]}-{len(c[3])}" for c in GPU_TM_CASES])
def test_gpu_tm_scan(poisoned_empty, dtype, K, B, tiles):
    """forward_scan="tm" (inference: Tm applied in the scan, no intra-chunk kernel) on the GPU: against
    the reference, close to the W / U scan (the sweep's chunk rows time this path), packed sequences
    included."""
    problem = Problem(B=B, T=500, H=8, K=K, V=K, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=19, device="cuda")
    config = {"forward_scan": "tm", **tiles}
    out = run_op("chunk", inputs, config, backward=False)
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=False), dtype, label=f"tm K={K} {tiles}")
    wu = run_op("chunk", inputs, dict(config, forward_scan="wu"), backward=False)
    assert rel_error(out["o"], wu["o"]) <= tolerance(dtype)
    packed = Problem(B=1, T=1000, H=4, K=K, V=K, dtype=dtype, num_seqs=7, varlen=True, device="cuda")
    check_against_reference(packed, config, seed=23, backward=False)


def _eager_then_captured(call) -> tuple:
    """``call()`` once eagerly on a side stream (the warm-up a capture needs), then captured into a CUDA graph
    and replayed: (eager output, captured output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    return eager, captured


GPU_TMA_CASES = [
    # dtype, K, B, config: whole chunks and whole tiles, on segments (B = 1) and in one run
    (torch.bfloat16, 128, 4, {}), (torch.bfloat16, 64, 1, {}), (torch.float16, 256, 2, {"forward_scan": "tm"}),
    (torch.float32, 128, 2, {"forward_scan": "tm"}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, B, config", GPU_TMA_CASES,
                         ids=[f"{str(c[0])[6:]}-K{c[1]}-B{c[2]}" for c in GPU_TMA_CASES])
def test_gpu_tm_scan_through_tensor_descriptors(poisoned_empty, monkeypatch, dtype, K, B, config):
    """tma="auto": the Tm scan's tiles through tensor descriptors inside a CUDA graph capture (its first use
    of them in the process: the kernel is loaded during the capture) and through pointers outside; tma="on"
    in every call, against the reference, the pointer scan and the captured output."""
    problem = Problem(B=B, T=4096 // B, H=1024 // K, K=K, V=K, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=41, device="cuda", initial_state=False)
    assert resolve_plan(dict(DEFAULT_CONFIG, **config), problem).tm_scan
    views = _spy_on_tma_views(monkeypatch)
    used = lambda: [view is not None for view in views]  # noqa: E731

    eager, captured = _eager_then_captured(lambda: delta_rule(
        inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk", config=dict(config, tma="auto", scan_gluon="off"))[0])
    launches = 2 if resolve_plan(dict(DEFAULT_CONFIG, **config), problem).segments > 1 else 1
    assert used() == [False] * launches + [True] * launches

    views.clear()
    config = dict(config, scan_gluon="off")  # (this test is the Triton scan's; scan_gluon's own is below)
    out = run_op("chunk", inputs, dict(config, tma="on"), backward=False)
    assert used() == [True] * launches
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=False), dtype, label=f"tma K={K}")
    assert torch.equal(captured, out["o"])
    pointers = run_op("chunk", inputs, dict(config, tma="off"), backward=False)
    assert torch.equal(eager, pointers["o"])
    assert rel_error(out["o"], pointers["o"]) <= tolerance(dtype)


GPU_SEGMENT_CASES = [
    # dtype, K, B, config: the automatic segments at B = 1 (G = 4 at K = 64 and 128), explicit ones
    (torch.bfloat16, 64, 1, {}), (torch.bfloat16, 128, 1, {}), (torch.bfloat16, 256, 1, {"scan_segments": 8}),
    (torch.float16, 128, 2, {"scan_segments": 4, "block_summary": 32}), (torch.float32, 128, 1, {"forward_scan": "tm"}),
    (torch.bfloat16, 128, 1, {"scan_segments": 16, "block_summary": 16, "stages_summary": 4, "warps_summary": 8}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, B, config", GPU_SEGMENT_CASES,
                         ids=[f"{str(c[0])[6:]}-K{c[1]}-B{c[2]}-{len(c[3])}" for c in GPU_SEGMENT_CASES])
def test_gpu_tm_scan_segments(poisoned_empty, dtype, K, B, config):
    """scan_segments on the GPU (inference forward): o and the final state against the reference at T = 4K
    (16-32 chunks a segment), close to the one-run Tm scan."""
    problem = Problem(B=B, T=4096, H=2048 // K // 4, K=K, V=K, dtype=dtype, device="cuda")
    plan = resolve_plan(dict(DEFAULT_CONFIG, **config), replace(problem, T=4096 * 4 // B))
    inputs = random_inputs(problem, seed=37, device="cuda")
    config = dict(config, scan_segments=config.get("scan_segments", plan.segments))
    assert config["scan_segments"] > 1 and constraints(dict(DEFAULT_CONFIG, **config), problem) is None
    out = run_op("chunk", inputs, config, backward=False)
    ref = run_op("reference", inputs.to(torch.float64), backward=False)
    assert_close(out, ref, dtype, label=f"segments K={K} {config}")
    whole = run_op("chunk", inputs, dict(config, scan_segments=1), backward=False)
    assert rel_error(out["o"], whole["o"]) <= tolerance(dtype)


GPU_GLUON_SCAN_CASES = [
    # dtype, B, T, K, config: segments (entering states, the last segment's final state), one run, fp16, K = 64
    (torch.bfloat16, 1, 4096, 128, {}), (torch.bfloat16, 3, 1024, 128, {"scan_segments": 1}),
    (torch.float16, 2, 2048, 64, {"scan_segments": 2}), (torch.bfloat16, 1, 4096, 64, {"scan_segments": 4}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, B, T, K, config", GPU_GLUON_SCAN_CASES,
                         ids=[f"{str(c[0])[6:]}-B{c[1]}-T{c[2]}-K{c[3]}" for c in GPU_GLUON_SCAN_CASES])
@pytest.mark.parametrize("h0", [True, False])
def test_gpu_gluon_scan_matches_reference(poisoned_empty, monkeypatch, dtype, B, T, K, config, h0):
    """scan_gluon="on" (chunk_scan_tm_gluon.py, and on segments chunk_segments_gluon.py's summaries): the
    inference forward's o and final state against the reference, and close to the Triton kernels'; the Gluon
    kernels did run."""
    problem = Problem(B=B, T=T, H=2, K=K, V=K, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=43, device="cuda", initial_state=h0)
    config = dict(config, forward_scan="tm", scan_gluon="on")
    assert constraints(dict(DEFAULT_CONFIG, **config), problem) is None
    segmented = resolve_plan(dict(DEFAULT_CONFIG, **config), problem).segments > 1
    ran, summarized = _record_gluon_launches(monkeypatch)
    out = run_op("chunk", inputs, config, backward=False)
    assert ran == [True] and summarized == [True] * segmented
    ref = run_op("reference", inputs.to(torch.float64), backward=False)
    assert_close(out, ref, dtype, label=f"gluon scan {config}")
    triton_scan = run_op("chunk", inputs, dict(config, scan_gluon="off"), backward=False)
    assert ran == [True] and summarized == [True, False][:2 * segmented]
    assert rel_error(out["o"], triton_scan["o"]) <= tolerance(dtype)
    assert rel_error(out["final_state"], triton_scan["final_state"]) <= tolerance(dtype)


def _record_gluon_launches(monkeypatch) -> tuple[list, list]:
    """Lists that record, call by call, whether chunk._scan_gluon and chunk._summaries_gluon launched their
    Gluon kernels."""
    ran, summarized = [], []
    scan_gluon, summaries_gluon = chunk_module._scan_gluon, chunk_module._summaries_gluon
    monkeypatch.setattr(chunk_module, "_scan_gluon", lambda *args: ran.append(scan_gluon(*args)) or ran[-1])
    monkeypatch.setattr(chunk_module, "_summaries_gluon",
                        lambda *args: summarized.append(summaries_gluon(*args)) or summarized[-1])
    return ran, summarized


@pytest.mark.gpu
def test_gpu_gluon_scan_runs_in_graphs_by_default(poisoned_empty, monkeypatch):
    """scan_gluon="auto" at D = 128 in bf16: the Triton scan and summaries in eager calls (no descriptors: tma
    "auto"), the Gluon ones inside a CUDA graph capture; the replay matches the eager output and the reference."""
    problem = Problem(B=1, T=4096, H=4, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=47, device="cuda", initial_state=False)
    plan = resolve_plan(DEFAULT_CONFIG, problem)
    assert plan.scan_gluon == "auto" and plan.segments > 1
    ran, summarized = _record_gluon_launches(monkeypatch)

    eager, captured = _eager_then_captured(
        lambda: delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk")[0])
    assert ran == [False, True] and summarized == [False, True]
    ref = run_op("reference", inputs.to(torch.float64), backward=False)
    assert rel_error(captured, ref["o"]) <= tolerance(torch.bfloat16)
    assert rel_error(captured, eager) <= tolerance(torch.bfloat16)


def _chunk_inverses(plan, k: torch.Tensor, beta: torch.Tensor, cu_seqlens=None) -> torch.Tensor:
    """The inverse kernel's Tm ([B, T, H, C], float32 so that nothing is rounded) of ``plan``, into a
    NaN-poisoned buffer."""
    B, T, H, _ = k.shape
    C = plan.chunk_size
    layout = chunk_layout(B, T, cu_seqlens, C, k.device)
    tm = torch.full((B, T, H, C), float("nan"), dtype=torch.float32, device=k.device)
    return chunk_module._inverse(plan, layout, k, beta, tm)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_size, K", [(16, 64), (32, 128), (64, 48), (64, 128), (64, 256)])
@pytest.mark.parametrize("keys", ["random", "identical", "two_clusters"])
@pytest.mark.parametrize("varlen", [False, True])
def test_gpu_gluon_inverse_matches_float64(chunk_size, K, keys, varlen):
    """The Gluon inverse (inverse_gluon="on", chunk_inverse_gluon.py) against float64 on bf16 keys, every
    chunk and head, partial last chunks included (packed sequences of uneven lengths with ``varlen``), Tm
    stored in float32: relative error <= 1e-5, as the Triton kernel's; and the two kernels agree."""
    gen = torch.Generator().manual_seed(chunk_size + K)
    H = 3
    lengths = [chunk_size * 2 + 5, chunk_size - 3, 3 * chunk_size] if varlen else [2 * chunk_size + 5] * 2
    B, T = (1, sum(lengths)) if varlen else (len(lengths), lengths[0])
    k, beta = _adversarial_keys(keys, (B, T, H, K), gen)
    k, beta = k.to("cuda", torch.bfloat16), beta.to("cuda", torch.bfloat16)
    cu_seqlens = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32) if varlen else None
    problem = Problem(B=B, T=T, H=H, K=K, V=K, dtype=torch.bfloat16, num_seqs=len(lengths), varlen=varlen,
                      device="cuda")
    config = dict(DEFAULT_CONFIG, chunk_size=chunk_size)
    gluon_plan = resolve_plan(dict(config, inverse_gluon="on"), problem)
    assert gluon_plan.inverse_gluon and not resolve_plan(dict(config, inverse_gluon="off"), problem).inverse_gluon
    out = _chunk_inverses(gluon_plan, k, beta, cu_seqlens)
    triton_out = _chunk_inverses(resolve_plan(dict(config, inverse_gluon="off"), problem), k, beta, cu_seqlens)
    assert torch.isfinite(out).all() and torch.isfinite(triton_out).all()
    bounds = [0] + torch.tensor(lengths).cumsum(0).tolist() if varlen else None
    for seq in range(len(lengths)):
        for head in range(H):
            if varlen:
                rows = slice(bounds[seq], bounds[seq + 1])
                keys_h, beta_h, got = k[0, rows, head], beta[0, rows, head], out[0, rows, head]
            else:
                keys_h, beta_h, got = k[seq, :, head], beta[seq, :, head], out[seq, :, head]
            ref = _inverse_reference(keys_h, beta_h, chunk_size).reshape(-1, chunk_size)[: got.shape[0]]
            assert rel_error(got, ref) <= 1e-5, (seq, head, rel_error(got, ref))
    assert rel_error(out, triton_out) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_size, K", [(16, 64), (32, 128), (64, 64), (64, 128)])
@pytest.mark.parametrize("keys", ["random", "identical"])
def test_gpu_gluon_inverse_keys_through_descriptors(monkeypatch, chunk_size, K, keys):
    """tma="on": the Gluon inverse takes its keys through a descriptor (whole chunks, whole keys), the next
    tile's while one is inverted -- the same Tm as through pointers, bit for bit, and within 1e-5 of float64
    for every chunk and head; tma="off" keeps the pointers."""
    gen = torch.Generator().manual_seed(chunk_size * K)
    B, T, H = 2, 4 * chunk_size, 3
    k, beta = _adversarial_keys(keys, (B, T, H, K), gen)
    k, beta = k.to("cuda", torch.bfloat16), beta.to("cuda", torch.bfloat16)
    problem = Problem(B=B, T=T, H=H, K=K, V=K, dtype=torch.bfloat16, device="cuda")
    plan = resolve_plan(dict(DEFAULT_CONFIG, chunk_size=chunk_size, inverse_gluon="on", tma="on"), problem)
    described = []
    descriptor = chunk_module._inverse_key_descriptor
    monkeypatch.setattr(chunk_module, "_inverse_key_descriptor",
                        lambda *args: described.append(descriptor(*args)) or described[-1])
    through_descriptor = _chunk_inverses(plan, k, beta)
    through_pointers = _chunk_inverses(replace(plan, tma="off"), k, beta)
    assert described[0] is not None and described[1] is None
    assert torch.isfinite(through_descriptor).all()
    assert torch.equal(through_descriptor, through_pointers)
    for seq in range(B):
        for head in range(H):
            ref = _inverse_reference(k[seq, :, head], beta[seq, :, head], chunk_size).reshape(-1, chunk_size)
            assert rel_error(through_descriptor[seq, :, head], ref) <= 1e-5, (seq, head)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, B, config", [
    (torch.bfloat16, 128, 2, {}), (torch.float16, 64, 2, {"chunk_size": 32}),
    (torch.bfloat16, 256, 1, {"scan_segments": 2, "forward_scan": "tm"}), (torch.bfloat16, 64, 2, {"forward_scan": "wu"}),
])
def test_gpu_gluon_inverse_in_the_op(poisoned_empty, dtype, K, B, config):
    """The whole op with the Gluon inverse: inference forwards (Tm scan, with segments too, and the W / U
    form) and the forward + backward (inverse="kernel") against the float64 reference."""
    problem = Problem(B=B, T=4 * 64 + 17 if B > 1 else 512, H=3, K=K, V=K, dtype=dtype, device="cuda")
    config = dict(config, inverse_gluon="on")
    inputs = random_inputs(problem, seed=23, device="cuda")
    out = run_op("chunk", inputs, config, backward=False)
    assert_close(out, run_op("reference", inputs.to(torch.float64), backward=False), dtype, label=f"inference {config}")
    check_against_reference(problem, dict(config, inverse="kernel"), seed=29)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, chunk_size, K, extra", [
    (torch.bfloat16, 64, 64, {}), (torch.bfloat16, 64, 128, {"wy_inverse": "recompute"}),
    (torch.bfloat16, 64, 256, {"warps_intra": 16}), (torch.bfloat16, 32, 128, {}),
    (torch.float32, 64, 128, {"wy_inverse": "recompute", "save_for_backward": "inputs"}), (torch.float16, 16, 64, {}),
])
@pytest.mark.parametrize("inverse", ["registers", "kernel"])
def test_gpu_inverse_options(poisoned_empty, dtype, chunk_size, K, extra, inverse):
    """inverse="registers" (batched 3-D products, joins and reshapes of register tiles) and "kernel" (the
    inverse in a kernel of its own) compiled for the GPU, in the forward and in the backward."""
    problem = Problem(B=2, T=300, H=4, K=K, V=K, dtype=dtype, device="cuda")
    check_against_reference(problem, {"chunk_size": chunk_size, "inverse": inverse, **extra}, seed=21)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
@pytest.mark.parametrize("dtype, K", [(torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float16, 256)])
def test_gpu_16bit_inverse_precision(poisoned_empty, dtype, K, precision):
    """For 16-bit inputs input_precision reaches only the float32 block merges of the triangular inverse
    (Tm is rounded to the input dtype afterwards): every precision within the 16-bit tolerance."""
    problem = Problem(B=2, T=500, H=3, K=K, V=K, dtype=dtype, device="cuda")
    check_against_reference(problem, {"chunk_size": 64, "input_precision": precision}, seed=15)


@pytest.mark.gpu
def test_gpu_head_dim_256_backward_at_the_former_fault_shape():
    """K = V = 256, B = 4, T = 4096, H = 8 in bf16: where the backward hit an illegal memory access with
    32-wide scan V tiles (those fit one pipeline stage only; one-stage scans are refused at key dims
    above 128). Every output and gradient against
    "torch_chunk" in float64 on the same (upcast) inputs (the token-by-token reference's autograd would
    keep 4096 float64 [32, 256, 256] states)."""
    problem = Problem(B=4, T=4096, H=8, K=256, V=256, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=3, device="cuda")
    out = run_op("chunk", inputs)
    ref = run_op("torch_chunk", inputs.to(torch.float64), {"chunk_size": 64})
    assert_close(out, ref, torch.bfloat16, label="K=V=256 B=4 T=4096")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_varlen(poisoned_empty, dtype):
    problem = Problem(B=1, T=1000, H=4, K=128, V=64, dtype=dtype, num_seqs=7, varlen=True, device="cuda")
    check_against_reference(problem, {"chunk_size": 64}, seed=11)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_sampled_configs(dtype):
    """Random points of the space that pass the constraints compute the same answer (catches
    miscompiled launch settings)."""
    rng = random.Random(1234)
    variant = registry.get("chunk")
    problem = Problem(B=1, T=300, H=2, K=128, V=96, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=2, device="cuda")
    ref = run_op("reference", inputs.to(torch.float64))
    checked = 0
    while checked < 6:
        config = {key: rng.choice(values) for key, values in variant.space.items()}
        if dtype != torch.float32:
            config["input_precision"] = rng.choice(["ieee", "tf32x3"])
        else:
            config["input_precision"] = "ieee"
        if constraints(config, problem) is not None:
            continue
        assert_close(run_op("chunk", inputs, config), ref, dtype, label=str(config))
        checked += 1


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 65536])
def test_gpu_long_sequence_stability_chunk128_bf16(T):
    """Chunk 128 in bfloat16 over long sequences with normalised keys: finite and within tolerance. The
    comparison is against variant "torch_chunk" in float64 on the same (upcast) CUDA inputs, because the
    token-by-token reference is too slow at T = 65536."""
    problem = Problem(B=1, T=T, H=2, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=4, device="cuda")
    out = run_op("chunk", inputs, {"chunk_size": 128})
    ref = run_op("torch_chunk", inputs.to(torch.float64), {"chunk_size": 64})
    assert_close(out, ref, torch.bfloat16, label=f"T={T}")


@pytest.mark.gpu
def test_gpu_tf32_precision_is_fast_mode_for_float32():
    """"tf32" trades float32 exactness for speed: still close (bf16-level), never NaN."""
    problem = Problem(B=1, T=400, H=2, K=64, V=64, dtype=torch.float32, device="cuda")
    inputs = random_inputs(problem, seed=6, device="cuda")
    out = run_op("chunk", inputs, {"input_precision": "tf32"})
    ref = run_op("reference", inputs.to(torch.float64))
    assert_close(out, ref, torch.float32, fwd_tol=1e-2, grad_tol=2e-2, label="tf32")


@pytest.mark.gpu
def test_gpu_speed_sanity():
    """Times forward and forward+backward at the issue's shape (bf16, B*T = 16384, H*D = 2048, D = 128)
    and prints them next to the peer's when fla-core is installed. Asserts only a loose bound (4x the
    peer's measured 0.9 ms forward) that catches pathological slowness such as heavy register spills."""
    import triton.testing

    B, T, H, D = 1, 16384, 16, 128
    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=0, device="cuda", initial_state=False)
    q, k, v, beta = (x.requires_grad_() for x in (inputs.q, inputs.k, inputs.v, inputs.beta))

    def fwd():
        return delta_rule(q, k, v, beta, variant="chunk")[0]

    def fwd_bwd():
        fwd().backward(do)

    do = torch.randn_like(v)
    fwd_bwd()
    t_fwd = triton.testing.do_bench(fwd, warmup=25, rep=100)
    t_all = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100)
    line = f"chunk bf16 T={T} H={H} D={D}: fwd {t_fwd:.3f} ms, fwd+bwd {t_all:.3f} ms"
    try:
        from fla.ops.delta_rule import chunk_delta_rule

        peer_fwd = triton.testing.do_bench(lambda: chunk_delta_rule(q, k, v, beta)[0], warmup=25, rep=100)
        line += f"; peer fwd {peer_fwd:.3f} ms ({peer_fwd / t_fwd:.2f}x)"
    except ImportError:
        pass
    print(line)
    assert t_fwd < 3.6, line


def test_wide_key_dims_run_the_scans_at_two_stages_or_more():
    """At key dims above 128 the 16-bit scans fault at one pipeline stage (H200): the automatic plan
    gives them 16-wide V tiles at two stages even where wider tiles would fill the SMs (wider ones fit
    one stage only), explicit one-stage scans are refused with the reason, wider tiles are refused for
    shared memory at two stages, and the backward runs (no head-dim refusal, CUDA or not). float32,
    where two stages never fit, keeps one stage and 16-wide tiles; K = 128 keeps wider tiles."""
    chunk = registry.get("chunk")
    fused = dict(DEFAULT_CONFIG, output="fused")  # output="auto" widens the forward scan where it can
    for B, T, H in ((8, 2048, 8), (4, 4096, 8), (1, 16384, 8)):
        for dtype, stages in ((torch.bfloat16, 2), (torch.float16, 2), (torch.float32, 1)):
            wide = Problem(B=B, T=T, H=H, K=256, V=256, dtype=dtype, device="cuda")
            plan = resolve_plan(fused, wide)
            assert plan.state.block_v == plan.state_bwd.block_v == 16, (B, plan)
            assert plan.state.stages == plan.state_bwd.stages == stages, (B, dtype, plan)
            assert resolve_plan(DEFAULT_CONFIG, wide).state.stages >= stages  # "auto": the separate scan, deeper
            assert constraints(fused, wide) is None and constraints(DEFAULT_CONFIG, wide) is None
            assert chunk.backward_unsupported_reason(wide) is None
    narrow = Problem(B=8, T=2048, H=16, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    assert resolve_plan(DEFAULT_CONFIG, narrow).state.block_v > 16  # K = 128 keeps the wider tiles
    wide = replace(narrow, K=200)
    for key in ("stages_state", "stages_state_bwd"):
        reason = constraints(dict(DEFAULT_CONFIG, **{key: 1}), wide)
        assert reason is not None and f"{key}=1" in reason and "K=200" in reason, reason
        assert constraints(dict(DEFAULT_CONFIG, **{key: 2}), wide) is None
        assert constraints(dict(DEFAULT_CONFIG, **{key: 1}), narrow) is None
        assert constraints(dict(DEFAULT_CONFIG, **{key: 1}), replace(wide, dtype=torch.float32)) is None
    for key in ("block_v", "block_v_bwd"):  # (with output="auto" a wide forward tile takes the separate kernel)
        reason = constraints(dict(fused, **{key: 32}), wide)
        assert reason is not None and "shared memory" in reason and "stages=2" in reason, reason
        assert "lower tiles or chunk_size" in reason  # not "lower stages": one stage is what faults
        assert constraints(dict(fused, **{key: 16}), wide) is None
        assert constraints(dict(fused, **{key: 32}), narrow) is None


# ------------------------------------------------------------------------------------ fast paths' fallback
class _FailingLaunch:
    """Stands in for a kernel whose build fails on this Triton (``when(kwargs)``: which launches fail); other
    launches go to ``kernel``."""

    def __init__(self, kernel, error: Exception, when=lambda kwargs: True):
        self.kernel, self.error, self.when = kernel, error, when

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.when(kwargs):
                raise self.error
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def broken_fast_paths(monkeypatch):
    """Every fast path of the chunk variant fails to build, each its own way: the Gluon inverse's and the Gluon
    summaries' modules do not import, the Gluon scan's kernel fails to compile (the error Triton 3.7 gave), and
    the Triton summaries' and scan's tensor-descriptor variants fail; the plan asks for all of them (the
    interpreter's CPU tensors take none by themselves)."""
    from deltalab.variants import chunk_scan_tm_gluon, fast_paths

    monkeypatch.setenv("DELTALAB_FAST_PATHS", "auto")
    fast_paths.reset()
    monkeypatch.setitem(sys.modules, "deltalab.variants.chunk_inverse_gluon", None)
    monkeypatch.setitem(sys.modules, "deltalab.variants.chunk_segments_gluon", None)
    monkeypatch.setattr(chunk_scan_tm_gluon, "chunk_scan_tm_gluon_kernel", _FailingLaunch(
        None, AttributeError("module 'triton.experimental.gluon.language' has no attribute 'thread_barrier'")))
    for name in ("chunk_scan_tm_kernel", "chunk_segment_summary_kernel"):
        monkeypatch.setattr(chunk_module, name, _FailingLaunch(
            getattr(chunk_module, name), RuntimeError("descriptor load rejected"), lambda kwargs: kwargs["TMA"]))
    real_plan = chunk_module.resolve_plan
    monkeypatch.setattr(chunk_module, "resolve_plan", lambda config, problem: replace(
        real_plan(config, problem), inverse_gluon=True, scan_gluon="on", tma="on"))
    yield fast_paths
    fast_paths.reset()


def test_fast_paths_that_cannot_build_fall_back_with_one_warning_each(poisoned_empty, broken_fast_paths):
    """A fast path that fails to import or compile: the call runs the plain Triton kernels for that stage and
    matches float64, warning once per fast path (naming it, the Triton version and the reason); a second call
    warns no more and is as right."""
    problem = Problem(B=1, T=256, H=2, K=64, V=64, dtype=torch.float16, device=DEVICE)
    inputs = random_inputs(problem, seed=11, device=DEVICE, initial_state=True)
    ref = run_op("reference", inputs.to(torch.float64), backward=True)
    config = {"forward_scan": "tm", "scan_segments": 2}
    with pytest.warns(broken_fast_paths.FastPathWarning) as record:
        out = run_op("chunk", inputs, config, backward=False)  # inference: the Tm scan on segments
    assert_close(out, ref, problem.dtype, label="inference, fast paths broken")
    fallbacks = [str(w.message) for w in record if issubclass(w.category, broken_fast_paths.FastPathWarning)]
    messages = {message.split("'")[1]: message for message in fallbacks}
    assert sorted(messages) == ["inverse_gluon", "scan_gluon", "summary_gluon", "tma"], messages
    assert len(fallbacks) == 4
    assert all(f"triton {triton.__version__}" in m and "plain Triton kernels" in m for m in messages.values())
    assert "chunk_inverse_gluon halted" in messages["inverse_gluon"] and "thread_barrier" in messages["scan_gluon"]
    assert "descriptor load rejected" in messages["tma"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", broken_fast_paths.FastPathWarning)  # no second warning
        again = run_op("chunk", inputs, config, backward=True)  # differentiated: the inverse kernel again
    assert_close(again, ref, problem.dtype, label="forward+backward, fast paths broken")


def test_fast_paths_strict_mode_raises_and_off_mode_tries_none(broken_fast_paths, monkeypatch):
    """DELTALAB_FAST_PATHS=strict (the GPU tests' setting) raises the build error; "off" runs no fast path, with
    no warning; a value outside the three is refused, naming the variable."""
    problem = Problem(B=1, T=128, H=1, K=64, V=64, dtype=torch.float16, device=DEVICE)
    inputs = random_inputs(problem, seed=12, device=DEVICE, initial_state=False)
    monkeypatch.setenv("DELTALAB_FAST_PATHS", "strict")
    broken_fast_paths.reset()
    with pytest.raises(ImportError):
        run_op("chunk", inputs, {"forward_scan": "tm"}, backward=False)
    monkeypatch.setenv("DELTALAB_FAST_PATHS", "off")
    broken_fast_paths.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", broken_fast_paths.FastPathWarning)
        out = run_op("chunk", inputs, {"forward_scan": "tm"}, backward=False)
    assert torch.isfinite(out["o"]).all()
    monkeypatch.setenv("DELTALAB_FAST_PATHS", "sometimes")
    broken_fast_paths.reset()
    with pytest.raises(ValueError, match="DELTALAB_FAST_PATHS"):
        run_op("chunk", inputs, {"forward_scan": "tm"}, backward=False)


@pytest.mark.gpu
def test_gluon_fast_paths_that_cannot_import_fall_back_on_the_gpu(monkeypatch):
    """On a GPU, bf16 (where "auto" takes the Gluon inverse on Hopper, and the Gluon scan inside a graph): with the
    Gluon modules failing to import, eager and graph-captured forwards and a forward+backward match float64."""
    from deltalab.variants import fast_paths

    monkeypatch.setenv("DELTALAB_FAST_PATHS", "auto")
    fast_paths.reset()
    for module in ("chunk_inverse_gluon", "chunk_segments_gluon", "chunk_scan_tm_gluon"):
        monkeypatch.setitem(sys.modules, f"deltalab.variants.{module}", None)
    problem = Problem(B=1, T=2048, H=4, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=13, device="cuda", initial_state=True)
    ref = run_op("reference", inputs.to(torch.float64), backward=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fast_paths.FastPathWarning)
        assert_close(run_op("chunk", inputs), ref, problem.dtype, label="fwd+bwd")
        q, k, v, beta, h0 = inputs.tensors()
        delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o, final_state = delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)
        o.fill_(float("nan"))
        graph.replay()
    assert_close({"o": o, "final_state": final_state}, ref, problem.dtype, label="graph forward")
    fast_paths.reset()
