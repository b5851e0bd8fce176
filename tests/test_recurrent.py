"""Variant "recurrent" (variants/fused_recurrent.py) against the float64 reference.

Every check runs both variants through the public op ``delta_rule`` on the same fresh random inputs (keys
L2-normalised) and compares outputs, final state and every gradient -- with random upstream gradients for
o and for the final state -- by relative Frobenius error against harness.numerics tolerances. On CPU the
Triton kernels run under the interpreter (tests/conftest.py), so shapes are small; the GPU tests (bf16 and
larger shapes, every config of the tuning space) are marked ``gpu``.

Run ``python tests/test_recurrent.py`` on a GPU machine for a forward/backward timing table of a few
configs at the anchor shapes of ../shared/anchors.md.
"""

from __future__ import annotations

import pytest
import torch
import triton

from deltalab.harness.numerics import Inputs, random_inputs, rel_error, tolerance
from deltalab.variants import delta_rule, registry
from deltalab.variants import fused_recurrent
from deltalab.variants.registry import Problem

GRAD_NAMES = ("dq", "dk", "dv", "dbeta", "dh0")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Fill every output buffer the kernels should overwrite with NaN, so unwritten elements show."""

    def alloc(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fused_recurrent, "_alloc", alloc)


def run_op(
    inputs: Inputs, variant: str, *, config=None, output_final_state=True, grad_seed=1, grad_dtype=None
) -> dict:
    """o, final state and the gradients of one call of ``delta_rule``, by name.

    The upstream gradients of o and of the final state are fresh N(0, 1) draws from ``grad_seed`` (the same
    values for every variant at the same shapes), rounded to ``grad_dtype`` (o's dtype when None; the final
    state's gradient to float32) so that a float64 reference run sees exactly the values a lower-precision
    run gets.
    """
    leaves = [x.detach().clone().requires_grad_() for x in inputs.tensors()]
    q, k, v, beta = leaves[:4]
    h0 = leaves[4] if len(leaves) > 4 else None
    o, final_state = delta_rule(
        q, k, v, beta,
        initial_state=h0,
        output_final_state=output_final_state,
        cu_seqlens=inputs.cu_seqlens,
        variant=variant,
        config=config,
    )
    gen = torch.Generator().manual_seed(grad_seed)

    def draw(like, dtype):
        return torch.randn(like.shape, generator=gen, dtype=torch.float64).to(dtype).to(like)

    outputs, upstream = [o], [draw(o, grad_dtype or o.dtype)]
    if output_final_state:
        outputs.append(final_state)
        upstream.append(draw(final_state, torch.float32))
    grads = torch.autograd.grad(outputs, leaves, upstream)
    result = {"o": o.detach(), **dict(zip(GRAD_NAMES, grads))}
    if output_final_state:
        result["final_state"] = final_state.detach()
    return result


def assert_matches_reference(inputs: Inputs, dtype: torch.dtype, *, config=None, output_final_state=True) -> None:
    """Run "recurrent" on ``inputs`` and the reference on their float64 copies; every output within tolerance."""
    out = run_op(inputs, "recurrent", config=config, output_final_state=output_final_state)
    ref = run_op(inputs.to(torch.float64), "reference", output_final_state=output_final_state, grad_dtype=dtype)
    assert out.keys() == ref.keys()
    errors = {name: rel_error(out[name], ref[name]) for name in out}
    failures = {
        name: f"{err:.2e} > {tolerance(dtype, gradient=name in GRAD_NAMES):.0e}"
        for name, err in errors.items()
        if not err <= tolerance(dtype, gradient=name in GRAD_NAMES)
    }
    assert not failures, f"recurrent vs reference ({dtype}, config={config}): {failures}; all: {errors}"


# (id, problem fields, config): small shapes, each exercising something different
CASES = [
    # odd T, K != V, V not a multiple of block_v: 3 V tiles, so dq/dk/dbeta are atomic sums of partials
    ("odd_T_K_ne_V", dict(B=2, T=13, H=1, K=32, V=48), {"block_v": 16, "num_stages": 1}),
    # both head dims non-powers of two (padded K rows, masked V tail)
    ("K48_V100", dict(B=1, T=5, H=1, K=48, V=100), {"block_v": 32, "num_stages": 2}),
    # one V tile: dq/dk/dbeta stored directly in the input dtype
    ("single_tile", dict(B=2, T=9, H=1, K=64, V=16), {"block_v": 16, "num_stages": 3}),
    # packed sequences with their own initial states
    ("varlen", dict(B=1, T=29, H=2, K=32, V=32, varlen=True, num_seqs=3), {"block_v": 16, "num_stages": 2}),
    # the larger head dims, briefly; the backward halves this block_v (h and dh must fit): 2 tiles there
    ("K128_V64", dict(B=1, T=6, H=1, K=128, V=64), {"block_v": 64, "num_warps": 2, "num_stages": 1}),
    ("K256_V24", dict(B=1, T=4, H=1, K=256, V=24), {"block_v": 32, "num_warps": 4, "num_stages": 2}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("fields, config", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_reference(fields, config, dtype, device):
    problem = Problem(**fields, dtype=dtype, device=device)
    inputs = random_inputs(problem, seed=7, device=device)
    assert_matches_reference(inputs, dtype, config=config)


def test_bfloat16(device):
    """bf16 (no tl.dot in these kernels, so the interpreter computes it faithfully too)."""
    problem = Problem(B=1, T=8, H=2, K=32, V=48, dtype=torch.bfloat16, device=device)
    inputs = random_inputs(problem, seed=19, device=device)
    assert_matches_reference(inputs, torch.bfloat16, config={"block_v": 16})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_default_config_without_states(dtype, device):
    """Default config, no initial state and no final state: only o and dq, dk, dv, dbeta."""
    problem = Problem(B=2, T=11, H=1, K=16, V=16, dtype=dtype, device=device)
    inputs = random_inputs(problem, seed=3, device=device, initial_state=False)
    assert_matches_reference(inputs, dtype, output_final_state=False)


def test_empty_sequence_in_packed_batch(device):
    """A zero-length packed sequence passes its initial state through; its dh0 is the final state's gradient."""
    problem = Problem(B=1, T=9, H=1, K=16, V=16, dtype=torch.float32, device=device, varlen=True, num_seqs=3)
    inputs = random_inputs(problem, seed=5, device=device)
    inputs.cu_seqlens = torch.tensor([0, 4, 4, 9], dtype=torch.int64, device=device)
    assert_matches_reference(inputs, torch.float32, config={"block_v": 8})
    out = run_op(inputs, "recurrent", config={"block_v": 8})
    assert torch.equal(out["final_state"][1], inputs.initial_state[1])


def test_no_tokens(device):
    """T = 0: o is empty, the final state is the initial state and dh0 the final state's gradient."""
    problem = Problem(B=2, T=0, H=1, K=16, V=16, dtype=torch.float32, device=device)
    inputs = random_inputs(problem, seed=23, device=device)
    assert_matches_reference(inputs, torch.float32)
    out = run_op(inputs, "recurrent")
    assert out["o"].shape == (2, 0, 1, 16)
    assert torch.equal(out["final_state"], inputs.initial_state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_decode_chain_equals_one_call(dtype, device):
    """T = 1 decoding: feeding each call's final state into the next, token by token, equals one long call."""
    problem = Problem(B=2, T=10, H=2, K=32, V=32, dtype=dtype, device=device)
    inputs = random_inputs(problem, seed=11, device=device)
    config = {"block_v": 16}
    args = dict(variant="recurrent", config=config, output_final_state=True)
    o_long, h_long = delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, initial_state=inputs.initial_state, **args)

    state, steps = inputs.initial_state, []
    for t in range(problem.T):
        token = slice(t, t + 1)
        o_t, state = delta_rule(
            inputs.q[:, token], inputs.k[:, token], inputs.v[:, token], inputs.beta[:, token],
            initial_state=state, **args,
        )
        steps.append(o_t)
    o_chain = torch.cat(steps, dim=1)
    # the same float32 arithmetic either way: the state only round-trips through float32 memory
    assert rel_error(o_chain, o_long) <= 1e-6
    assert rel_error(state, h_long) <= 1e-6
    ref_o, ref_h = delta_rule(
        *(x.to(torch.float64) for x in (inputs.q, inputs.k, inputs.v, inputs.beta)),
        initial_state=inputs.initial_state.to(torch.float64), output_final_state=True, variant="reference",
    )
    assert rel_error(o_chain, ref_o) <= tolerance(dtype)
    assert rel_error(state, ref_h) <= tolerance(dtype)


# ------------------------------------------------------------------------------------ configs and registry
def test_configs_outside_constraints_rejected_with_reason():
    variant = registry.get("recurrent")
    fp16 = dict(B=1, T=64, H=4, dtype=torch.float16)
    too_wide = variant.config_reason({"block_v": 64, "num_warps": 1, "num_stages": 2}, Problem(K=32, V=32, **fp16))
    assert too_wide is not None and "larger than needed" in too_wide and "V=32" in too_wide
    too_big = variant.config_reason({"block_v": 64, "num_warps": 1, "num_stages": 2}, Problem(K=256, V=256, **fp16))
    assert too_big is not None and "registers" in too_big and "256 x 64" in too_big
    too_many_warps = variant.config_reason({"block_v": 8, "num_warps": 8, "num_stages": 2}, Problem(K=16, V=16, **fp16))
    assert too_many_warps is not None and "threads" in too_many_warps
    # the same settings with enough warps, or a tile that fits, are accepted
    assert variant.config_reason({"block_v": 64, "num_warps": 4, "num_stages": 2}, Problem(K=256, V=256, **fp16)) is None
    assert variant.config_reason({"block_v": 32, "num_warps": 1, "num_stages": 2}, Problem(K=32, V=32, **fp16)) is None


def test_backward_block_v_halves_until_two_tiles_fit():
    assert fused_recurrent.backward_block_v({"block_v": 64, "num_warps": 2}, 128) == 32
    assert fused_recurrent.backward_block_v({"block_v": 64, "num_warps": 4}, 256) == 32
    assert fused_recurrent.backward_block_v({"block_v": 16, "num_warps": 2}, 100) == 16  # K pads to 128: fits
    for K in (16, 100, 256):  # every config accepted for the forward leaves a backward that fits
        for config in registry.get("recurrent").iter_configs():
            problem = Problem(B=1, T=8, H=1, K=K, V=256)
            if registry.get("recurrent").config_reason(config, problem) is None:
                block_v = fused_recurrent.backward_block_v(config, K)
                per_thread = 2 * triton.next_power_of_2(K) * block_v // (32 * config["num_warps"])
                assert per_thread <= fused_recurrent.MAX_STATE_VALUES_PER_THREAD, (K, config)


def test_default_config_fits_every_supported_shape():
    variant = registry.get("recurrent")
    for K in (16, 48, 100, 256):
        for V in (16, 48, 100, 256):
            problem = Problem(B=1, T=8, H=1, K=K, V=V, dtype=torch.bfloat16)
            assert variant.config_reason(variant.default_config, problem) is None, (K, V)


def test_rejected_config_never_launches(monkeypatch, device):
    def launch(*args, **kwargs):
        raise AssertionError("a kernel was launched for a rejected config")

    monkeypatch.setattr(fused_recurrent, "_launch_forward", launch)
    inputs = random_inputs(Problem(B=1, T=4, H=1, K=32, V=32, dtype=torch.float32, device=device), device=device)
    with pytest.raises(ValueError, match="larger than needed"):
        delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="recurrent", config={"block_v": 64})
    with pytest.raises(ValueError, match="not allowed"):
        delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="recurrent", config={"block_v": 12})


def test_registration():
    variant = registry.get("recurrent")
    assert variant.is_triton and variant.supports_backward and variant.varlen
    assert torch.float64 not in variant.dtypes
    assert set(variant.space) == {"block_v", "num_warps", "num_stages"}
    problem = Problem(B=1, T=8, H=1, K=64, V=64, dtype=torch.bfloat16)
    assert variant.unsupported_reason(problem) is None
    assert "K=8" in variant.unsupported_reason(Problem(B=1, T=8, H=1, K=8, V=64))
    assert "V=512" in variant.unsupported_reason(Problem(B=1, T=8, H=1, K=64, V=512))
    assert "float64" in variant.unsupported_reason(Problem(B=1, T=8, H=1, K=64, V=64, dtype=torch.float64))
    cost = variant.cost(problem, variant.default_config)
    assert cost.flops == pytest.approx(problem.tokens * problem.H * (6 * 64 * 64 + 6 * 64 + 4 * 64))


# ------------------------------------------------------------------------------------ GPU
GPU_SHAPES = [
    ("K128", dict(B=2, T=1024, H=4, K=128, V=128), {"block_v": 16, "num_warps": 1}),
    ("K256", dict(B=2, T=1024, H=4, K=256, V=256), {"block_v": 16, "num_warps": 2}),
    ("K64_V100_varlen", dict(B=1, T=1024, H=4, K=64, V=100, varlen=True, num_seqs=5), None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("fields, config", [s[1:] for s in GPU_SHAPES], ids=[s[0] for s in GPU_SHAPES])
def test_gpu_matches_reference(fields, config, dtype):
    problem = Problem(**fields, dtype=dtype, device="cuda")
    inputs = random_inputs(problem, seed=13, device="cuda")
    assert_matches_reference(inputs, dtype, config=config)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("K, V", [(128, 128), (64, 100)])
def test_gpu_every_valid_config(K, V):
    """Every (block_v, num_warps) that passes the constraints compiles and computes the right thing, each
    with register prefetch only (num_stages=1) and with Triton's pipeliner (num_stages 2, 3, 4 in turn).
    K=64 puts more threads than key rows in some layouts: replicated atomics must not double-count."""
    dtype = torch.bfloat16
    problem = Problem(B=1, T=96, H=2, K=K, V=V, dtype=dtype, device="cuda", varlen=True, num_seqs=2)
    inputs = random_inputs(problem, seed=17, device="cuda")
    ref = run_op(inputs.to(torch.float64), "reference", grad_dtype=dtype)
    variant = registry.get("recurrent")
    pairs = [
        (block_v, num_warps)
        for block_v in variant.space["block_v"]
        for num_warps in variant.space["num_warps"]
        if variant.config_reason({"block_v": block_v, "num_warps": num_warps, "num_stages": 1}, problem) is None
    ]
    pipelined = [s for s in variant.space["num_stages"] if s > 1]
    configs = [
        {"block_v": block_v, "num_warps": num_warps, "num_stages": stages}
        for i, (block_v, num_warps) in enumerate(pairs)
        for stages in (1, pipelined[i % len(pipelined)])
    ]
    assert len(configs) >= 10
    failures = []
    for config in configs:
        out = run_op(inputs, "recurrent", config=config)
        for name in out:
            err = rel_error(out[name], ref[name])
            if not err <= tolerance(dtype, gradient=name in GRAD_NAMES):
                failures.append(f"{config} {name}: {err:.2e}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------ timing (GPU, by hand)
def _bench() -> None:
    """Median ms of forward and forward+backward at the anchor shapes (B*T = 16384, H*D = 2048), bf16."""
    import triton.testing

    variant = registry.get("recurrent")
    configs = [
        {"block_v": bv, "num_warps": w, "num_stages": s}
        for bv in (8, 16, 32) for w in (1, 2) for s in (1, 2, 3)
    ]
    for D in (64, 128, 256):
        for B, T in ((8, 2048), (1, 16384)):
            problem = Problem(B=B, T=T, H=2048 // D, K=D, V=D, dtype=torch.bfloat16, device="cuda")
            inputs = random_inputs(problem, seed=0, device="cuda", initial_state=False)
            for config in configs:
                if variant.config_reason(config, problem) is not None:
                    continue
                leaves = [x.requires_grad_() for x in inputs.tensors()]

                def fwd():
                    return delta_rule(*leaves, variant="recurrent", config=config)[0]

                o = fwd()
                do = torch.randn_like(o)
                fwd_ms = triton.testing.do_bench(fwd, warmup=25, rep=100)
                both_ms = triton.testing.do_bench(lambda: fwd().backward(do), warmup=25, rep=100)
                print(
                    f"D={D:3d} B={B} T={T:5d} {config}: fwd {fwd_ms:7.3f} ms ({1e3 * fwd_ms / T:.3f} us/step), "
                    f"fwd+bwd {both_ms:7.3f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    _bench()
