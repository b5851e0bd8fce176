"""GPU probe: the persistent per-chunk kernels (inverse, intra-chunk, WY backward) at several programs per SM
(chunk.PROGRAMS_PER_SM): kernel time per call from the torch profiler, forward+backward, per shape.

    python3 .ci/probes/programs_per_sm.py --values 8,12 --shapes 8x2048x32x64,8x2048x16x128,4x4096x8x256
"""

import argparse

import torch
from rich.console import Console
from rich.table import Table

from deltalab.harness.profile import profile_variant
from deltalab.variants import chunk
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--values", default="8,12", help="programs per SM to time, comma-separated")
parser.add_argument("--shapes", default="8x2048x32x64,8x2048x16x128,4x4096x8x256", help="BxTxHxD, comma-separated")
parser.add_argument("--mode", default="fwd+bwd")
parser.add_argument("--calls", type=int, default=10)
args = parser.parse_args()

KERNELS = ("chunk_inverse_kernel", "chunk_intra_fwd_kernel", "chunk_wy_bwd_kernel")
table = Table(title=f"persistent kernels, us per call ({args.mode}, bf16, {torch.cuda.get_device_name()})")
for column in ("B x T x H x D", "programs / SM") + KERNELS + ("all kernels",):
    table.add_column(column, justify="right")
for shape in args.shapes.split(","):
    B, T, H, D = (int(x) for x in shape.split("x"))
    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16)
    for value in (int(v) for v in args.values.split(",")):
        chunk.PROGRAMS_PER_SM = value
        rows = profile_variant("chunk", problem, args.mode, calls=args.calls)
        times = {row.name: row.us_per_call for row in rows}
        # the op's own row (deltalab::...) spans its kernels: leave it out of the sum
        total = sum(t for name, t in times.items() if not name.startswith("deltalab::"))
        table.add_row(shape, str(value), *(f"{times.get(k, 0.0):.1f}" for k in KERNELS), f"{total:.1f}")
        print(shape, value, {k: round(times.get(k, 0.0), 1) for k in KERNELS}, round(total, 1), flush=True)
Console(width=150).print(table)
