"""Scratch (session 15): state_order kv vs vk -- numerics against float64, then kernel times."""
import json, sys
import torch
sys.path.insert(0, "tests")
from deltalab.harness.numerics import random_inputs, rel_error, tolerance
from deltalab.harness.profile import profile_variant
from deltalab.variants.registry import Problem
from test_chunk import run_op

checks = [(128, 1, 4096, {"scan_segments": 4}), (64, 1, 4096, {"scan_segments": 4}),
          (128, 2, 4096, {"scan_segments": 1, "forward_scan": "tm"}), (128, 1, 4096, {"scan_segments": 4, "block_summary": 64})]
import os
for D, B, T, cfg in (checks if not os.environ.get('SKIP_CHECKS') else []):
    problem = Problem(B=B, T=T, H=2048 // D // 4, K=D, V=D, dtype=torch.bfloat16, device="cuda")
    inputs = random_inputs(problem, seed=37, device="cuda", initial_state=True)
    ref = run_op("reference", inputs.to(torch.float64), backward=False)
    for order, tma in json.loads(os.environ.get("CHECKS", '[["kv", "off"], ["kv", "on"], ["vk", "off"], ["vk", "on"]]')):
        if True:
            extra = {"scan_gluon": "on", "stages_tm": int(order[-1])} if order.startswith("gluon") else {"state_order": order}
            try:
                out = run_op("chunk", inputs, dict(cfg, tma=tma, forward_scan="tm", **extra), backward=False)
            except Exception as error:
                print("CHECK FAILED to run", D, B, cfg, order, repr(error)[:2000], flush=True)
                continue
            e_o, e_s = rel_error(out["o"], ref["o"]), rel_error(out["final_state"], ref["final_state"])
            ok = e_o <= tolerance(torch.bfloat16) and e_s <= tolerance(torch.bfloat16)
            print(f"CHECK D={D} B={B} {cfg} {order} tma={tma}: o {e_o:.2e} state {e_s:.2e} {'ok' if ok else 'FAIL'}", flush=True)

configs = json.loads(sys.argv[1])
shapes = [tuple(int(x) for x in s.split('x')) for s in os.environ.get('SHAPES', '128x1x16384,64x1x16384').split(',')]
rows = []
for D, B, T in shapes:
    problem = Problem(B=B, T=T, H=2048 // D, K=D, V=D, dtype=torch.bfloat16)
    for label, cfg in configs:
        try:
            prof = profile_variant("chunk", problem, "fwd", calls=10, config=cfg)
        except Exception as error:
            print("FAILED", D, B, T, label, repr(error)[:300], flush=True)
            continue
        times = {r.name: r.us_per_call for r in prof if not r.name.startswith("deltalab::")}
        rows.append((D, B, T, label, times))
        print(D, B, T, label, {k[:40]: round(v, 1) for k, v in times.items()}, round(sum(times.values()), 1), flush=True)
print("\nSUMMARY")
for D, B, T, label, times in rows:
    short = {("scan" if "scan" in k else "summ" if "summary" in k else "comb" if "combine" in k else "inv" if "inverse" in k else k[:12]): round(v) for k, v in times.items()}
    print(f"D={D:3d} {B}x{T:5d} {label:24s} total {sum(times.values()):6.1f}  {short}")
