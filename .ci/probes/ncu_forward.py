"""GPU probe for Nsight Compute: the chunk forward (inference, bf16) at the given shapes, a few calls each, with
no profiler of its own (ncu reads the hardware counters; the torch profiler would compete for CUPTI).

    ncu --clock-control none --set full -k regex:chunk_ --launch-skip 4 --launch-count 4 \
        python3 .ci/probes/ncu_forward.py --shapes 1x16384x16x128

Each shape runs ``--calls`` forwards; with ``--launch-skip`` one forward's kernels, ncu then sees the second
call's (compiled, warm) launches. Session 12 added it.
"""

import argparse
import json

import torch

from deltalab.harness.timing import make_runner
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--shapes", default="1x16384x16x128", help="BxTxHxD, comma-separated")
parser.add_argument("--config", default="{}", help="JSON config for the op (default: its own choice)")
parser.add_argument("--calls", type=int, default=2)
args = parser.parse_args()

for shape in args.shapes.split(","):
    B, T, H, D = (int(x) for x in shape.split("x"))
    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16)
    run = make_runner("chunk", problem, json.loads(args.config), "fwd")
    for _ in range(args.calls):
        run()
    torch.cuda.synchronize()
    print(shape, "done", flush=True)
