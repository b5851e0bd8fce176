"""Scratch (session 16): where the Gluon inverse's time goes -- copies of chunk_inverse_gluon.py with one stage
left out (wrong results: timing only), each timed inside the op (torch profiler, config tma="on") against the
kernel as it is. ``--ncu`` instead runs the op once (for Nsight Compute to profile the inverse)."""
import importlib.util
import pathlib
import sys

import torch

import deltalab.variants.chunk_inverse_gluon as inverse_module
from deltalab.harness.profile import profile_variant
from deltalab.variants.registry import Problem

ORIGINAL = inverse_module.chunk_inverse_gluon_kernel
SOURCE = pathlib.Path(inverse_module.__file__).read_text().replace(
    "from .chunk_intra import", "from deltalab.variants.chunk_intra import")
EDITS = {
    "as-is": [],
    "no-substitution": [("for s in gl.static_range(1, 16):", "for s in gl.static_range(1, 1):")],
    "no-merges": [("        if C >= 32:\n", "        if C >= 1024:\n"), ("        if C >= 64:\n", "        if C >= 2048:\n")],
    "no-key-load": [("mask=tmask[:, None] & (dd < K)[None, :], other=0.0)", "mask=tmask[:, None] & (dd < 0)[None, :], other=0.0)")],
    "no-kkt": [("            acc = mma_v2(key_smem.load(gl.DotOperandLayout(0, mma, 2)),\n"
                "                         key_smem.permute([1, 0]).load(gl.DotOperandLayout(1, mma, 2)), acc)\n",
                "            acc += 1.0\n")],
    "no-store": [("                 mask=(tok_tile < end)[:, None])", "                 mask=(tok_tile < 0)[:, None])")],
}


def edited(label):
    source = SOURCE
    for old, new in EDITS[label]:
        assert old in source, (label, old)
        source = source.replace(old, new)
    path = f"/tmp/inverse_{label.replace('-', '_')}.py"
    pathlib.Path(path).write_text(source)
    spec = importlib.util.spec_from_file_location(f"inverse_{label.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.chunk_inverse_gluon_kernel


if "--ncu" in sys.argv:
    from deltalab.variants import delta_rule
    for D in (128, 64):
        B, T, H = 1, 16384, 2048 // D
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda", generator=g), dim=-1)
                   .to(torch.bfloat16) for _ in range(3))
        beta = torch.rand(B, T, H, device="cuda", generator=g).to(torch.bfloat16)
        delta_rule(q, k, v, beta, variant="chunk", config={"tma": "on"})
        torch.cuda.synchronize()
    sys.exit(0)

rows = []
for D in (128, 64):
    problem = Problem(B=1, T=16384, H=2048 // D, K=D, V=D, dtype=torch.bfloat16)
    for label in EDITS:
        inverse_module.chunk_inverse_gluon_kernel = edited(label)
        prof = profile_variant("chunk", problem, "fwd", calls=20, config={"tma": "on"})
        times = {r.name: r.us_per_call for r in prof if not r.name.startswith("deltalab::")}
        rows.append((D, label, times.get("chunk_inverse_gluon_kernel")))
        print(D, label, rows[-1][2], flush=True)
inverse_module.chunk_inverse_gluon_kernel = ORIGINAL
print("\nSUMMARY: the inverse kernel, us per call (bf16, 1 x 16K)")
for D, label, t in rows:
    print(f"D={D:3d} {label:16s} {t:7.1f}")
