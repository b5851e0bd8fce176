"""Synthetic sample results in the sweep schema, so that a report can be built and tested without a GPU.

NOT MEASUREMENTS. The peers' times (fla chunk / recurrent, torch SDPA) are the one-off H200 figures of
shared/anchors.md (the short end, T = 512 and 1K, derived from its quoted speed-ups); "chunk" and
"recurrent" are those divided by the project's speed targets; every sample carries made-up noise. The
environment's "gpu" field says SYNTHETIC, and reports built from it show a banner. The lead replaces
the committed copy (reports/samples/) with real H200 results.

Regenerate the committed samples with::

    python -m deltalab.reports.synthetic reports/samples
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SYNTHETIC_GPU = "SYNTHETIC sample (not measured; modelled on NVIDIA H200)"
DATE = "2026-11-29T00:00:00+00:00"
SEED = 20261129
SAMPLES_PER_ROW = 25
# Ceilings quoted in anchors.md (copy bandwidth and bf16 matmul); fp32 (no TF32) is H200's datasheet rate.
CEILINGS = {"copy_gbps": 4270.0, "matmul_bf16_tflops": 686.0, "matmul_fp32_tflops": 51.0, "synthetic": True}

# Peer times in ms from anchors.md at B*T = 16384, H*D = 2048, bf16:
# D -> T -> (fla chunk fwd, fla recurrent fwd, fla chunk fwd+bwd, sdpa fwd, sdpa fwd+bwd).
PEER_MS = {
    64: {2048: (0.751, 3.09, 2.95, 0.348, 1.54), 4096: (0.883, 5.79, 2.87, 0.633, 2.63),
         8192: (0.814, 11.27, 3.27, 1.22, 4.72), 16384: (0.825, 22.41, 2.95, 2.44, 8.84)},
    128: {2048: (0.629, 2.91, 2.78, 0.278, 1.28), 4096: (0.520, 4.95, 2.55, 0.527, 2.15),
          8192: (0.603, 9.49, 2.98, 0.976, 3.77), 16384: (0.900, 18.87, 2.62, 1.90, 7.30)},
    256: {2048: (0.914, 3.22, 2.92, 0.256, 1.52), 4096: (0.564, 5.08, 2.86, 0.474, 2.62),
          8192: (0.992, 9.32, 2.59, 0.897, 4.62), 16384: (1.010, 18.34, 3.48, 1.77, 9.09)},
}  # fmt: skip
# anchors.md's short end: fla chunk over fla recurrent speed-up at T = 512 and 1K, per D.
SHORT_SPEEDUP = {512: {64: 3.8, 128: 5.5, 256: 5.8}, 1024: {64: 4.1, 128: 3.7, 256: 5.8}}
# anchors.md's long case, D = 128, T = 64K, B = 1, H = 16 (no recurrent figure: modelled as 4x its 16K time).
LONG_MS = (3.02, 4 * 18.87, 9.61, 28.8, 111.2)
# Factors by which the project's own variants are modelled faster than the peer (its speed targets).
CHUNK_FWD_GAIN, CHUNK_FWDBWD_GAIN, RECURRENT_FWD_GAIN = 1.7, 1.4, 2.3
BACKWARD_FACTOR = 2.7  # recurrent fwd+bwd time over its fwd time (modelled)
# No modelled time may beat the roofline floor: at least this many times the floor (anchors' SDPA is
# measured close to the bf16 matmul peak, the delta-rule kernels are not).
MIN_FLOOR_RATIO = {"sdpa": 1.05}


def _peer_table() -> dict[tuple[int, int], tuple[float, ...]]:
    """(D, T) -> peer times, filling T = 512 and 1K from the 2K figures and the quoted speed-ups."""
    table = {(d, t): times for d, by_t in PEER_MS.items() for t, times in by_t.items()}
    for d, by_t in PEER_MS.items():
        chunk_fb, sdpa_fwd, sdpa_fb = by_t[2048][2], by_t[2048][3], by_t[2048][4]
        for t, speedups in SHORT_SPEEDUP.items():
            recurrent = by_t[2048][1] * t / 2048  # latency-bound: time grows with the steps T
            scale = t / 2048  # attention at fixed tokens: time grows with T
            table[(d, t)] = (recurrent / speedups[d], recurrent, chunk_fb, sdpa_fwd * scale, sdpa_fb * scale)
    table[(128, 65536)] = LONG_MS
    return table


def _cost(variant: str, mode: str, B: int, T: int, H: int, D: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one call: the registry's delta-rule model, causal attention for SDPA."""
    import torch

    from deltalab.variants.registry import Problem, delta_rule_cost

    problem = Problem(B=B, T=T, H=H, K=D, V=D, dtype=torch.bfloat16)
    if variant == "sdpa":
        flops = 2.0 * B * H * T * T * D  # QK^T and PV, causal half: 4 B H T^2 D / 2
        io = 4.0 * B * T * H * D * 2
        return (flops * 3.5, io * 2.5) if mode == "fwd+bwd" else (flops, io)
    chunk_size = 1 if "recurrent" in variant else 64
    fwd = delta_rule_cost(problem, chunk_size)
    if mode == "fwd":
        return fwd.flops, fwd.bytes
    bwd = delta_rule_cost(problem, chunk_size, backward=True)
    return fwd.flops + bwd.flops, fwd.bytes + bwd.bytes


def _row(rng: np.random.Generator, variant: str, mode: str, B: int, T: int, H: int, D: int, median: float) -> dict:
    """One "ok" row: noisy samples around ``median`` and everything the schema derives from them.

    The modelled median is raised to at least ``MIN_FLOOR_RATIO`` x the roofline floor, where the
    short-sequence extrapolation would otherwise beat the hardware."""
    flops, nbytes = _cost(variant, mode, B, T, H, D)
    peak = CEILINGS["matmul_bf16_tflops"] * 1e12
    floor_ms = max(flops / peak, nbytes / (CEILINGS["copy_gbps"] * 1e9)) * 1e3
    median = max(median, MIN_FLOOR_RATIO.get(variant, 1.3) * floor_ms)
    cv = 0.01 + 0.02 * rng.random()  # 1-3 % spread, a little more for short calls
    if median < 0.5:
        cv *= 1.5
    samples = median * (1.0 + cv * rng.standard_normal(SAMPLES_PER_ROW))
    samples[rng.integers(SAMPLES_PER_ROW)] *= 1.0 + 0.1 * rng.random()  # one slow outlier
    samples = np.round(np.abs(samples), 6)
    med = float(np.median(samples))
    seconds = med / 1e3
    return {
        "status": "ok",
        "reason": "",
        "median_ms": round(med, 6),
        "mean_ms": round(float(samples.mean()), 6),
        "std_ms": round(float(samples.std(ddof=1)), 6),
        "min_ms": round(float(samples.min()), 6),
        "cv": round(float(samples.std(ddof=1) / samples.mean()), 6),
        "n_samples": SAMPLES_PER_ROW,
        "samples_ms": [float(s) for s in samples],
        "tokens_per_s": round(B * T / seconds, 1),
        "tflops": round(flops / seconds / 1e12, 4),
        "gbps": round(nbytes / seconds / 1e9, 2),
        "floor_ms": round(floor_ms, 6),
        "floor_ratio": round(med / floor_ms, 3),
    }


def _not_ok(status: str, reason: str) -> dict:
    empty = dict.fromkeys(
        ("median_ms", "mean_ms", "std_ms", "min_ms", "cv", "tokens_per_s", "tflops", "gbps", "floor_ms", "floor_ratio")
    )
    return {"status": status, "reason": reason, **empty, "n_samples": 0, "samples_ms": []}


def environment() -> dict:
    """The environment record of the samples, labelled synthetic."""
    return {
        "gpu": SYNTHETIC_GPU,
        "synthetic": True,
        "note": "synthetic sample results from deltalab.reports.synthetic; not a measurement",
        "compute_capability": "9.0",
        "sm_count": 132,
        "clocks": None,
        "driver": None,
        "cuda": "13.0",
        "torch": "2.11.0+cu130",
        "triton": "3.6.0",
        "deltalab": "0.1.0",
        "python": "3.11",
        "git_commit": None,
        "date": DATE,
        "hostname": "synthetic",
        "interpreter": False,
    }


def sample_rows() -> list[dict]:
    """All rows: 5 variants x (D in 64/128/256, T in 512..16K at B*T = 16384, H*D = 2048; plus T = 64K
    at D = 128) x (fwd, fwd+bwd), and a few skipped/failed rows at D = 512."""
    rng = np.random.default_rng(SEED)
    env = environment()
    shared = {k: env[k] for k in ("gpu", "torch", "triton", "deltalab", "git_commit", "date")}
    configs = {"chunk": {"chunk_size": 64}, "recurrent": {"block_v": 32}}
    rows: list[dict] = []
    for (D, T), peer in sorted(_peer_table().items()):
        B, H = (1, 16) if T == 65536 else (16384 // T, 2048 // D)
        fla_chunk, fla_rec, fla_chunk_fb, sdpa_fwd, sdpa_fb = peer
        times = {
            ("chunk", "fwd"): fla_chunk / CHUNK_FWD_GAIN,
            ("chunk", "fwd+bwd"): fla_chunk_fb / CHUNK_FWDBWD_GAIN,
            ("recurrent", "fwd"): fla_rec / RECURRENT_FWD_GAIN,
            ("recurrent", "fwd+bwd"): fla_rec / RECURRENT_FWD_GAIN * BACKWARD_FACTOR,
            ("fla_chunk", "fwd"): fla_chunk,
            ("fla_chunk", "fwd+bwd"): fla_chunk_fb,
            ("fla_recurrent", "fwd"): fla_rec,
            ("fla_recurrent", "fwd+bwd"): fla_rec * BACKWARD_FACTOR,
            ("sdpa", "fwd"): sdpa_fwd,
            ("sdpa", "fwd+bwd"): sdpa_fb,
        }
        for (variant, mode), median in times.items():
            row = {"variant": variant, "family": "delta_rule", "mode": mode, "dtype": "bfloat16",
                   "B": B, "T": T, "H": H, "K": D, "V": D, "block_size": D,
                   "config": json.dumps(configs.get(variant, {}), sort_keys=True)}  # fmt: skip
            row.update(_row(rng, variant, mode, B, T, H, D, median))
            rows.append({**row, **shared})
    # D = 512: outside every delta-rule variant's head-dim range (these rows are never plotted).
    unsupported = {
        "chunk": ("skipped", "K=512 outside the supported range [16, 256]"),
        "recurrent": ("skipped", "K=512 outside the supported range [16, 256]"),
        "fla_chunk": ("failed", "OutOfResources: out of resource: shared memory, Required: 294912, Hardware limit: 232448"),
        "fla_recurrent": ("failed", "OutOfResources: out of resource: registers (K x V state tile 512 x 512)"),
    }  # fmt: skip
    for variant, (status, reason) in unsupported.items():
        row = {"variant": variant, "family": "delta_rule", "mode": "fwd", "dtype": "bfloat16",
               "B": 4, "T": 4096, "H": 4, "K": 512, "V": 512, "block_size": 512,
               "config": json.dumps(configs.get(variant, {}), sort_keys=True)}  # fmt: skip
        rows.append({**row, **_not_ok(status, reason), **shared})
    return rows


def write_samples(out_dir: Path | str) -> Path:
    """Write results.json (with samples), results.csv (without), environment.json and ceilings.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows()
    # one row per line: small, and a re-generation diffs row by row
    (out / "results.json").write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")
    pd.DataFrame(rows).drop(columns=["samples_ms"]).to_csv(out / "results.csv", index=False)
    (out / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
    (out / "ceilings.json").write_text(json.dumps(CEILINGS, indent=2) + "\n")
    return out


if __name__ == "__main__":
    target = write_samples(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "samples")
    print(f"synthetic sample results written to {target}")
