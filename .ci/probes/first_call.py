"""GPU probe: the cost of a first call in a fresh process (issue #10: no autotuning at call time, only
compilation). Times, in this process, the first call of each named variant/peer in ``--mode`` (wall
clock, synchronised: compilation or autotuning included), then a second call. Run it with an empty
TRITON_CACHE_DIR for the cold figure and again with the same directory for the warm one:

    TRITON_CACHE_DIR=/tmp/cold python3 .ci/probes/first_call.py --variant auto,fla_chunk --D 128
"""

import argparse
import json
import time

import torch

from deltalab.harness.timing import make_runner
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--variant", default="auto")
parser.add_argument("--B", type=int, default=1)
parser.add_argument("--T", type=int, default=16384)
parser.add_argument("--H", type=int, default=16)
parser.add_argument("--D", type=int, default=128)
parser.add_argument("--mode", default="fwd+bwd")
args = parser.parse_args()

problem = Problem(B=args.B, T=args.T, H=args.H, K=args.D, V=args.D, dtype=torch.bfloat16, device="cuda")
for name in args.variant.split(","):
    runner = make_runner(name, problem, None, args.mode, device="cuda")
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        runner()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(json.dumps({"variant": name, "mode": args.mode, "B": args.B, "T": args.T, "H": args.H, "D": args.D,
                      "first_call_s": round(times[0], 3), "second_call_s": round(times[1], 4)}))
