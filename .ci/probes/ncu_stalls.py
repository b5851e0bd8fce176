"""Where the kernels of an Nsight Compute report wait: per kernel its duration, tensor-pipe use, cycles between
issued instructions and the warp stall reasons behind them, then the SASS instructions holding the most stall
samples (the "why" under a kernel time; session 12 found the Tm scan's unpipelined beta load this way).

    python3 .ci/probes/ncu_stalls.py out/gpu/ncu-1x16384x16x128.ncu-rep --top 12 --json stalls.json

Needs Nsight Compute's Python module ``ncu_report``: on the GPU machine it ships with ncu (extras/python,
found here by itself); elsewhere ``pip install ncu_report`` reads a report copied back from there. Reports
come from `ncu --set full` (the ncu-fwd stage of .ci/gpu-session).
"""

import argparse
import glob
import json
import sys
from collections import Counter, defaultdict

try:
    import ncu_report
except ImportError:  # the module beside the ncu installed on the GPU machine
    sys.path += sorted(glob.glob("/opt/nvidia/nsight-compute/*/extras/python"))[-1:]
    import ncu_report

# smsp__pcsamp_warps_issue_stalled_<reason>: the sampled stall reasons, per SASS instruction
REASONS = ("long_scoreboard", "short_scoreboard", "barrier", "wait", "selected", "not_selected", "mio_throttle",
           "lg_throttle", "math_pipe_throttle", "dispatch_stall", "no_instructions", "branch_resolving", "membar",
           "drain", "imc_miss", "sleeping", "tex_throttle", "misc", "warpgroup_arrive")


def metric(action, name):
    value = action.metric_by_name(name)
    return None if value is None else value.as_double()


def stall_samples(action) -> dict[int, Counter]:
    """{pc: Counter(reason -> samples)} over the kernel's SASS."""
    samples: dict[int, Counter] = defaultdict(Counter)
    for reason in REASONS:
        values = action.metric_by_name(f"smsp__pcsamp_warps_issue_stalled_{reason}")
        if values is None or not values.has_correlation_ids():
            continue
        pcs = values.correlation_ids()
        for i in range(values.num_instances()):
            if values.as_uint64(i):
                samples[pcs.as_uint64(i)][reason] += values.as_uint64(i)
    return samples


def summarise(action, top: int) -> dict:
    samples = stall_samples(action)
    total = sum(sum(c.values()) for c in samples.values()) or 1
    reasons = Counter()
    for counter in samples.values():
        reasons.update(counter)
    hottest = sorted(samples.items(), key=lambda item: -sum(item[1].values()))[:top]
    duration = metric(action, "gpu__time_duration.sum")
    return {
        "kernel": action.name(),
        "duration_us": None if duration is None else duration / 1e3,
        "tensor_pipe_pct": metric(action, "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"),
        "cycles_per_issue": metric(action, "smsp__average_warp_latency_per_inst_issued.ratio"),
        "stall_pct": {reason: round(100 * n / total, 1) for reason, n in reasons.most_common() if n},
        "hottest": [{"pc": f"{pc & 0xFFFFF:x}", "pct": round(100 * sum(c.values()) / total, 1),
                     "sass": action.sass_by_pc(pc).strip(), "reasons": dict(c.most_common(3))}
                    for pc, c in sorted(hottest)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help=".ncu-rep files")
    parser.add_argument("--top", type=int, default=10, help="SASS instructions listed per kernel")
    parser.add_argument("--json", default=None, help="write the summaries here")
    args = parser.parse_args()
    summaries = []
    for path in args.reports:
        context = ncu_report.load_report(path)
        for r in range(context.num_ranges()):
            for a in range(context.range_by_idx(r).num_actions()):
                summary = dict(report=path, **summarise(context.range_by_idx(r).action_by_idx(a), args.top))
                summaries.append(summary)
                print(f"{summary['kernel']}: {summary['duration_us']:.1f} us, tensor pipe "
                      f"{summary['tensor_pipe_pct']:.1f} %, {summary['cycles_per_issue']:.2f} cycles per issue")
                print("  stall samples %:", summary["stall_pct"])
                for line in summary["hottest"]:
                    print(f"  {line['pc']:>6} {line['pct']:5.1f} %  {line['sass'][:64]:64s} {line['reasons']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summaries, f, indent=1)


if __name__ == "__main__":
    main()
