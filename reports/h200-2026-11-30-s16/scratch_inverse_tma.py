"""Scratch (session 16): the Gluon inverse's keys through a descriptor (TMA, the next tile's prefetched) and
its programs per SM -- numerics first (the same Tm as through pointers, the op against float64), then the
inverse's kernel time inside the op (torch profiler, config tma="on")."""
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "tests")
import deltalab.variants.chunk as chunk_module  # noqa: E402
from deltalab.harness.numerics import random_inputs, rel_error, tolerance  # noqa: E402
from deltalab.harness.profile import profile_variant  # noqa: E402
from deltalab.variants.chunk_config import DEFAULT_CONFIG, resolve_plan  # noqa: E402
from deltalab.variants.registry import Problem  # noqa: E402
from test_chunk import _chunk_inverses, run_op  # noqa: E402

DESCRIPTOR = chunk_module._inverse_key_descriptor
for D in (64, 128):
    problem = Problem(B=2, T=1024, H=4, K=D, V=D, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(D)
    k = torch.nn.functional.normalize(torch.randn(2, 1024, 4, D, device="cuda", generator=g), dim=-1).to(torch.bfloat16)
    beta = torch.rand(2, 1024, 4, device="cuda", generator=g).to(torch.bfloat16)
    plan = resolve_plan(dict(DEFAULT_CONFIG, tma="on"), problem)
    with_tma, without = _chunk_inverses(plan, k, beta), _chunk_inverses(replace(plan, tma="off"), k, beta)
    print(f"CHECK D={D} descriptor used: {DESCRIPTOR(plan, k, False, plan.inverse_kernel.block_k) is not None}, "
          f"Tm equal: {torch.equal(with_tma, without)}, finite: {bool(torch.isfinite(with_tma).all())}", flush=True)
    for B, T, extra in ((2, 2048, {}), (1, 4096, {"scan_segments": 4, "forward_scan": "tm"})):
        inputs = random_inputs(Problem(B=B, T=T, H=4, K=D, V=D, dtype=torch.bfloat16, device="cuda"), seed=53,
                               device="cuda", initial_state=True)
        ref = run_op("reference", inputs.to(torch.float64), backward=False)
        out = run_op("chunk", inputs, dict(extra, tma="on"), backward=False)
        e_o, e_s = rel_error(out["o"], ref["o"]), rel_error(out["final_state"], ref["final_state"])
        ok = e_o <= tolerance(torch.bfloat16) and e_s <= tolerance(torch.bfloat16)
        print(f"CHECK D={D} B={B} T={T} {extra} op with tma: o {e_o:.3e} state {e_s:.3e} {'ok' if ok else 'FAIL'}", flush=True)

rows = []
for D in (128, 64):
    problem = Problem(B=1, T=16384, H=2048 // D, K=D, V=D, dtype=torch.bfloat16)
    for per_sm in (12, 8, 4):
        for keys in ("pointers", "descriptor"):
            chunk_module.GLUON_INVERSE_PROGRAMS_PER_SM = per_sm
            chunk_module._inverse_key_descriptor = DESCRIPTOR if keys == "descriptor" else (lambda *args: None)
            prof = profile_variant("chunk", problem, "fwd", calls=20, config={"tma": "on"})
            times = {r.name: r.us_per_call for r in prof if not r.name.startswith("deltalab::")}
            rows.append((D, per_sm, keys, times.get("chunk_inverse_gluon_kernel"), sum(times.values())))
            print(*rows[-1], flush=True)
chunk_module._inverse_key_descriptor = DESCRIPTOR
print("\nSUMMARY: the Gluon inverse, us per call (bf16, 1 x 16K, tma on); all kernels")
for D, per_sm, keys, t, total in rows:
    print(f"D={D:3d} programs/SM {per_sm:2d} keys {keys:10s} inverse {t:6.1f}  all {total:6.1f}")
