"""GPU probe: host time per call of the chunk op's inference forward under each of several configs (e.g. tma on
and off: tensor descriptors are built and encoded on the host at every launch), beside the kernel time.

    python3 .ci/probes/launch_host.py --shapes 8x2048x16x128,1x16384x16x128 --configs '[["on",{"tma":"on"}],["off",{"tma":"off"}]]'

Give the settings compared explicitly: ``{}`` takes the shipped export's config, whose lookup is host time too.

Host time: the median over 5 rounds of 60 calls issued back to back, without synchronising (the queue stays far
from full), divided by the calls; kernel time: CUDA events around 20 calls after a synchronise.
"""

import argparse
import json
import statistics
import time

import torch

from deltalab.harness.numerics import random_inputs
from deltalab.variants import delta_rule
from deltalab.variants.registry import Problem

parser = argparse.ArgumentParser()
parser.add_argument("--shapes", default="8x2048x16x128", help="BxTxHxD, comma-separated")
parser.add_argument("--configs", default='[["auto", {}]]', help="JSON list of [label, config] pairs")
parser.add_argument("--json", default=None)
args = parser.parse_args()

records = []
for shape in args.shapes.split(","):
    B, T, H, D = (int(x) for x in shape.split("x"))
    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16)
    inputs = random_inputs(problem, seed=0, device="cuda", initial_state=False)
    for label, config in json.loads(args.configs):
        def call():
            return delta_rule(inputs.q, inputs.k, inputs.v, inputs.beta, variant="chunk", config=config)
        for _ in range(5):
            call()
        torch.cuda.synchronize()
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(60):
                call()
            rounds.append((time.perf_counter() - start) / 60 * 1e6)
            torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(20):
            call()
        end.record()
        torch.cuda.synchronize()
        record = dict(shape=shape, label=label, config=config, host_us=statistics.median(rounds),
                      gpu_us=begin.elapsed_time(end) / 20 * 1e3)
        records.append(record)
        print(json.dumps(record), flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
