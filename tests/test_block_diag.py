"""Family "block_diag": the block-diagonal generalised Householder delta rule (variants/block_diag.py).

Every fast variant is checked through the public op against the float64 per-block reference: outputs,
final state and all gradients (dq, dk, dv, dbeta for shared and per-block beta, dh0), varlen, K = 512
as 4 blocks; the reference itself against per-block runs of the ordinary delta rule and by gradcheck;
block_size == K against ``delta_rule``; bad inputs; support, dispatch and cost. The Triton variants
("recurrent", "chunk") are tested when registered; on CPU they run under the interpreter (float32 and
float16 -- bf16 ``tl.dot`` is wrong under the interpreter, so bf16 is tested on the GPU only).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltalab.harness.numerics import Inputs, random_inputs, rel_error, tolerance
from deltalab.variants import block_diag_delta_rule, delta_rule, registry
from deltalab.variants.dispatch import resolve, rule_variant
from deltalab.variants.registry import Problem, delta_rule_cost

FAMILY = "block_diag"
FAST = ("torch_chunk", "recurrent", "chunk")


def _require(name: str) -> None:
    if name not in registry.names(FAMILY):
        pytest.skip(f"block_diag variant {name!r} not registered (its delta-rule variant is missing)")


def _problem(B=2, T=24, H=2, K=64, V=16, block=16, dtype=torch.float32, device="cpu", num_seqs=None):
    return Problem(
        B=B, T=T, H=H, K=K, V=V, dtype=dtype, block_size=block, device=device,
        num_seqs=num_seqs, varlen=num_seqs is not None,
    )


def _quick_config(name: str, problem: Problem, family: str = FAMILY):
    """For a variant with a ``block_v`` setting (Triton, tiled over V): the widest allowed tile, so that the
    interpreter runs few programs on CPU; None (the default config) otherwise."""
    impl = registry.get(name, family)
    if "block_v" not in impl.space or problem.device != "cpu":
        return None
    for block_v in sorted(impl.space["block_v"], reverse=True):
        config = impl.full_config({"block_v": block_v})
        if impl.config_reason(config, problem) is None:
            return {"block_v": block_v}
    return None


def _run(name: str, inputs: Inputs, problem: Problem, do: torch.Tensor, dht: torch.Tensor, op=block_diag_delta_rule):
    """Run the op with a final state and backpropagate (do, dht); returns o, ht and the input grads."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs.tensors()]
    q, k, v, beta, h0 = leaves
    if op is delta_rule:
        kwargs = {"config": _quick_config(name, problem, "delta_rule")}
    else:
        kwargs = {"block_size": problem.block_size, "config": _quick_config(name, problem)}
    o, ht = op(
        q, k, v, beta, initial_state=h0, output_final_state=True, cu_seqlens=inputs.cu_seqlens,
        variant=name, **kwargs,
    )
    grads = torch.autograd.grad((o, ht), leaves, (do.to(o.dtype), dht.to(ht.dtype)))
    return dict(zip(("o", "ht", "dq", "dk", "dv", "dbeta", "dh0"), (o, ht, *grads)))


def _cotangents(problem: Problem, seed: int):
    gen = torch.Generator().manual_seed(seed + 1000)
    do = torch.randn(problem.B, problem.T, problem.H, problem.V, generator=gen, dtype=torch.float64)
    dht = torch.randn(problem.num_seqs, problem.H, problem.K, problem.V, generator=gen, dtype=torch.float64)
    return do, dht


def _check_against_reference(name: str, problem: Problem, *, per_block_beta: bool, seed: int = 0) -> None:
    inputs = random_inputs(problem, seed=seed, per_block_beta=per_block_beta)
    assert inputs.beta.dim() == (4 if per_block_beta else 3)
    do, dht = _cotangents(problem, seed)
    got = _run(name, inputs, problem, do.to(problem.dtype), dht.float())
    ref = _run("reference", inputs.to(torch.float64), problem, do, dht)
    for key, want in ref.items():
        assert got[key].shape == want.shape, key
        err = rel_error(got[key], want)
        tol = tolerance(problem.dtype, gradient=key not in ("o", "ht"))
        assert err <= tol, f"{name} {problem.describe()} {key}: relative error {err:.2e} > {tol:.0e}"


# ------------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("varlen", [False, True])
def test_reference_is_independent_delta_rules_summed(varlen):
    """The block reference equals NB ordinary delta rules (one per key block, sharing v) summed."""
    block, nb = 8, 3
    problem = _problem(B=1 if varlen else 2, T=21, H=2, K=block * nb, V=5, block=block, dtype=torch.float64,
                       num_seqs=3 if varlen else None)
    x = random_inputs(problem, seed=3, per_block_beta=True)
    scale = 0.37
    o, ht = block_diag_delta_rule(x.q, x.k, x.v, x.beta, block_size=block, scale=scale, initial_state=x.initial_state,
                                  output_final_state=True, cu_seqlens=x.cu_seqlens, variant="reference")
    o_sum = torch.zeros_like(o)
    states = []
    for b in range(nb):
        cols = slice(b * block, (b + 1) * block)
        o_b, ht_b = delta_rule(x.q[..., cols], x.k[..., cols], x.v, x.beta[..., b], scale=scale,
                               initial_state=x.initial_state[:, :, cols].contiguous(), output_final_state=True,
                               cu_seqlens=x.cu_seqlens, variant="reference")
        o_sum += o_b
        states.append(ht_b)
    torch.testing.assert_close(o, o_sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ht, torch.cat(states, dim=2), rtol=1e-12, atol=1e-12)
    assert o.abs().max() > 0.1  # not trivially zero


@pytest.mark.parametrize("per_block_beta", [False, True])
def test_reference_gradcheck(per_block_beta):
    """The op's backward on the reference (custom op, beta broadcast, state reshapes) is the true gradient."""
    problem = _problem(B=2, T=4, H=1, K=4, V=3, block=2, dtype=torch.float64)
    x = random_inputs(problem, seed=5, per_block_beta=per_block_beta)
    leaves = [t.clone().requires_grad_() for t in x.tensors()]

    def fn(q, k, v, beta, h0):
        return block_diag_delta_rule(q, k, v, beta, block_size=2, initial_state=h0, output_final_state=True,
                                     variant="reference")

    assert torch.autograd.gradcheck(fn, leaves)


# ----------------------------------------------------------------------- fast variants vs reference
# (dtype, K, block, per-block beta, B, T, H, V, Triton too): the Triton variants run under the CPU
# interpreter (slow), so they get the short ones; K = 512 as 4 blocks of 128 on a short sequence.
CASES = [
    (torch.float32, 64, 32, True, 2, 16, 1, 32, True),
    (torch.float16, 64, 32, False, 1, 16, 2, 32, True),
    (torch.float32, 128, 64, False, 1, 12, 1, 16, True),
    (torch.float32, 512, 128, True, 1, 8, 1, 16, True),
    (torch.float16, 128, 64, True, 1, 12, 1, 16, False),
    (torch.float32, 64, 32, True, 2, 80, 2, 32, False),  # several chunks of torch_chunk's default 64
    (torch.float16, 64, 16, True, 2, 80, 2, 32, False),
]


def _case_id(case) -> str:
    dtype, K, block, per_block, B, T, H, V, _ = case
    beta = "beta_per_block" if per_block else "beta_shared"
    return f"{str(dtype).replace('torch.', '')}-K{K}-block{block}-{beta}-B{B}T{T}H{H}V{V}"


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(name, case):
    dtype, K, block, per_block, B, T, H, V, triton_too = case
    _require(name)
    if registry.get(name, FAMILY).is_triton and not triton_too:
        pytest.skip("long case: torch variants only (the Triton interpreter is slow)")
    problem = _problem(B=B, T=T, H=H, K=K, V=V, block=block, dtype=dtype)
    _check_against_reference(name, problem, per_block_beta=per_block, seed=K + block + T)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("per_block", [True, False])
def test_varlen_matches_reference(name, per_block):
    _require(name)
    if registry.get(name, FAMILY).is_triton and not per_block:
        pytest.skip("shared beta covered above; the Triton interpreter is slow")
    problem = _problem(B=1, T=21, H=1, K=64, V=16, block=16, num_seqs=3)
    _check_against_reference(name, problem, per_block_beta=per_block, seed=11)


@pytest.mark.parametrize("name", FAST)
def test_without_initial_or_final_state(name):
    """No initial state and no final state: None returned, o still matches."""
    _require(name)
    problem = _problem(B=1, T=12, K=64, V=16, block=32)
    x = random_inputs(problem, seed=2, initial_state=False, per_block_beta=True)
    o, ht = block_diag_delta_rule(x.q, x.k, x.v, x.beta, block_size=32, variant=name,
                                  config=_quick_config(name, problem))
    assert ht is None
    x64 = x.to(torch.float64)
    ref, _ = block_diag_delta_rule(x64.q, x64.k, x64.v, x64.beta, block_size=32, variant="reference")
    assert rel_error(o, ref) <= tolerance(torch.float32)


# ------------------------------------------------------------------------- block_size == K is delta_rule
@pytest.mark.parametrize("name", ("reference",) + FAST)
def test_block_size_equal_to_K_is_delta_rule(name):
    _require(name)
    if name not in registry.names("delta_rule"):
        pytest.skip(f"delta_rule variant {name!r} not registered")
    problem = _problem(B=1, T=12, H=2, K=32, V=16, block=32)
    x = random_inputs(problem, seed=7)
    assert x.beta.shape == (1, 12, 2)
    do, dht = _cotangents(problem, 7)
    got = _run(name, x, problem, do.float(), dht.float())
    want = _run(name, x, problem, do.float(), dht.float(), op=delta_rule)
    for key in want:
        assert got[key].shape == want[key].shape, key
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6, msg=key)


def test_qk_l2norm_normalises_each_block():
    """qk_l2norm=True equals passing per-block normalised q and k (not per-head normalised)."""
    problem = _problem(T=16, K=32, V=8, block=8)
    x = random_inputs(problem, seed=9, per_block_beta=True)
    q_raw, k_raw = x.q * 3.0, x.k * torch.rand_like(x.k) * 4
    o, _ = block_diag_delta_rule(q_raw, k_raw, x.v, x.beta, block_size=8, qk_l2norm=True, variant="torch_chunk")

    def per_block(t):
        return F.normalize(t.reshape(2, 16, 2, 4, 8), dim=-1).reshape(t.shape)

    want, _ = block_diag_delta_rule(per_block(q_raw), per_block(k_raw), x.v, x.beta, block_size=8, variant="torch_chunk")
    per_head, _ = block_diag_delta_rule(F.normalize(q_raw, dim=-1), F.normalize(k_raw, dim=-1), x.v, x.beta,
                                        block_size=8, variant="torch_chunk")
    torch.testing.assert_close(o, want, rtol=1e-5, atol=1e-5)
    assert rel_error(o, per_head) > 1e-2


# ---------------------------------------------------------------------------------- direct variant calls
@pytest.mark.parametrize("name", FAST)
def test_variant_accepts_shared_beta_directly(name):
    """Callers that reach a variant directly may pass a [B, T, H] beta; dbeta comes back in that shape."""
    _require(name)
    problem = _problem(B=1, T=8, H=1, K=64, V=16, block=32)
    x = random_inputs(problem, seed=4)
    impl = registry.get(name, FAMILY)
    config = impl.full_config(_quick_config(name, problem))
    args = dict(scale=0.25, initial_state=x.initial_state, cu_seqlens=None, config=config, block_size=32)
    o, ht = impl.forward(x.q, x.k, x.v, x.beta, output_final_state=True, **args)
    o_ref, ht_ref = impl.forward(x.q, x.k, x.v, x.beta[..., None].expand(1, 8, 1, 2), output_final_state=True, **args)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(ht, ht_ref)
    cotangents = dict(do=torch.randn_like(o), dfinal_state=torch.randn_like(ht))
    grads = impl.backward(x.q, x.k, x.v, x.beta, **cotangents, **args)
    assert [tuple(g.shape) for g in grads] == [tuple(t.shape) for t in x.tensors()]
    per_block = impl.backward(x.q, x.k, x.v, x.beta[..., None].expand(1, 8, 1, 2).contiguous(), **cotangents, **args)
    assert per_block[3].shape == (1, 8, 1, 2)
    for got, want in zip(grads, per_block[:3] + (per_block[3].sum(-1),) + per_block[4:]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_wrapper_hands_kernels_contiguous_per_block_problems():
    """The per-block wrapper around any delta-rule variant: what the kernel receives, constraints, cost.

    A stand-in "kernel" (delegating to delta_rule torch_chunk) asserts the shapes and contiguity a Triton
    kernel needs and carries a constraint on K, which must be judged on the block size, not the full K.
    """
    from deltalab.variants import block_diag as block_module

    base = registry.get("torch_chunk")
    seen = []

    def check(q, k, v, beta, initial_state, H_blocks, block):
        for t in (q, k, v, beta) + ((initial_state,) if initial_state is not None else ()):
            assert t.is_contiguous()
        assert q.shape[2:] == (H_blocks, block) and k.shape == q.shape
        assert v.shape[2] == H_blocks and beta.shape == q.shape[:3]
        seen.append(q.shape)

    def forward(q, k, v, beta, **kw):
        check(q, k, v, beta, kw["initial_state"], 1 * 4, 16)
        return base.forward(q, k, v, beta, **kw)

    def backward(q, k, v, beta, **kw):
        check(q, k, v, beta, kw["initial_state"], 1 * 4, 16)
        assert kw["do"].is_contiguous() and kw["do"].shape == v.shape
        return base.backward(q, k, v, beta, **kw)

    def constraints(config, problem):
        return None if problem.K <= 32 else f"K={problem.K} too large for the stand-in"

    registry.register("standin", backward=backward, devices=("cpu",), space={"chunk_size": (8, 16)},
                      default_config={"chunk_size": 8}, constraints=constraints)(forward)
    try:
        assert block_module.register_block_variant("standin")
        wrapped = registry.get("standin", FAMILY)
        assert wrapped.space == {"chunk_size": (8, 16)} and wrapped.default_config == {"chunk_size": 8}
        ok = _problem(K=1024, block=32, device="cpu")
        assert wrapped.config_reason({"chunk_size": 8}, ok) is None
        assert "K=64" in wrapped.config_reason({"chunk_size": 8}, _problem(K=1024, block=64))
        assert not block_module.register_block_variant("standin-missing")
        # H = 1: v repeated per block must still be a real copy (a broadcast view has stride 0)
        _check_against_reference("standin", _problem(T=19, H=1, K=64, V=8, block=16), per_block_beta=True, seed=21)
        _check_against_reference("standin", _problem(T=19, H=1, K=64, V=8, block=16), per_block_beta=False, seed=22)
        assert len(seen) >= 2  # forward and backward both went through the stand-in
    finally:
        registry.unregister("standin", FAMILY)
        registry.unregister("standin")


# --------------------------------------------------------------------------------------------- bad input
def _bad_call(**overrides):
    x = random_inputs(_problem(T=8, K=64, V=8, block=16), seed=1)
    kwargs = dict(q=x.q, k=x.k, v=x.v, beta=x.beta, block_size=16, initial_state=x.initial_state, variant="torch_chunk")
    kwargs.update(overrides)
    return block_diag_delta_rule(**kwargs)


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        ({"block_size": 24}, ValueError, "block_size: 24 does not divide the key dim K=64"),
        ({"block_size": 0}, ValueError, "block_size: expected a positive int"),
        ({"block_size": -16}, ValueError, "block_size: expected a positive int"),
        ({"block_size": 16.0}, ValueError, "block_size: expected a positive int"),
        ({"block_size": True}, ValueError, "block_size: expected a positive int"),
        ({"block_size": None}, ValueError, "block_size: expected a positive int"),
        ({"beta": torch.rand(2, 8, 2, 3)}, ValueError, r"beta: expected shape .*\[2, 8, 2, 4\], got \(2, 8, 2, 3\)"),
        ({"beta": torch.rand(2, 8, 2, 4, 1)}, ValueError, "beta: expected shape"),
        ({"beta": torch.rand(2, 8, 3)}, ValueError, "beta: expected shape"),
        ({"initial_state": torch.zeros(2, 2, 16, 8)}, ValueError, r"initial_state: expected shape \[N, H, K, V\]"),
        ({"variant": "nope"}, ValueError, "variant: unknown variant 'nope' for block_diag"),
        ({"config": {"block_q": 4}}, ValueError, "config: unknown key 'block_q'"),
        ({"config": [("chunk_size", 16)]}, TypeError, "config: expected a dict"),
    ],
    ids=lambda x: repr(x)[:40] if not isinstance(x, type) else x.__name__,
)
def test_bad_inputs_raise_clear_errors(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _bad_call(**overrides)


def test_variant_rejects_bad_block_size_directly():
    x = random_inputs(_problem(T=4, K=64, V=8, block=16), seed=1, per_block_beta=True)
    impl = registry.get("reference", FAMILY)
    with pytest.raises(ValueError, match="block_size: 48 does not divide the key dim K=64"):
        impl.forward(x.q, x.k, x.v, x.beta, scale=1.0, initial_state=None, output_final_state=False,
                     cu_seqlens=None, config={}, block_size=48)


# ------------------------------------------------------------------------------ support, dispatch, cost
def test_large_key_dims_supported_through_blocks():
    for name in registry.names(FAMILY):
        impl = registry.get(name, FAMILY)
        device = impl.devices[0]
        for K in (512, 1024):
            blocks = _problem(K=K, block=128, device=device, dtype=torch.float32)
            assert impl.unsupported_reason(blocks) is None, (name, K)
        too_big = _problem(K=1024, block=1024, device=device, dtype=torch.float32)
        if impl.max_head_dim < 1024:
            assert "block_size=1024 outside the supported range" in impl.unsupported_reason(too_big)
        if name in registry.names("delta_rule"):
            base = registry.get(name)
            assert (impl.space, impl.default_config, impl.max_head_dim) == (base.space, base.default_config, base.max_head_dim)


def test_auto_dispatch_resolves_block_family():
    cpu = _problem(K=1024, block=128, device="cpu", dtype=torch.float32)
    variant, config = resolve(FAMILY, "auto", None, cpu)
    assert variant.family == FAMILY and variant.name == "torch_chunk"
    assert config == variant.default_config
    # the rule alone for a CUDA problem (resolve would look for tuning results of this machine's GPU)
    gpu = _problem(B=4, T=4096, K=1024, block=128, device="cuda", dtype=torch.bfloat16)
    expected = "chunk" if "chunk" in registry.names(FAMILY) else "torch_chunk"
    assert rule_variant(gpu, FAMILY) == expected
    decoding = _problem(B=8, T=16, K=1024, block=128, device="cuda", dtype=torch.bfloat16)
    if "recurrent" in registry.names(FAMILY):
        assert rule_variant(decoding, FAMILY) == "recurrent"
    x = random_inputs(_problem(T=10, K=64, V=8, block=16), seed=8, per_block_beta=True)
    o_auto, _ = block_diag_delta_rule(x.q, x.k, x.v, x.beta, block_size=16)
    o_ref, _ = block_diag_delta_rule(x.q, x.k, x.v, x.beta, block_size=16, variant="reference")
    assert rel_error(o_auto, o_ref) <= tolerance(torch.float32)


def test_cost_counts_all_blocks():
    for name in registry.names(FAMILY):
        impl = registry.get(name, FAMILY)
        config = impl.default_config
        four_blocks = impl.cost(_problem(K=512, block=128), config).flops
        one_block = impl.cost(_problem(K=128, block=128), config).flops
        assert four_blocks == pytest.approx(4 * one_block), name
    p = _problem(K=512, block=128)
    assert delta_rule_cost(p, 64).flops > delta_rule_cost(_problem(K=128, block=128), 64).flops


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ("chunk", "recurrent"))
@pytest.mark.parametrize("K", (512, 1024))
@pytest.mark.parametrize("per_block", (True, False))
def test_gpu_bf16_large_key_dims(name, K, per_block):
    _require(name)
    problem = _problem(B=2, T=256, H=2, K=K, V=64, block=128, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=K, per_block_beta=per_block)
    do, dht = _cotangents(problem, K)
    do, dht = do.cuda(), dht.cuda()
    got = _run(name, inputs, problem, do.to(torch.bfloat16), dht.float())
    ref = _run("reference", inputs.to(torch.float64), problem, do, dht)
    for key, want in ref.items():
        err = rel_error(got[key], want)
        tol = tolerance(torch.bfloat16, gradient=key not in ("o", "ht"))
        assert err <= tol, f"{name} {problem.describe()} {key}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_gpu_float_dtypes_varlen(dtype):
    for name in ("chunk", "recurrent"):
        if name in registry.names(FAMILY):
            problem = _problem(B=1, T=300, H=2, K=512, V=64, block=128, dtype=dtype, device="cuda", num_seqs=4)
            _check_gpu(name, problem)


def _check_gpu(name, problem):
    inputs = random_inputs(problem, seed=1, per_block_beta=True)
    do, dht = (t.cuda() for t in _cotangents(problem, 1))
    got = _run(name, inputs, problem, do.to(problem.dtype), dht.float())
    ref = _run("reference", inputs.to(torch.float64), problem, do, dht)
    for key, want in ref.items():
        err = rel_error(got[key], want)
        tol = tolerance(problem.dtype, gradient=key not in ("o", "ht"))
        assert err <= tol, f"{name} {problem.describe()} {key}: relative error {err:.2e} > {tol:.0e}"


