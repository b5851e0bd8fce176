"""GPU probe for Nsight Compute: the chunk forward (inference, bf16) at the given shapes, one call each by
default, with no profiler of its own (ncu reads the hardware counters; the torch profiler would compete for
CUPTI).

    ncu --clock-control none --set full -k regex:chunk_ --launch-count 8 -o out/gpu/ncu-d128 \
        python3 .ci/probes/ncu_forward.py --shapes 1x16384x16x128 --calls 1

(the ncu-fwd stage of .ci/gpu-session). Each shape runs ``--calls`` forwards; one is enough: Triton compiles
on the host before the launch, and ncu replays each profiled kernel on its own. Session 12 added it.
"""

import argparse
import json

import torch

from deltalab.harness.timing import make_runner
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--shapes", default="1x16384x16x128", help="BxTxHxD, comma-separated")
parser.add_argument("--config", default="{}", help="JSON config for the op (default: its own choice)")
parser.add_argument("--calls", type=int, default=1)
args = parser.parse_args()

for shape in args.shapes.split(","):
    B, T, H, D = (int(x) for x in shape.split("x"))
    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16)
    run = make_runner("chunk", problem, json.loads(args.config), "fwd")
    for _ in range(args.calls):
        run()
    torch.cuda.synchronize()
    print(shape, "done", flush=True)
