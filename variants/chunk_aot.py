"""Ahead-of-time compile of variant "chunk"'s kernels for a CUDA target, without a GPU.

Triton compiles to a cubin with its bundled ptxas; ``cuobjdump --dump-resource-usage`` then tells each
kernel's registers per thread and spill bytes (stack + local memory), and the compiler's metadata its
shared memory. This checks launch plans on a machine without a GPU (CI, a tuner pre-filter): a kernel
that fails to compile, overflows shared memory or spills shows up here.

TRITON_INTERPRET must be unset when triton is imported (the interpreter replaces the kernels), so run it
in its own process:

    python -m deltalab.variants.chunk_aot --dtype bfloat16 --K 128 --V 128 --chunk-size 64

Output: one JSON object {kernel: {"registers", "spill_bytes", "shared_bytes"}}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from typing import Optional

import torch

_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def _kernels(plan, problem):
    """(name, kernel, pointer types that differ from the input dtype's, scalar types, constexprs, launch)."""
    from .chunk_backward_grads import chunk_grads_kernel
    from .chunk_backward_state import chunk_state_bwd_kernel
    from .chunk_backward_wy import chunk_wy_bwd_kernel
    from .chunk_config import (GLUON_SCAN_BLOCK_V, GLUON_SCAN_STAGES, GLUON_SUMMARY_BLOCK, Launch, gluon_inverse_fits,
                               gluon_inverse_launch, gluon_scan_fits)
    from .chunk_intra import chunk_intra_fwd_kernel, chunk_inverse_kernel
    from .chunk_output import chunk_output_kernel
    from .chunk_scan_tm import chunk_scan_tm_kernel
    from .chunk import tma_fits
    from .chunk_segments import chunk_segment_combine_kernel, chunk_segment_summary_kernel
    from .chunk_state import chunk_state_fwd_kernel

    common = dict(H=problem.H, K=problem.K, V=problem.V, C=plan.chunk_size, IS_VARLEN=problem.varlen)
    ints = {"chunk_table": "*i32", "cu_seqlens": "*i32", "chunk_offsets": "*i32"}
    f32 = lambda *names: {n: "*fp32" for n in names}  # noqa: E731
    scalars = {"T": "i32", "scale": "fp32", "num_tiles": "i32"}
    pr = plan.precision
    scan = dict(common, BLOCK_K=plan.key_tile, PRECISION=pr)
    # inverse="kernel": the intra-chunk kernel reads Tm the inverse kernel wrote
    from_kernel = plan.inverse == "kernel"
    intra = dict(common, BLOCK_K=plan.intra.block_k, BLOCK_V=plan.intra.block_v, PRECISION=pr, INV_PRECISION=pr,
                 INVERSE="load" if from_kernel else plan.inverse)
    # the inverse kernel runs for inverse="kernel" and for forward_scan="tm" (inference)
    inverse = []
    if from_kernel or plan.tm_scan:
        if not plan.inverse_gluon:
            inverse.append(("inverse", chunk_inverse_kernel, {**ints, **f32("scratch")}, {"T": "i32", "num_tiles": "i32"},
                            dict(common, BLOCK_K=plan.inverse_kernel.block_k, PRECISION=pr, INV_PRECISION=pr),
                            plan.inverse_kernel))
        # its Gluon version wherever it applies (chunk_config's inverse_gluon, whose "auto" needs a GPU to say yes)
        if gluon_inverse_fits(problem, plan.chunk_size, plan.inverse_kernel.warps) is None:
            from .chunk_inverse_gluon import chunk_inverse_gluon_kernel

            launch = (plan.inverse_kernel if plan.inverse_gluon
                      else gluon_inverse_launch(plan.inverse_kernel, plan.key_tile))
            inverse.append(("inverse_gluon", chunk_inverse_gluon_kernel, ints, {"T": "i32", "num_tiles": "i32"},
                            dict(common, BLOCK_K=launch.block_k, NUM_WARPS=launch.warps, TMA=False), launch))
            # its keys through a descriptor (tma) where whole-key tiles of whole chunks exist
            if (plan.tma != "off" and launch.block_k == problem.K
                    and tma_fits(plan, problem.T, problem.varlen, [(problem.K, problem.K)])):
                from .chunk_scan_tm_gluon import tile_layout

                keys = f"tensordesc<{_PTR[problem.dtype][1:]}[{plan.chunk_size},{problem.K}]," \
                       f"{tile_layout(problem.dtype, plan.chunk_size, problem.K)!r}>"
                inverse.append(("inverse_gluon_tma", chunk_inverse_gluon_kernel, {**ints, "k": keys},
                                {"T": "i32", "num_tiles": "i32"},
                                dict(common, BLOCK_K=launch.block_k, NUM_WARPS=launch.warps, TMA=True), launch))
    fused = not plan.separate_output
    separate = [("output", chunk_output_kernel, ints, scalars,
                 dict(common, BLOCK_K=plan.output.block_k, BLOCK_V=plan.output.block_v, PRECISION=pr), plan.output)
                ] if plan.separate_output else []
    stored = [("intra_store_tm", chunk_intra_fwd_kernel, {**ints, **f32("scratch")}, scalars,
               dict(intra, STORE_TM=True), plan.intra)] if plan.store_tm and not from_kernel else []
    # with plan.tma where whole tiles exist (chunk.tma_fits), the kernels take tensor descriptors in place of
    # the named (argument, D, tile width) pointers
    BV, BK, C = plan.scan_tm.block_v, plan.key_tile, plan.chunk_size

    def descriptors(tiles) -> dict:
        fits = plan.tma != "off" and tma_fits(plan, problem.T, problem.varlen, [(D, w) for _, D, w in tiles])
        return {name: f"tensordesc<{_PTR[problem.dtype][1:]}[{C},{w}]>" for name, _, w in tiles} if fits else {}

    K, V = problem.K, problem.V
    scan_descriptors = descriptors([("q", K, BK), ("k", K, BK), ("v", V, BV), ("tm", C, C), ("o", V, BV)])
    tm_scan = [("scan_tm", chunk_scan_tm_kernel, {**ints, **f32("h0", "ht"), **scan_descriptors}, scalars,
                dict(scan, BLOCK_V=BV, HAS_H0=True, STORE_HT=True, SEGMENTS=plan.segments,
                     TMA=bool(scan_descriptors)), plan.scan_tm)
               ] if plan.tm_scan else []
    # the Tm scan's Gluon version wherever it applies (scan_gluon, whose "auto" needs a Hopper GPU to say yes):
    # its descriptors carry their shared-memory layouts
    if plan.tm_scan and gluon_scan_fits(problem, C) is None:
        from .chunk_scan_tm_gluon import chunk_scan_tm_gluon_kernel, tile_layout

        def gluon_descriptor(width: int) -> str:
            return f"tensordesc<{_PTR[problem.dtype][1:]}[{C},{width}],{tile_layout(problem.dtype, C, width)!r}>"

        gluon = {"q": gluon_descriptor(BK), "k": gluon_descriptor(BK), "v": gluon_descriptor(GLUON_SCAN_BLOCK_V),
                 "tm": gluon_descriptor(C), "o": gluon_descriptor(GLUON_SCAN_BLOCK_V)}
        tm_scan.append(("scan_tm_gluon", chunk_scan_tm_gluon_kernel, {**gluon, **f32("h0", "ht")}, scalars,
                        dict(H=problem.H, K=K, V=V, C=C, BLOCK_V=GLUON_SCAN_BLOCK_V, HAS_H0=True, STORE_HT=True,
                             SEGMENTS=plan.segments, STAGES=GLUON_SCAN_STAGES),
                        Launch(BK, GLUON_SCAN_BLOCK_V, 4, GLUON_SCAN_STAGES)))
        if plan.segments > 1:  # its summaries' Gluon version
            from .chunk_segments_gluon import chunk_segment_summary_gluon_kernel

            tm_scan.append(("summary_gluon", chunk_segment_summary_gluon_kernel,
                            {"k": gluon_descriptor(BK), "v": gluon_descriptor(GLUON_SUMMARY_BLOCK),
                             "tm": gluon_descriptor(C), **f32("h0", "seg_values", "seg_transitions")}, {"T_seg": "i32"},
                            dict(SEGMENTS=plan.segments, H=problem.H, K=K, V=V, C=C, BLOCK_N=GLUON_SUMMARY_BLOCK,
                                 HAS_H0=True, STAGES=GLUON_SCAN_STAGES, NUM_WARPS=GLUON_SUMMARY_BLOCK // 16),
                            Launch(BK, GLUON_SUMMARY_BLOCK, GLUON_SUMMARY_BLOCK // 16, GLUON_SCAN_STAGES)))
    if plan.segments > 1:  # scan_segments: the summaries and their combine
        segment = dict(SEGMENTS=plan.segments, H=problem.H, K=K, V=V, BLOCK_K=BK)
        BN = plan.summary.block_v
        summary_descriptors = descriptors([("k", K, BK), ("v", V, BN), ("tm", C, C)])
        tm_scan += [
            ("summary", chunk_segment_summary_kernel,
             {**f32("h0", "seg_values", "seg_transitions"), **summary_descriptors}, {"T_seg": "i32"},
             dict(segment, C=C, BLOCK_N=BN, HAS_H0=True, PRECISION=pr, TMA=bool(summary_descriptors),
                  TRANSPOSED=plan.summary_order == "vk"),
             plan.summary),
            ("combine", chunk_segment_combine_kernel, f32("h0", "seg_values", "seg_transitions", "seg_h0"), {},
             dict(segment, BLOCK_ROWS=plan.combine.block_k, BLOCK_V=plan.combine.block_v, HAS_H0=True,
                  PRECISION=plan.combine_precision), plan.combine),
        ]
    return tm_scan + separate + inverse + stored + [
        ("intra", chunk_intra_fwd_kernel, {**ints, **f32("scratch")}, scalars, dict(intra, STORE_TM=False), plan.intra),
        ("state", chunk_state_fwd_kernel, {**ints, **f32("h0", "ht")}, scalars,
         dict(scan, BLOCK_V=plan.state.block_v, HAS_H0=True, STORE_HT=True, COMPUTE_O=fused, STORE_STATES=not fused),
         plan.state),
        ("state_keep", chunk_state_fwd_kernel, {**ints, **f32("h0", "ht")}, scalars,
         dict(scan, BLOCK_V=plan.state.block_v, HAS_H0=True, STORE_HT=True, COMPUTE_O=fused, STORE_STATES=True), plan.state),
        ("state_recompute", chunk_state_fwd_kernel, {**ints, **f32("h0", "ht")}, scalars,
         dict(scan, BLOCK_V=plan.state.block_v, HAS_H0=True, STORE_HT=False, COMPUTE_O=False, STORE_STATES=True), plan.state),
        ("state_bwd", chunk_state_bwd_kernel, {**ints, **f32("dht", "dh0")}, scalars,
         dict(scan, BLOCK_V=plan.state_bwd.block_v, HAS_DHT=True, STORE_DH0=True), plan.state_bwd),
        ("grads", chunk_grads_kernel, {**ints, **f32("dk_partial")}, scalars,
         dict(common, BLOCK_K=plan.grads.block_k, BLOCK_V=plan.grads.block_v, PRECISION=pr,
              KEY_GRID=plan.grads_key_grid), plan.grads),
        ("wy", chunk_wy_bwd_kernel, {**ints, **f32("dk_partial", "scratch")}, {"T": "i32", "num_tiles": "i32"},
         dict(common, BLOCK_K=plan.wy.block_k, BLOCK_V=plan.wy.block_v, PRECISION=pr, INV_PRECISION=pr,
              LOAD_TM=plan.store_tm, REGISTER_INVERSE=plan.inverse == "registers"), plan.wy),
    ]


def compile_report(config: dict, problem, arch: int = 90, dump_dir: Optional[str] = None) -> dict:
    """Compile every kernel of ``config`` (a full config) on ``problem`` for sm_``arch``; their resources.
    With ``dump_dir``, each kernel's Triton GPU IR, PTX and SASS go there as <name>.ttgir / .ptx / .sass."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

    from .chunk_config import resolve_plan

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("chunk_aot: TRITON_INTERPRET=1 replaces the kernels; run in a process without it")
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    plan = resolve_plan(config, problem)
    target = GPUTarget("cuda", arch, 32)
    report = {}
    for name, fn, pointer_types, scalars, constexprs, launch in _kernels(plan, problem):
        constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
        signature = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg in scalars:
                signature[arg] = scalars[arg]
            else:
                signature[arg] = pointer_types.get(arg, _PTR[problem.dtype])
        # a real launch specialises 16-byte aligned pointers; without it no load is vectorised
        attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(fn.arg_names) if signature[arg].startswith("*")}
        source = (GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource)(
            fn, signature, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(source, target=target, options=launch.options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                   check=True).stdout
            if dump_dir:
                sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
                for suffix, text in (("ttgir", kernel.asm["ttgir"]), ("ptx", kernel.asm["ptx"]), ("sass", sass)):
                    with open(os.path.join(dump_dir, f"{name}.{suffix}"), "w") as out:
                        out.write(text)
        field = lambda key: int(re.search(key + r":(\d+)", usage).group(1))  # noqa: E731
        report[name] = {"registers": field("REG"), "spill_bytes": field("STACK") + field("LOCAL"),
                        "shared_bytes": int(kernel.metadata.shared)}
    return report


def main(argv=None) -> None:
    from .chunk_config import DEFAULT_CONFIG
    from .registry import Problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--V", type=int, default=128)
    parser.add_argument("--H", type=int, default=16)
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--config", default="{}", help="JSON: config keys over the default")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dump", metavar="DIR", help="write each kernel's Triton GPU IR, PTX and SASS into DIR")
    args = parser.parse_args(argv)
    problem = Problem(B=args.B, T=args.T, H=args.H, K=args.K, V=args.V, dtype=getattr(torch, args.dtype))
    config = dict(DEFAULT_CONFIG, chunk_size=args.chunk_size, **json.loads(args.config))
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    print(json.dumps(compile_report(config, problem, args.arch, args.dump)))


if __name__ == "__main__":
    main()
