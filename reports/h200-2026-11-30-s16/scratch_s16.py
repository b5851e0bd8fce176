"""Scratch (session 16): the segment summaries in Gluon (64 or 128 columns a program) and a one-pass tf32
inverse -- numerics against float64 first, then kernel times (torch profiler)."""
import importlib.util
import json
import os
import pathlib
import sys

import torch

sys.path.insert(0, "tests")
import deltalab.variants.chunk as chunk_module  # noqa: E402
import deltalab.variants.chunk_inverse_gluon as inverse_module  # noqa: E402
from deltalab.harness.numerics import random_inputs, rel_error, tolerance  # noqa: E402
from deltalab.harness.profile import profile_variant  # noqa: E402
from deltalab.variants.registry import Problem  # noqa: E402
from test_chunk import run_op  # noqa: E402

THREE_PASS = inverse_module.chunk_inverse_gluon_kernel


def one_pass_inverse():
    """The Gluon inverse with its block merges in one tf32 pass (a copy of the module, edited)."""
    source = pathlib.Path(inverse_module.__file__).read_text()
    source = source.replace("from .chunk_intra import", "from deltalab.variants.chunk_intra import")
    old = source[source.index("    a_hi, a_lo = _split_tf32(a_view"):source.index("@gluon.jit\ndef _merge_level")]
    source = source.replace(old, "    return mma_v2(a_view.load(gl.DotOperandLayout(0, mma, 1)), "
                                 "b_view.load(gl.DotOperandLayout(1, mma, 1)), acc, input_precision=\"tf32\")\n\n\n")
    path = "/tmp/inverse_one_pass.py"
    pathlib.Path(path).write_text(source)
    spec = importlib.util.spec_from_file_location("inverse_one_pass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.chunk_inverse_gluon_kernel


ONE_PASS = one_pass_inverse()
# label -> (config, Gluon summary columns, inverse kernel)
SETUPS = {
    "triton": ({"tma": "on", "scan_gluon": "off"}, 128, THREE_PASS),
    "g64": ({"tma": "on"}, 64, THREE_PASS),
    "g128": ({"tma": "on"}, 128, THREE_PASS),
    "g128-inv1": ({"tma": "on"}, 128, ONE_PASS),
}


def use(label):
    config, block, inverse = SETUPS[label]
    chunk_module.GLUON_SUMMARY_BLOCK = block
    inverse_module.chunk_inverse_gluon_kernel = inverse
    return config


checks = [(128, 1, 4096, torch.bfloat16), (128, 2, 4096, torch.bfloat16), (128, 1, 4096, torch.float16),
          (64, 1, 4096, torch.bfloat16)]
for D, B, T, dtype in checks if not os.environ.get("SKIP_CHECKS") else []:
    problem = Problem(B=B, T=T, H=2048 // D // 4, K=D, V=D, dtype=dtype, device="cuda")
    for h0 in (True, False):
        inputs = random_inputs(problem, seed=41, device="cuda", initial_state=h0)
        ref = run_op("reference", inputs.to(torch.float64), backward=False)
        for label in ("triton", "g64", "g128", "g128-inv1"):
            config = dict(use(label), scan_segments=4, forward_scan="tm")
            if label != "triton":
                config["scan_gluon"] = "on"
            try:
                out = run_op("chunk", inputs, config, backward=False)
            except Exception as error:
                print("CHECK FAILED to run", D, B, T, dtype, label, repr(error)[:3000], flush=True)
                continue
            e_o, e_s = rel_error(out["o"], ref["o"]), rel_error(out["final_state"], ref["final_state"])
            ok = e_o <= tolerance(dtype) and e_s <= tolerance(dtype)
            print(f"CHECK D={D} B={B} T={T} {dtype} h0={h0} {label}: o {e_o:.3e} state {e_s:.3e} "
                  f"{'ok' if ok else 'FAIL'}", flush=True)

labels = json.loads(sys.argv[1]) if len(sys.argv) > 1 else list(SETUPS)
shapes = [tuple(int(x) for x in s.split("x")) for s in os.environ.get("SHAPES", "128x1x16384,128x2x8192").split(",")]
rows = []
for D, B, T in shapes:
    problem = Problem(B=B, T=T, H=2048 // D, K=D, V=D, dtype=torch.bfloat16)
    for label in labels:
        config = use(label)
        if D == 64 and label != "triton":
            config = dict(config, scan_gluon="on")
        try:
            prof = profile_variant("chunk", problem, "fwd", calls=10, config=config)
        except Exception as error:
            print("FAILED", D, B, T, label, repr(error)[:300], flush=True)
            continue
        times = {r.name: r.us_per_call for r in prof if not r.name.startswith("deltalab::")}
        rows.append((D, B, T, label, times))
        print(D, B, T, label, {k[:40]: round(v, 1) for k, v in times.items()}, round(sum(times.values()), 1), flush=True)
use("g128")
print("\nSUMMARY")
for D, B, T, label, times in rows:
    short = {("scan" if "scan" in k else "summ" if "summary" in k else "comb" if "combine" in k else
              "inv" if "inverse" in k else k[:12]): round(v, 1) for k, v in times.items()}
    print(f"D={D:3d} {B}x{T:5d} {label:12s} total {sum(times.values()):6.1f}  {short}")
