"""The numerics gate (harness.numerics.check_variant): it passes a good variant and catches broken ones.

Broken variants are registered for the duration of one test (registry.register / unregister): one that
ignores beta, one that leaves the last partial chunk of o unwritten (only the NaN poisoning of
allocations exposes it reliably), ones that put a NaN into o or into a gradient, one that ignores the
initial state, one that crashes. Every one must fail with a reason naming the tensor; the gate itself
must never raise.
"""

import json
import math
from dataclasses import replace

import pytest
import torch

from deltalab.harness import numerics
from deltalab.harness.numerics import CheckResult, check_variant, poisoned, rel_error
from deltalab.variants import Problem, registry
from deltalab.variants.common import autograd_backward

CPU_DTYPES = dict(dtypes=(torch.float64, torch.float32, torch.float16, torch.bfloat16), devices=("cpu", "cuda"), max_head_dim=4096)
SMALL = Problem(B=2, T=37, H=2, K=16, V=24, dtype=torch.float32, device="cpu")  # 37 = 2 chunks of 16 + 5


@pytest.fixture
def temp_variant():
    """Register test variants (family delta_rule unless given); all are unregistered afterwards."""
    added = []

    def add(name, forward, family="delta_rule", **fields):
        fields = {**CPU_DTYPES, **fields}
        registry.register(name, family, **fields)(forward)
        added.append((name, family))
        return name

    yield add
    for name, family in added:
        registry.unregister(name, family)


def torch_chunk_forward(*args, **kwargs):
    """The healthy torch_chunk forward, reached through the registry (config: its default)."""
    kwargs["config"] = {"chunk_size": 16}
    return registry.get("torch_chunk").forward(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- good ones


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_chunk_passes_with_every_tensor_compared(dtype):
    problem = Problem(B=2, T=37, H=2, K=16, V=24, dtype=dtype, device="cpu")
    result = check_variant("torch_chunk", problem, {"chunk_size": 16})
    assert result.passed, result.reason
    assert result.status == "passed" and result.reason == ""
    assert set(result.errors) == set(numerics.ERROR_KEYS)
    assert set(result.tolerances) == set(result.errors)
    for key, error in result.errors.items():
        assert math.isfinite(error) and 0 < error <= result.tolerances[key], key
    assert result.config == {"chunk_size": 16}
    # the tolerances are the per-dtype ones, kept in one place
    assert result.tolerances["o"] == numerics.TOLERANCES[dtype][0]
    assert result.tolerances["dk"] == numerics.TOLERANCES[dtype][1]


def test_varlen_and_no_initial_state():
    problem = Problem(B=1, T=45, H=2, K=16, V=16, dtype=torch.float32, device="cpu", num_seqs=3, varlen=True)
    result = check_variant("torch_chunk", problem, initial_state=False, seed=3)
    assert result.passed, result.reason
    assert "dh0" not in result.errors and "dq" in result.errors
    assert result.config == registry.get("torch_chunk").default_config


def test_forward_only():
    result = check_variant("torch_chunk", SMALL, backward=False)
    assert result.passed and set(result.errors) == {"o", "final_state"}


def test_block_diag_family_passes():
    if "torch_chunk" not in registry.names("block_diag"):
        pytest.skip("no block_diag torch_chunk registered")
    problem = Problem(B=1, T=21, H=2, K=32, V=16, dtype=torch.float32, device="cpu", block_size=16)
    result = check_variant("torch_chunk", problem, family="block_diag")
    assert result.passed, result.reason
    assert "dbeta" in result.errors


def test_to_row_is_flat_and_json_able():
    row = check_variant("torch_chunk", SMALL).to_row()
    assert row["status"] == "passed" and row["variant"] == "torch_chunk" and row["dtype"] == "float32"
    assert json.loads(row["config"]) == {"chunk_size": 64}
    assert all(not isinstance(v, (dict, list, torch.Tensor)) for v in row.values())
    assert row["err_o"] < row["tol_o"]
    json.dumps(row)


# ---------------------------------------------------------------------------------------------- broken ones


def test_variant_ignoring_beta_fails(temp_variant):
    def forward(q, k, v, beta, **kw):
        return torch_chunk_forward(q, k, v, torch.ones_like(beta), **kw)

    name = temp_variant("test_ignores_beta", forward, backward=autograd_backward(forward))
    result = check_variant(name, SMALL)
    assert not result.passed and result.status == "failed"
    assert result.errors["o"] > 1e-2 and math.isfinite(result.errors["o"])  # wrong, not NaN
    assert result.reason.startswith("o: error")
    assert "dbeta" in result.reason


def test_unwritten_partial_chunk_is_exposed_by_poisoning(temp_variant):
    chunk = 16

    def forward(q, k, v, beta, **kw):
        o_full, final_state = torch_chunk_forward(q, k, v, beta, **kw)
        o = torch.empty_like(o_full)  # the bug: only whole chunks are copied out
        whole = (o.shape[1] // chunk) * chunk
        o[:, :whole] = o_full[:, :whole]
        return o, final_state

    name = temp_variant("test_unwritten_tail", forward, backward=autograd_backward(torch_chunk_forward))
    result = check_variant(name, SMALL)
    assert not result.passed
    assert result.errors["o"] == float("inf")
    tail = SMALL.B * (SMALL.T % chunk) * SMALL.H * SMALL.V
    assert result.reason.startswith(f"o: {tail} of {SMALL.B * SMALL.T * SMALL.H * SMALL.V} elements NaN/Inf")
    # everything else was written and is right
    assert result.errors["final_state"] < result.tolerances["final_state"]


def test_poisoned_fills_fresh_allocations_and_restores_settings():
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with poisoned():
        assert torch.empty(64).isnan().all()
        assert torch.empty_like(torch.ones(3, 5)).isnan().all()
        assert torch.ones(2).new_empty(7).isnan().all()
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_nan_in_output_fails(temp_variant):
    def forward(q, k, v, beta, **kw):
        o, final_state = torch_chunk_forward(q, k, v, beta, **kw)
        o = o.clone()
        o[1, 20, 1, 3] = float("nan")
        return o, final_state

    name = temp_variant("test_nan_output", forward, backward=autograd_backward(torch_chunk_forward))
    result = check_variant(name, SMALL)
    assert not result.passed and result.errors["o"] == float("inf")
    assert result.reason.startswith("o: 1 of ")
    assert "dq" in result.errors and result.errors["dq"] < result.tolerances["dq"]


def test_inf_in_a_gradient_fails(temp_variant):
    healthy = autograd_backward(torch_chunk_forward)

    def backward(*args, **kw):
        dq, dk, dv, dbeta, dh0 = healthy(*args, **kw)
        dk = dk.clone()
        dk[0, 0, 0, 0] = float("inf")
        return dq, dk, dv, dbeta, dh0

    name = temp_variant("test_inf_dk", torch_chunk_forward, backward=backward)
    result = check_variant(name, SMALL)
    assert not result.passed
    assert result.errors["o"] < result.tolerances["o"]
    assert result.errors["dk"] == float("inf") and result.reason.startswith("dk: 1 of ")


def test_a_wrong_inference_forward_fails(temp_variant):
    """A variant whose inference call (nothing kept for a backward) runs other, broken code while its
    differentiated call is right: the check's second, inference call catches it."""
    healthy = autograd_backward(torch_chunk_forward)

    def forward(q, k, v, beta, keep_residuals=False, **kw):
        o, final_state = torch_chunk_forward(q, k, v, beta, **kw)
        return (o if keep_residuals else o * 1.01), final_state, None

    def backward(*args, residual=None, **kw):
        return healthy(*args, **kw)

    name = temp_variant("test_wrong_inference", forward, backward=backward, keeps_residuals=True)
    result = check_variant(name, SMALL)
    assert not result.passed
    assert result.reason.startswith("o: ") and result.reason.endswith("(inference call)"), result.reason
    assert result.errors["o"] > result.tolerances["o"] and result.errors["dq"] < result.tolerances["dq"]
    assert check_variant(name, SMALL, backward=False).errors["o"] > result.tolerances["o"]


def test_ignoring_the_initial_state_fails(temp_variant):
    def forward(q, k, v, beta, *, initial_state, **kw):
        return torch_chunk_forward(q, k, v, beta, initial_state=None, **kw)

    name = temp_variant("test_no_h0", forward, backward=autograd_backward(forward))
    result = check_variant(name, SMALL)
    assert not result.passed
    assert "o: error" in result.reason and "final_state: error" in result.reason and "dh0" in result.reason
    assert check_variant(name, SMALL, initial_state=False).passed  # ...which is fine without one


def test_crashing_variant_fails_without_raising(temp_variant):
    def forward(*args, **kw):
        raise RuntimeError("kernel exploded")

    name = temp_variant("test_crash", forward)
    result = check_variant(name, SMALL)
    assert not result.passed and not result.skipped
    assert "RuntimeError: kernel exploded" in result.reason
    assert all(e == float("inf") for e in result.errors.values())


def test_unsupported_problem_is_skipped_not_failed(temp_variant):
    name = temp_variant("test_cuda_only", torch_chunk_forward, devices=("cuda",))
    result = check_variant(name, SMALL)
    assert result.skipped and not result.passed and result.status == "skipped"
    assert "device 'cpu' not supported" in result.reason


def test_config_rejected_by_constraints_is_skipped(temp_variant):
    name = temp_variant(
        "test_constrained",
        torch_chunk_forward,
        space={"tile": (16, 64)},
        default_config={"tile": 64},
        constraints=lambda cfg, p: "tile larger than K" if cfg["tile"] > p.K else None,
    )
    skipped = check_variant(name, SMALL)
    assert skipped.skipped and "tile larger than K" in skipped.reason
    assert check_variant(name, SMALL, {"tile": 16}, backward=False).passed


def test_unknown_variant_and_bad_config_fail_cleanly():
    result = check_variant("no_such_variant", SMALL)
    assert not result.passed and "unknown variant" in result.reason
    bad = check_variant("torch_chunk", SMALL, {"chunk_size": 3})
    assert not bad.passed and not bad.skipped and "chunk_size=3" in bad.reason


def test_no_backward_is_noted(temp_variant):
    name = temp_variant("test_fwd_only", torch_chunk_forward)
    result = check_variant(name, SMALL)
    assert result.passed and set(result.errors) == {"o", "final_state"}
    assert "no backward" in result.notes


# ---------------------------------------------------------------------------------------------- helpers


def test_rel_error_nan_inf_and_shapes():
    ref = torch.randn(4, 5, dtype=torch.float64)
    assert rel_error(ref, ref) == 0
    assert rel_error(ref * (1 + 1e-3), ref) == pytest.approx(1e-3)
    bad = ref.clone()
    bad[2, 2] = float("nan")
    assert rel_error(bad, ref) == float("inf")
    bad[2, 2] = float("-inf")
    assert rel_error(bad, ref) == float("inf")
    assert rel_error(ref[:3], ref) == float("inf")


def test_random_inputs_are_fresh_and_keys_normalised():
    problem = Problem(B=2, T=9, H=3, K=8, V=4, dtype=torch.float32, device="cpu")
    a = numerics.random_inputs(problem, seed=1)
    b = numerics.random_inputs(problem, seed=2)
    assert not torch.equal(a.q, b.q)
    assert torch.allclose(a.k.norm(dim=-1), torch.ones(2, 9, 3), atol=1e-6)
    assert (a.beta > 0).all() and (a.beta < 1).all()
    for x in a.tensors():
        assert (x != 0).all()


def test_check_sets_cover_partial_chunks_and_varlen():
    for device in ("cpu", "cuda"):
        problems = numerics.check_problems("delta_rule", device, quick=True)
        assert any(p.varlen for p in problems) and any(p.T % 64 for p in problems)
        assert all(p.device == device for p in problems)
        assert len(numerics.check_problems("delta_rule", device)) > len(problems)
        for p in numerics.check_problems("block_diag", device):
            assert p.K % p.block_size == 0 and p.num_blocks > 1
    assert torch.bfloat16 not in numerics.check_dtypes("cpu")
    assert "reference" not in numerics.check_variants("delta_rule")


def test_check_table_renders_every_status(temp_variant):
    from rich.console import Console

    def forward(*args, **kw):
        raise RuntimeError("boom [red]x[/]")  # markup in a reason is printed, not interpreted

    name = temp_variant("test_table_crash", forward)
    results = [check_variant("torch_chunk", SMALL, backward=False), check_variant(name, SMALL)]
    results.append(CheckResult("x", "delta_rule", SMALL, {}, skipped=True, reason="not here"))
    console = Console(record=True, width=250)
    console.print(numerics.check_table(results))
    text = console.export_text()
    assert "passed" in text and "failed" in text and "skipped" in text
    assert "boom [red]x[/]" in text and "NaN/Inf" in text


@pytest.mark.gpu
def test_every_registered_variant_passes_the_quick_gpu_set_in_every_dtype():
    """The GPU gate (what `deltalab check --quick` runs there): bf16, fp16, fp32, both families."""
    failures = []
    for family in registry.FAMILIES:
        for problem in numerics.check_problems(family, "cuda", quick=True):
            for dtype in numerics.check_dtypes("cuda"):
                for name in numerics.check_variants(family):
                    r = check_variant(name, replace(problem, dtype=dtype), family=family)
                    if r.status == "failed":
                        failures.append((family, name, numerics.short_shape(problem), str(dtype), r.reason))
    assert not failures, failures


@pytest.mark.gpu
def test_unwritten_tail_is_exposed_on_the_gpu(temp_variant):
    """On CUDA the caching allocator hands back the block that held the previous (correct) output, so
    without poisoning an unwritten tail would read as right; the gate must still see NaN there."""
    chunk = 64

    def forward(q, k, v, beta, **kw):
        o_full, final_state = torch_chunk_forward(q, k, v, beta, **kw)
        o = torch.empty_like(o_full)
        whole = (o.shape[1] // chunk) * chunk
        o[:, :whole] = o_full[:, :whole]
        return o, final_state

    name = temp_variant("test_unwritten_tail_gpu", forward, backward=autograd_backward(torch_chunk_forward))
    problem = Problem(B=2, T=200, H=2, K=64, V=64, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):  # the second run finds the first run's buffers in the allocator's cache
        result = check_variant(name, problem)
        assert not result.passed and result.errors["o"] == float("inf") and "NaN/Inf" in result.reason


def test_wrong_output_dtype_fails(temp_variant):
    def forward(*args, **kw):
        o, final_state = torch_chunk_forward(*args, **kw)
        return o.to(torch.float64), final_state  # accurate, but not in v's dtype

    name = temp_variant("test_o_float64", forward)
    result = check_variant(name, SMALL, backward=False)
    assert not result.passed and result.errors["o"] < result.tolerances["o"]
    assert result.reason == "o: dtype float64, expected float32"
