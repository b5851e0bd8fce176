"""GPU probe: the inference forward with forward_scan="tm" (chunk_scan_tm.py: the scan applies Tm itself, no
intra-chunk kernel) against "wu" (W and U from the intra-chunk kernel), kernel time per call from the torch
profiler, per shape and config. (Session 10's second call also timed the Tm scan reading Aqk from the inverse
kernel: reports/h200-2026-11-29-s10/.)

    python3 .ci/probes/tm_scan.py --D 64,128,256 --T 2K,4K,8K,16K
    python3 .ci/probes/tm_scan.py --D 128 --T 16K --configs '[["G=1", {"scan_segments": 1}], ["G=8", {"scan_segments": 8}]]'

Session 11 added --configs (label, config pairs in place of the three defaults) for the Tm scan's segments.
"""

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from deltalab.harness.profile import profile_variant
from deltalab.variants.registry import Problem

# (label, config) timed per shape; '{}' is the op's own choice (its shipped tuned export included)
CONFIGS = [("auto", "{}"), ("wu", '{"forward_scan": "wu"}'), ("tm", '{"forward_scan": "tm"}')]

parser = argparse.ArgumentParser()
parser.add_argument("--D", default="64,128,256")
parser.add_argument("--T", default="2K,4K,8K,16K")
parser.add_argument("--calls", type=int, default=10)
parser.add_argument("--json", default=None)
parser.add_argument("--configs", default=None, help="JSON list of [label, config] pairs (default: auto, wu, tm)")
args = parser.parse_args()
if args.configs:
    CONFIGS = [(label, json.dumps(config)) for label, config in json.loads(args.configs)]

table = Table(title=f"inference forward, kernel us per call (bf16, {torch.cuda.get_device_name()})")
for column in ("D", "B x T", "config", "scan", "other kernels", "all kernels"):
    table.add_column(column, justify="right")
records = []
for D in (int(d) for d in args.D.split(",")):
    for T in (int(t.replace("K", "")) * 1024 for t in args.T.split(",")):
        B = 16384 // T
        problem = Problem(B=B, T=T, H=2048 // D, K=D, V=D, dtype=torch.bfloat16)
        for label, config in CONFIGS:
            try:
                rows = profile_variant("chunk", problem, "fwd", calls=args.calls, config=json.loads(config))
            except Exception as error:  # a config that fails is a finding, not the end of the probe
                print(D, B, T, label, "FAILED", repr(error)[:300], flush=True)
                continue
            times = {row.name: row.us_per_call for row in rows if not row.name.startswith("deltalab::")}
            scan = sum(t for name, t in times.items() if "state" in name or "scan" in name)
            total = sum(times.values())
            records.append(dict(D=D, B=B, T=T, label=label, config=config, kernels=times, total_us=total))
            table.add_row(str(D), f"{B} x {T}", label, f"{scan:.1f}", f"{total - scan:.1f}", f"{total:.1f}")
            print(D, B, T, label, {k: round(v, 1) for k, v in times.items()}, round(total, 1), flush=True)
Console(width=160).print(table)
if args.json:
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
