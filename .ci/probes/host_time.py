"""GPU probe: where the host's time per call goes (issue #10: several rows of the ratio table spend as much
host time issuing a call as the GPU spends running it). For each named variant/peer and mode: the median host
time of one call (the GPU kept busy behind it, so no call waits on another), then a cProfile of ``--calls``
calls, its top functions by own time:

    python3 .ci/probes/host_time.py --variant chunk,fla_chunk --B 4 --T 4096 --H 16 --D 128 --mode fwd,fwd+bwd
"""

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

from deltalab.harness.timing import make_runner
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--variant", default="chunk,fla_chunk")
parser.add_argument("--B", type=int, default=4)
parser.add_argument("--T", type=int, default=4096)
parser.add_argument("--H", type=int, default=16)
parser.add_argument("--D", type=int, default=128)
parser.add_argument("--mode", default="fwd,fwd+bwd")
parser.add_argument("--calls", type=int, default=200)
parser.add_argument("--top", type=int, default=25)
args = parser.parse_args()

problem = Problem(B=args.B, T=args.T, H=args.H, K=args.D, V=args.D, dtype=torch.bfloat16, device="cuda")
summary = []
for mode in args.mode.split(","):
    for name in args.variant.split(","):
        runner = make_runner(name, problem, None, mode, device="cuda")
        for _ in range(3):
            runner()  # compiles, autotunes (peers)
        torch.cuda.synchronize()
        host = []
        for _ in range(args.calls):
            start = time.perf_counter()
            runner()
            host.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.calls):
            runner()
        profile.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
        print(f"== {name} {mode} B={args.B} T={args.T} H={args.H} D={args.D}: host {statistics.median(host):.3f} ms "
              f"per call (median of {args.calls})")
        print(text.getvalue())
        summary.append((name, mode, statistics.median(host)))
print("variant      mode      host ms / call")
for name, mode, ms in summary:
    print(f"{name:<12} {mode:<9} {ms:.3f}")
