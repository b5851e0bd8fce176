"""Roofline: the device's measured ceilings, the floor a call cannot beat, and what a call achieved.

``measure_ceilings`` measures, once per run, the device-to-device copy bandwidth (bytes read plus
written per second) and the dense matmul rate in bf16 and fp32. ``floor_ms`` turns a variant's cost
model (``Variant.cost``: FLOPs and minimum bytes) into the time neither the memory system nor the
math units could beat: max(FLOPs / matmul rate, bytes / copy bandwidth). ``achieved`` gives a
measured call's TFLOP/s and GB/s.
"""

from __future__ import annotations

from typing import Optional

import torch

from deltalab.variants.registry import Cost, Problem, Variant, delta_rule_cost


def _median_ms(fn, device: torch.device, reps: int) -> float:
    from deltalab.harness.timing import benchmark

    # no L2 flush: the operands are far larger than L2 on GPUs; CPU runs are labelled as such anyway
    return benchmark(fn, warmup_ms=10.0, rep_ms=50.0, flush_l2=False, min_reps=reps, max_reps=max(reps, 200), device=device).median_ms


def measure_ceilings(device=None) -> dict:
    """Measured ceilings of ``device``: {"copy_gbps", "matmul_bf16_tflops", "matmul_fp32_tflops",
    "device", "method", "sizes"}.

    CUDA: a 1 GiB device-to-device copy (GB/s = (read + written bytes) / time), 8192^3 bf16 and
    4096^3 fp32 matmuls (TF32 off: true fp32), medians of CUDA-event timings. CPU: 64 MiB copy,
    256^3 bf16 and 512^3 fp32 matmuls -- small measurements, labelled
    ``method="cpu (small, indicative only)"``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    copy_bytes = (1 << 30) if on_gpu else (64 << 20)
    n_bf16, n_fp32 = (8192, 4096) if on_gpu else (256, 512)  # CPU bf16 matmuls are slow
    reps = 10 if on_gpu else 3

    # operands from a deterministic pattern, not the device RNG: the RNG refuses to run after a failed
    # CUDA-graph capture elsewhere in the process; sin() of a ramp is non-zero and irregular enough
    # (zeros would flatter the matmul rate)
    def pattern(numel: int, phase: float) -> torch.Tensor:
        return torch.sin(torch.arange(numel, device=device, dtype=torch.float32) * 0.7548776662 + phase)

    src = pattern(copy_bytes // 4, 0.0)
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), device, reps)
    del src, dst

    def matmul_tflops(n: int, dtype: torch.dtype) -> float:
        a = pattern(n * n, 0.3).view(n, n).to(dtype)
        b = pattern(n * n, 1.1).view(n, n).to(dtype)
        ms = _median_ms(lambda: a @ b, device, reps)
        return 2.0 * n**3 / (ms * 1e-3) / 1e12

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 ceiling is IEEE fp32
    try:
        fp32 = matmul_tflops(n_fp32, torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {
        "copy_gbps": 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9,
        "matmul_bf16_tflops": matmul_tflops(n_bf16, torch.bfloat16),
        "matmul_fp32_tflops": fp32,
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "method": "cuda events, median" if on_gpu else "cpu (small, indicative only)",
        "sizes": {"copy_bytes": copy_bytes, "matmul_bf16_n": n_bf16, "matmul_fp32_n": n_fp32},
    }


def matmul_ceiling_key(dtype) -> str:
    """The ceilings key of the matmul rate that bounds ``dtype`` inputs (a torch dtype or its name, e.g.
    "bfloat16"): bf16/fp16 run on the 16-bit tensor-core rate, everything else on the fp32 rate."""
    name = str(dtype).replace("torch.", "")
    return "matmul_bf16_tflops" if name in ("bfloat16", "float16") else "matmul_fp32_tflops"


def _matmul_tflops(ceilings: dict, dtype: torch.dtype) -> float:
    return float(ceilings[matmul_ceiling_key(dtype)])


def floor_ms(cost: Cost, ceilings: dict, dtype: torch.dtype) -> float:
    """The roofline floor of a call: max(FLOPs at the matmul ceiling, bytes at the copy bandwidth), ms."""
    flop_ms = cost.flops / (_matmul_tflops(ceilings, dtype) * 1e12) * 1e3
    byte_ms = cost.bytes / (float(ceilings["copy_gbps"]) * 1e9) * 1e3
    return max(flop_ms, byte_ms)


def achieved(cost: Cost, ms: float) -> dict:
    """{"tflops", "gbps"} a call taking ``ms`` milliseconds reached on the cost model's work."""
    seconds = ms * 1e-3
    return {"tflops": cost.flops / seconds / 1e12, "gbps": cost.bytes / seconds / 1e9}


def mode_cost(variant: Variant, problem: Problem, config: Optional[dict], mode: str) -> Cost:
    """The work of ``variant`` on ``problem`` in ``mode`` ("fwd", "bwd", "fwd+bwd").

    The forward is the variant's own model (``variant.cost(problem, config)``). For the backward, the
    forward's FLOPs and bytes are scaled by the ratios the registry's delta-rule model gives
    (``delta_rule_cost(..., backward=True)`` over the forward, at the config's chunk size): backward
    = twice the forward's FLOPs plus a recompute, and its own input/gradient traffic.
    """
    config = variant.full_config(config)
    fwd = variant.cost(problem, config)
    chunk_size = config.get("chunk_size", 1)
    ref_fwd = delta_rule_cost(problem, chunk_size)
    ref_bwd = delta_rule_cost(problem, chunk_size, backward=True)
    bwd = Cost(fwd.flops * ref_bwd.flops / ref_fwd.flops, fwd.bytes * ref_bwd.bytes / ref_fwd.bytes)
    if mode == "fwd":
        return fwd
    if mode == "bwd":
        return bwd
    if mode == "fwd+bwd":
        return Cost(fwd.flops + bwd.flops, fwd.bytes + bwd.bytes)
    raise ValueError(f"mode: expected fwd, bwd or fwd+bwd, got {mode!r}")
