"""The public op and the two plain-PyTorch variants: "reference" (float64 recurrence) and "torch_chunk".

torch_chunk is an independent implementation (WY / UT transform), so agreement in float64 on random
shapes checks both; gradcheck checks the reference's backward; the bad-input cases check the promised
errors.
"""

import pytest
import torch
import torch.nn.functional as F

from deltalab.harness.numerics import random_inputs, rel_error
from deltalab.variants import Problem, delta_rule, registry

F64 = torch.float64


def _inputs(B, T, H, K, V, *, seed, num_seqs=None, initial_state=True, dtype=F64):
    problem = Problem(B=B, T=T, H=H, K=K, V=V, dtype=dtype, device="cpu", num_seqs=num_seqs, varlen=num_seqs is not None)
    return random_inputs(problem, seed=seed, initial_state=initial_state)


def _run(x, variant, config=None, **kw):
    return delta_rule(
        x.q, x.k, x.v, x.beta, initial_state=x.initial_state, cu_seqlens=x.cu_seqlens,
        output_final_state=True, variant=variant, config=config, **kw,
    )


@pytest.mark.parametrize(
    "B,T,H,K,V,chunk_size",
    [
        (2, 37, 3, 16, 24, 16),  # T not a multiple of the chunk, K != V
        (1, 1, 2, 8, 8, 64),  # T = 1
        (2, 50, 2, 48, 100, 32),  # non-powers of two
        (3, 64, 4, 32, 32, 64),  # exactly one chunk
        (1, 130, 1, 20, 12, 128),
        (2, 19, 2, 16, 16, 8),
    ],
)
def test_torch_chunk_matches_reference_float64(B, T, H, K, V, chunk_size):
    x = _inputs(B, T, H, K, V, seed=B * 1000 + T)
    o_ref, h_ref = _run(x, "reference")
    o, h = _run(x, "torch_chunk", {"chunk_size": chunk_size})
    assert o.dtype == F64 and h.dtype == F64
    assert rel_error(o, o_ref) < 1e-12
    assert rel_error(h, h_ref) < 1e-12


def test_without_initial_state_and_without_final_state():
    x = _inputs(2, 21, 2, 16, 8, seed=3, initial_state=False)
    o_ref, h_ref = _run(x, "reference")
    o, h = delta_rule(x.q, x.k, x.v, x.beta, variant="torch_chunk", config={"chunk_size": 4})
    assert h is None
    assert rel_error(o, o_ref) < 1e-12
    # a zero initial state is the same as none
    zeros = torch.zeros(2, 2, 16, 8, dtype=F64)
    o0, h0 = delta_rule(x.q, x.k, x.v, x.beta, initial_state=zeros, output_final_state=True, variant="torch_chunk")
    assert rel_error(o0, o_ref) < 1e-12 and rel_error(h0, h_ref) < 1e-12


@pytest.mark.parametrize("used", ["o", "final_state"])
def test_gradients_when_one_output_is_unused(used):
    """A loss on o alone or on the final state alone still matches the reference's gradients (the op's
    autograd formula gets None for the unused output: it does not materialise zero gradients)."""
    x = _inputs(1, 40, 2, 16, 16, seed=9, dtype=torch.float32)
    grads = {}
    for variant, dtype in (("chunk", torch.float32), ("reference", F64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in x.tensors()]
        o, h = delta_rule(*leaves[:4], initial_state=leaves[4], output_final_state=True, variant=variant,
                          config={"chunk_size": 16} if variant == "chunk" else None)
        (o if used == "o" else h).square().sum().backward()
        grads[variant] = [t.grad for t in leaves]
    for got, want in zip(grads["chunk"], grads["reference"]):
        assert torch.isfinite(got).all() and rel_error(got, want) < 1e-4


def test_chunk_size_one_is_the_recurrence():
    x = _inputs(1, 23, 2, 12, 10, seed=5)
    o_ref, h_ref = _run(x, "reference")
    o, h = _run(x, "torch_chunk", {"chunk_size": 1})
    assert rel_error(o, o_ref) < 1e-13 and rel_error(h, h_ref) < 1e-13


def test_reference_matches_the_matrix_form_of_the_transition():
    """h_t = (I - beta k k^T) h_{t-1} + beta k v^T, written independently of the reference's u_t form."""
    x = _inputs(1, 9, 1, 6, 5, seed=11)
    o_ref, h_ref = _run(x, "reference")
    h = x.initial_state[0, 0].clone()
    eye = torch.eye(6, dtype=F64)
    outs = []
    for t in range(9):
        k_t, v_t, b_t = x.k[0, t, 0], x.v[0, t, 0], x.beta[0, t, 0]
        h = (eye - b_t * torch.outer(k_t, k_t)) @ h + b_t * torch.outer(k_t, v_t)
        outs.append(h.T @ (x.q[0, t, 0] * 6**-0.5))
    assert rel_error(torch.stack(outs), o_ref[0, :, 0]) < 1e-13
    assert rel_error(h, h_ref[0, 0]) < 1e-13


@pytest.mark.parametrize("variant", ["reference", "torch_chunk"])
def test_varlen_equals_each_sequence_alone(variant):
    x = _inputs(1, 61, 2, 16, 12, seed=7, num_seqs=4)
    o, h = _run(x, variant, {"chunk_size": 16} if variant == "torch_chunk" else None)
    offsets = x.cu_seqlens.tolist()
    for n, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
        o_n, h_n = delta_rule(
            x.q[:, start:end], x.k[:, start:end], x.v[:, start:end], x.beta[:, start:end],
            initial_state=x.initial_state[n : n + 1], output_final_state=True, variant="reference",
        )
        assert rel_error(o[:, start:end], o_n) < 1e-12
        assert rel_error(h[n : n + 1], h_n) < 1e-12


def test_varlen_with_empty_sequence_keeps_its_initial_state():
    x = _inputs(1, 10, 1, 8, 8, seed=2, num_seqs=2)
    cu = torch.tensor([0, 4, 4, 10])
    h0 = torch.randn(3, 1, 8, 8, dtype=F64)
    for variant in ("reference", "torch_chunk"):
        o, h = delta_rule(x.q, x.k, x.v, x.beta, initial_state=h0, cu_seqlens=cu, output_final_state=True, variant=variant)
        assert torch.equal(h[1], h0[1])
        assert torch.isfinite(o).all()


def test_scale_and_qk_l2norm():
    x = _inputs(1, 17, 2, 16, 8, seed=9)
    q_raw = x.q * 3.0
    k_raw = x.k * torch.rand(1, 17, 2, 1, dtype=F64).add(0.5)  # un-normalised keys
    o, _ = delta_rule(q_raw, k_raw, x.v, x.beta, qk_l2norm=True, scale=0.7, variant="torch_chunk")
    o_ref, _ = delta_rule(F.normalize(q_raw, dim=-1), F.normalize(k_raw, dim=-1), x.v, x.beta, scale=0.7, variant="reference")
    assert rel_error(o, o_ref) < 1e-12
    # default scale is K ** -0.5
    o_default, _ = delta_rule(x.q, x.k, x.v, x.beta, variant="reference")
    o_explicit, _ = delta_rule(x.q, x.k, x.v, x.beta, scale=16**-0.5, variant="reference")
    assert torch.equal(o_default, o_explicit)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtypes_follow_v_and_state_is_float32(dtype):
    x = _inputs(1, 12, 2, 16, 16, seed=4, dtype=dtype)
    for variant in ("reference", "torch_chunk"):
        o, h = _run(x, variant)
        assert o.dtype == dtype and h.dtype == torch.float32
        assert o.shape == (1, 12, 2, 16) and h.shape == (1, 2, 16, 16)


def test_auto_on_cpu_uses_torch_chunk_by_rule():
    from deltalab.variants.dispatch import rule_variant

    problem = Problem(B=1, T=128, H=1, K=16, V=16, dtype=torch.float32, device="cpu")
    assert rule_variant(problem, "delta_rule") == "torch_chunk"
    x = _inputs(1, 40, 2, 16, 16, seed=1, dtype=torch.float32)
    o_auto, _ = _run(x, "auto")
    o_tc, _ = _run(x, "torch_chunk")
    assert torch.equal(o_auto, o_tc)


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("variant,config", [("reference", None), ("torch_chunk", {"chunk_size": 4})])
def test_gradcheck(variant, config):
    x = _inputs(1, 7, 2, 4, 3, seed=13)
    q, k, v, beta, h0 = (t.clone().requires_grad_() for t in (x.q, x.k, x.v, x.beta, x.initial_state))

    def fn(q, k, v, beta, h0):
        o, h = delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, variant=variant, config=config)
        return o, h

    assert torch.autograd.gradcheck(fn, (q, k, v, beta, h0), eps=1e-6, atol=1e-7)


def test_gradcheck_varlen_qk_l2norm():
    x = _inputs(1, 9, 1, 4, 3, seed=17, num_seqs=3)
    q, k, v, beta = (t.clone().requires_grad_() for t in (x.q, x.k, x.v, x.beta))

    def fn(q, k, v, beta):
        return delta_rule(q, k, v, beta, cu_seqlens=x.cu_seqlens, qk_l2norm=True, variant="torch_chunk", config={"chunk_size": 2})[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, beta), eps=1e-6, atol=1e-7)


def test_torch_chunk_gradients_match_reference():
    x = _inputs(2, 45, 2, 16, 12, seed=21)
    gen = torch.Generator().manual_seed(1)
    g_o = torch.randn(x.v.shape, generator=gen, dtype=F64)
    g_h = torch.randn(x.initial_state.shape, generator=gen, dtype=F64)
    grads = {}
    for variant in ("reference", "torch_chunk"):
        leaves = [t.clone().requires_grad_() for t in x.tensors()]
        o, h = delta_rule(*leaves[:4], initial_state=leaves[4], output_final_state=True, variant=variant)
        torch.autograd.backward((o, h), (g_o, g_h))
        grads[variant] = [t.grad for t in leaves]
    for g, g_ref in zip(grads["torch_chunk"], grads["reference"]):
        assert rel_error(g, g_ref) < 1e-11


# ---------------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("variant, chunk_size", [("torch_chunk", 8), ("chunk", 16)])
def test_torch_compile_fullgraph_forward_and_backward(variant, chunk_size):
    """No graph break, forward and backward; "chunk" also returns its kept intermediates from the forward
    op (a data-dependent size under tracing) for the backward op."""
    torch._dynamo.reset()

    class TinyDeltaNet(torch.nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads = heads
            self.proj = torch.nn.Linear(dim, 3 * dim + heads)
            self.out = torch.nn.Linear(dim, dim)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v, b = self.proj(x).split([D, D, D, self.heads], dim=-1)
            q, k, v = (t.reshape(B, T, self.heads, D // self.heads) for t in (q, k, v))
            o, _ = delta_rule(q, k, v, b.sigmoid(), qk_l2norm=True, variant=variant, config={"chunk_size": chunk_size})
            return self.out(o.reshape(B, T, D))

    torch.manual_seed(0)
    model = TinyDeltaNet(dim=32)  # head dim 16: the Triton variants' smallest
    x = torch.randn(2, 20, 32)
    eager = model(x)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    assert rel_error(out, eager) < 1e-6
    for p, g in zip(model.parameters(), eager_grads):
        assert rel_error(p.grad, g) < 1e-5


@pytest.mark.parametrize("variant, dtype", [("torch_chunk", F64), ("chunk", torch.float32)])
def test_eager_path_matches_the_custom_ops(variant, dtype):
    """Eager calls skip the dispatcher (``_EagerDeltaRule``); the registered custom ops and their autograd
    formula give the same outputs and gradients, bit for bit."""
    from deltalab.variants import op

    x = _inputs(2, 24, 2, 16, 16, seed=31, dtype=dtype)
    results = []
    for forward in (op._EagerDeltaRule.apply, torch.ops.deltalab.delta_rule_fwd):
        leaves = [t.detach().clone().requires_grad_() for t in x.tensors()]
        o, h, residual = forward(*leaves[:5], None, 0.25, True, "delta_rule", variant, "chunk_size:i=16", 16, True)
        assert (residual.numel() > 0) == (variant == "chunk")
        torch.autograd.backward([o, h], [torch.ones_like(o), torch.ones_like(h)])
        results.append([o, h] + [t.grad for t in leaves])
    for eager, custom in zip(*results):
        assert torch.equal(eager, custom)


def test_custom_op_passes_opcheck():
    x = _inputs(1, 6, 1, 4, 4, seed=23, dtype=torch.float32)
    args = (x.q, x.k, x.v, x.beta, x.initial_state, None, 0.5, True, "delta_rule", "torch_chunk", "", 4, True)
    torch.library.opcheck(torch.ops.deltalab.delta_rule_fwd.default, args)


# ---------------------------------------------------------------------------------------- bad input
def _good():
    x = _inputs(2, 8, 2, 4, 6, seed=1, dtype=torch.float32)
    return dict(q=x.q, k=x.k, v=x.v, beta=x.beta)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: a.update(q=a["q"][0]), ValueError, "q: expected a 4-D"),
        (lambda a: a.update(k=a["k"][:, :, :, :3]), ValueError, "k: expected the shape of q"),
        (lambda a: a.update(v=a["v"][:, :5]), ValueError, "v: expected shape"),
        (lambda a: a.update(beta=a["beta"][..., None]), ValueError, "beta: expected shape"),
        (lambda a: a.update(beta=a["beta"][:, :4]), ValueError, "beta: expected shape"),
        (lambda a: a.update(v=a["v"].double()), TypeError, "v: dtype"),
        (lambda a: a.update(beta=a["beta"].half()), TypeError, "beta: dtype"),
        (lambda a: a.update(q=a["q"].int(), k=a["k"].int(), v=a["v"].int(), beta=a["beta"].int()), TypeError, "q: expected a floating"),
        (lambda a: a.update(q=[1, 2]), TypeError, "q: expected a torch.Tensor"),
        (lambda a: a.update(device_kw=1), None, None),
    ],
)
def test_bad_tensors(change, error, match):
    args = _good()
    change(args)
    if args.pop("device_kw", None):
        args["k"] = args["k"].to("meta")
        with pytest.raises(ValueError, match="k: on device meta"):
            delta_rule(**args)
        return
    with pytest.raises(error, match=match):
        delta_rule(**args)


@pytest.mark.parametrize(
    "cu,B,error,match",
    [
        (torch.tensor([[0, 8]]), 1, TypeError, "cu_seqlens: expected a 1-D"),
        (torch.tensor([0.0, 8.0]), 1, TypeError, "cu_seqlens: expected a 1-D int32/int64"),
        (torch.tensor([1, 8]), 1, ValueError, "cu_seqlens: must start at 0"),
        (torch.tensor([0, 6, 3, 8]), 1, ValueError, "must not decrease"),
        (torch.tensor([0, 4, 7]), 1, ValueError, "cu_seqlens: must end at T=8"),
        (torch.tensor([0, 8]), 2, ValueError, "cu_seqlens: packed sequences need B == 1"),
        (torch.tensor([0]), 1, ValueError, "at least two offsets"),
    ],
)
def test_bad_cu_seqlens(cu, B, error, match):
    x = _inputs(B, 8, 2, 4, 6, seed=1, dtype=torch.float32, initial_state=False)
    with pytest.raises(error, match=match):
        delta_rule(x.q, x.k, x.v, x.beta, cu_seqlens=cu, variant="reference")


def test_bad_initial_state():
    a = _good()
    with pytest.raises(ValueError, match=r"initial_state: expected shape \[N, H, K, V\] = \[2, 2, 4, 6\]"):
        delta_rule(**a, initial_state=torch.randn(2, 2, 6, 4))
    with pytest.raises(TypeError, match="initial_state: expected float32"):
        delta_rule(**a, initial_state=torch.randn(2, 2, 4, 6, dtype=torch.float16))
    x = _inputs(1, 8, 2, 4, 6, seed=1, dtype=torch.float32, initial_state=False)
    with pytest.raises(ValueError, match=r"N = number of sequences"):
        delta_rule(x.q, x.k, x.v, x.beta, cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.randn(1, 2, 4, 6))


def test_unknown_variant_and_config_key():
    a = _good()
    with pytest.raises(ValueError, match=r"variant: unknown variant 'nope'.*known: auto, (?=.*reference)(?=.*torch_chunk)"):
        delta_rule(**a, variant="nope")
    with pytest.raises(ValueError, match="config: unknown key 'block_q' for variant 'torch_chunk'"):
        delta_rule(**a, variant="torch_chunk", config={"block_q": 4})
    with pytest.raises(ValueError, match=r"config: chunk_size=3 is not allowed"):
        delta_rule(**a, variant="torch_chunk", config={"chunk_size": 3})
    with pytest.raises(TypeError, match="config: expected a dict"):
        delta_rule(**a, variant="torch_chunk", config=[("chunk_size", 4)])
    with pytest.raises(TypeError, match="scale: expected a float"):
        delta_rule(**a, scale="0.5")


def test_unsupported_shape_names_the_variants_that_can():
    name = "_test_small_only"
    registry.register(name, devices=("cpu",), max_head_dim=2)(registry.get("reference").forward)
    try:
        a = _good()
        with pytest.raises(ValueError, match=r"'_test_small_only' cannot run .*K=4 outside.*variants that can: (?=.*reference)(?=.*torch_chunk)"):
            delta_rule(**a, variant=name)
        with pytest.raises(ValueError, match=r"dtype float16 not supported"):
            registry.register("_test_f32", devices=("cpu",), dtypes=(torch.float32,))(registry.get("reference").forward)
            delta_rule(**{n: t.half() for n, t in a.items()}, variant="_test_f32")
    finally:
        registry.unregister(name)
        registry.unregister("_test_f32")


def test_auto_rule_for_cuda_problems():
    """The documented rule: chunk for long sequences (every head dim), recurrent for decoding. Runs
    without a GPU: no tuned results are consulted."""
    from deltalab.variants.dispatch import resolve

    def pick(T, K, B=1):
        return resolve("delta_rule", "auto", None, Problem(B=B, T=T, H=4, K=K, V=K, dtype=torch.bfloat16, device="cuda"))[0].name

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine exported tuning results may take precedence over the rule")
    assert pick(4096, 64) == "chunk"
    assert pick(4096, 128) == "chunk"
    assert pick(4096, 256) == "chunk"
    assert pick(1, 128, B=8) == "recurrent"
