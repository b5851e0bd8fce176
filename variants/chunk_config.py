"""Launch settings of variant "chunk": the tunable space, the automatic choices, resource checks.

Every kernel's launch settings are flat config keys. A tile/warps/stages key set to 0 means "automatic":
``resolve_plan`` picks it from the problem (the H200 guesses below); a tuner sets explicit values.

    chunk_size          C, tokens per chunk: 16, 32, 64, 128
    input_precision     how float32 operands enter tl.dot: "ieee" (exact FMA), "tf32x3" (three tf32
                        products, ~float32 accurate, tensor cores), "tf32" (fast, 10-bit mantissa).
                        Applies to every product of float32 inputs and, for every dtype, to the float32
                        block merges of the triangular inverse. "ieee" is needed for float32's 1e-5
                        tolerance; for 16-bit inputs the merges are a small share of the work.
    block_intra         key/value tile of the intra-chunk kernel's loops (A blocks, W, U)
    warps_intra, stages_intra
    block_v             V tile per program of the forward state scan (splits V over programs when
                        sequences x heads are few); warps_state, stages_state
    block_v_bwd         V tile per program of the reverse scan; warps_state_bwd, stages_state_bwd
                        (the scans' automatic stages: the deepest pipeline, up to MAX_SCAN_STAGES, that fits
                        shared memory with as many of their programs resident as two stages allow -- they
                        wait on each chunk's loads; see _scan_stages)
    block_k_grads, block_v_grads, warps_grads, stages_grads    the dQ/dK/dW kernel
    grads_keys          how that kernel covers the key dimension: "loop" (one program per chunk and head walks
                        its key tiles, computing S = dO Vn^T once), "grid" (a program per key tile, each
                        recomputing S: more programs, no serial loop -- the peer's split; its automatic key
                        tile is the widest that fits, the loop's may be narrower) or "auto" (default: "grid"
                        in 16 bits at C = 64, K = 128, else "loop"). H200, bf16 fwd+bwd 1 x 16K, the kernel
                        (reports/h200-2026-11-29-s9/): K = 128 loop 372 us (32-wide key tiles), grid 339
                        (64-wide; 461 at 32); K = 64 loop 211, grid 333; K = 256 loop 572, grid 785
    block_wy, warps_wy, stages_wy                              the WY (UT transform) backward
    regs_intra, regs_wy registers per thread the persistent intra-chunk / WY kernels may use (0: the
                        compiler's choice, ~120 at C = 64 with 8 warps: two programs per SM). Both are
                        latency-bound chains of barriers and workspace round trips; 64 fits four programs
                        per SM at the cost of spills (264 bytes at D = 128, sm_90). Measured slower on an
                        H200 (bf16 T = 16K fwd+bwd, D = 64: intra-chunk 370 -> 476 us and WY 379 -> 661 us at
                        80; worse at 64; reports/h200-2026-11-29-s6/): kept for experiments, not tuned
    wy_inverse          where the WY backward gets Tm: "stored" (default: the backward's intra-chunk
                        recompute also writes Tm in the input dtype -- the size of Aqk -- and the WY kernel
                        reads it, no second inverse; 6-11 % off forward+backward on an H200 at T = 16K,
                        reports/h200-2026-11-29-s4/) or "recompute" (the WY kernel inverts again: no
                        extra buffer)
    inverse             how the intra-chunk kernels get Tm: "kernel" (default: the inverse in a kernel of
                        its own, chunk_inverse_kernel, at 4 warps -- three of its latency-bound chains per
                        SM where the intra-chunk kernel fits two -- writing Tm in the input dtype, the copy
                        the backward keeps anyway; the intra-chunk kernel then reads it: 64 instead of 119
                        registers, four programs per SM), "workspace" (the same inverse inside the
                        intra-chunk kernel, through its per-program float32 workspace, see chunk_intra.py;
                        no Tm buffer in inference calls) or "registers" (batched 16 x 16 products and
                        forward substitution, then pairwise merges, all in registers: ~245 registers a
                        thread, one program per SM; kept as a second, independently written inverse).
                        Measured on an H200, bf16 forward at B = 1, T = 16K, intra-chunk kernel(s)
                        (reports/h200-2026-11-29-s7/): D = 64 workspace 362 us, kernel 222 + 131 = 353;
                        D = 128 257 / 117 + 118 = 235; D = 256 308 / 71 + 130 = 201; registers 2-3.5x
                        slower than workspace (D = 64 365 -> 1312 us, D = 128 258 -> 886, D = 256 309 ->
                        596; reports/h200-2026-11-29-s6/). The WY backward's recompute
                        (wy_inverse="recompute") builds Tm its own way for "workspace" and "kernel" alike
    warps_inverse       warps of the inverse kernel (inverse="kernel"; 0: 4 where its registers fit), its Gluon
                        version's too (inverse_gluon)
    save_for_backward   what a differentiated call keeps for its backward: "intermediates" (default: W, U,
                        Aqk, Tm, the chunks' entering states and Vn, stored by the forward's kernels; the
                        backward skips its intra-chunk kernel and first scan) or "inputs" (q, k, v, beta
                        only; the backward recomputes the rest into buffers of the same size while it
                        runs). "intermediates" holds 3 D + 2 C + D^2 / C more elements per token and head
                        between forward and backward at K = V = D: 6x the size of v at C = 64, D = 128.
                        Inference calls keep nothing either way
    output              where the forward's output O = scale Q h_c + Aqk Vn is computed: "fused" (in the
                        sequential scan), "separate" (the scan stores every chunk's entering state and Vn, and a
                        parallel kernel, chunk_output.py, computes O: the scan then holds no Q or Aqk tiles, so
                        at key dims above 128 wider V tiles fit two pipeline stages -- each V tile re-reads the
                        chunk's key-side tiles -- at the cost of the states' memory in inference too) or "auto"
                        (default): "separate" where that widens the scan's V tiles (16-bit, K > 128, enough
                        sequences x heads to fill the SMs with the wider tiles), else "fused". Measured on an
                        H200, bf16 forward kernel time (reports/h200-2026-11-29-s6/): K = 256, B x T = 8 x 2K,
                        H = 8: fused 905 us, separate 769 (output kernel 185 us; 132 since a chunk's V tiles
                        are neighbouring programs); 2 x 8K: 907 / 762 (32-wide); 1 x 16K: 923 / 1030
                        (16-wide either way); K = 128: fused faster (432 / 508 us at 8 x 2K)
    block_v_output, warps_output, stages_output
                        the separate output kernel's V tile (up to 256: one program per chunk and head at
                        V = 256), warps and stages (0: 64-wide, the fewest warps whose registers fit, two
                        stages where they fit)
    forward_scan        the scan of inference forwards (calls that keep nothing for a backward): "wu" (the
                        intra-chunk kernel writes W, U and Aqk, the scan reads them: chunk_state.py), "tm" (the
                        scan forms Vn = Tm diag(b) (V - K h) and Aqk from its own K, V, Q tiles and the inverse
                        kernel's Tm: no intra-chunk kernel, no W / U / Aqk round trip, a longer chain per chunk
                        step: chunk_scan_tm.py) or "auto" (default: "tm" in 16 bits at C = 64 where its automatic
                        V tile is at least TM_SCAN_MIN_BLOCK_V wide, unless output="separate"). A differentiated
                        call keeping its intermediates always runs "wu". H200, bf16 forward kernel time
                        (reports/h200-2026-11-29-s10/), wu -> tm: D = 64 8 x 2K 441 -> 331 us, 4 x 4K 436 ->
                        352, 2 x 8K 454 -> 438 (32-wide), 1 x 16K 520 -> 606 (16-wide); D = 128 8 x 2K 338 -> 278,
                        2 x 8K 394 -> 384, 1 x 16K 505 -> 566; D = 256 8 x 2K 551 -> 475, 1 x 16K 809 -> 798
    block_v_tm, warps_tm, stages_tm
                        the Tm scan's V tile, warps, stages (0: the widest tile <= 64 keeping 7/8 of the SMs
                        busy that fits the scan's fewest stages and 4 warps' registers, the deepest pipeline
                        that then fits, the fewest warps whose registers fit; 8 warps measured 1.3-2x slower
                        than 4 where 4 fit)
    scan_segments       G: the Tm scan cut into G segments per sequence (chunk_segments.py): the segments'
                        transition maps first (all in parallel), then their entering states, then the scan
                        of every segment at once -- G times the programs, 1/G of the chunk steps each, for the
                        price of the state chain over V + K columns for (G - 2) / G of the chunks and over V
                        columns for the first 1 / G (chunk_segments.py). 1: off;
                        0 (default): where the one-run scan's automatic tile would be 16 wide (K <= 128), the
                        smallest G whose 64-wide tiles keep FILL_FRACTION of the SMs busy, segments at least
                        MIN_SEGMENT_CHUNKS chunks, on fixed-length batches whose T is a multiple of G C; else 1
                        (the H200 figures: at MIN_SEGMENT_CHUNKS). Applies where the Tm scan runs
    block_summary, warps_summary, stages_summary
                        the segments' summary kernel's column tile (of [b | A], V + K wide), warps, stages
                        (0: up to SUMMARY_MAX_BLOCK wide, else as the Tm scan's automatic choices)
    tma                 the Tm scan's and the segment summaries' tiles through tensor descriptors (Hopper's
                        copy engine, TMA; chunk.py's ``tma_views`` says where they apply, elsewhere
                        pointers): "auto" (default: on CUDA devices of compute capability 9 and up, in
                        calls captured into a CUDA graph), "on" (every call; also in the interpreter) or
                        "off". H200, bf16 inference forward (reports/h200-2026-11-30-s13/): the scan 5-7 %
                        faster (D = 128 1 x 16K 134 -> 124 us, 4 x 4K 131 -> 122; D = 64 100 -> 93), the
                        summaries 9-13 % (D = 128 129 -> 118, D = 64 86 -> 75), but each call's host time
                        50-100 us longer (the descriptors are built and encoded at every launch) -- paid once
                        in a graph, so "auto" keeps pointers for calls launched one by one. The Gluon inverse
                        takes its keys through one too (whole-key tiles of whole chunks): 70.2 -> 67.8 us at
                        D = 128, 118.7 -> 114.8 at D = 64 (1 x 16K, reports/h200-2026-11-30-s16/)
    summary_order       the segment summaries' column tiles (chunk_segments.py): "kv" ([K, tile] of [b | A]), "vk"
                        (the transposed [tile, K]: the chain's operand always on the left, from registers; tiles
                        64 wide for the wgmma's 64 rows, at least SUMMARY_VK_STAGES stages) or "auto" (default:
                        "vk" at padded K = SUMMARY_VK_KEY_TILE in 16 bits at C = 64, where it was measured)
    scan_gluon          the Tm scan and its segment summaries in Gluon (chunk_scan_tm_gluon.py,
                        chunk_segments_gluon.py: the transposed state, the output's products issued
                        asynchronously beside the chain's, tiles through tensor descriptors): "auto" (default:
                        on compute capability 9 at K = 64 or 128, 16-bit, C = 64, V a multiple of 64,
                        fixed-length batches, in calls that take descriptors -- see tma), "on" (every call
                        where those shapes hold; refused elsewhere, with the reason) or "off". H200, bf16, with
                        descriptors: the scan 126 -> 91 us at D = 128 1 x 16K, 125 -> 93 at 4 x 4K
                        (reports/h200-2026-11-30-s15/); the summaries 87.5 -> 77.1 at D = 128 1 x 16K; at
                        D = 64 1 x 16K the scan 95.2 -> 83.8 and the summaries 74.6 -> 61.8, and all four
                        D = 64 shapes of the paper's grid 3-7 % faster in CUDA graphs
                        (reports/h200-2026-11-30-s16/)
    inverse_gluon       the inverse kernel in Gluon (chunk_inverse_gluon.py: its workspace in shared memory, the
                        block merges on the tensor cores in three tf32 passes -- float32's precision) in place
                        of the Triton one: "auto" (default: on CUDA GPUs of compute capability 9 -- where it was
                        measured -- for 16-bit inputs at chunk sizes 16-64, with at least 2 warps), "on" (compute
                        capability 8.0 or later; never in Triton's interpreter, which cannot run Gluon) or
                        "off". It serves the inference forward's Tm scan and inverse="kernel". H200, bf16,
                        T = 16K (reports/h200-2026-11-30-s14/): the inverse 110 -> 70 us at D = 128, 210 -> 118
                        at D = 64, 67 -> 53 at D = 256; the inference forward's kernels D = 128 1 x 16K 380 ->
                        345 us, D = 64 399 -> 312

``constraints`` rejects, before anything compiles, configs that cannot run: a tile larger than the
(power-of-two padded) dimension it tiles, or estimated shared memory / registers beyond the device's.
The shared-memory estimates follow ptxas for sm_90 (chunk_aot.py compiles without a GPU). With the
automatic settings every chunk size up to 64 runs every dtype and head dim; chunk 128 needs K <= 128 in
16-bit (the scans hold [128, K] tiles of W, Q and K per step, twice at K > 128 where they need two
stages: 468 KB at K = 256) and is mostly out of reach for float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .registry import Config, Problem

CHUNK_SIZES = (16, 32, 64, 128)
PRECISIONS = ("ieee", "tf32x3", "tf32")
_TILES = (0, 16, 32, 64, 128)
_WARPS = (0, 1, 2, 4, 8, 16)
_STAGES = (0, 1, 2, 3, 4)
_REGS = (0, 64, 80, 96, 128)

SPACE: dict[str, tuple] = {
    "chunk_size": CHUNK_SIZES,
    "input_precision": PRECISIONS,
    "block_intra": _TILES,
    "warps_intra": _WARPS,
    "stages_intra": _STAGES,
    "regs_intra": _REGS,
    "block_v": _TILES,
    "warps_state": _WARPS,
    "stages_state": _STAGES,
    "block_v_bwd": _TILES,
    "warps_state_bwd": _WARPS,
    "stages_state_bwd": _STAGES,
    "block_k_grads": _TILES,
    "block_v_grads": _TILES,
    "warps_grads": _WARPS,
    "stages_grads": _STAGES,
    "grads_keys": ("auto", "loop", "grid"),
    "block_wy": _TILES,
    "warps_wy": _WARPS,
    "stages_wy": _STAGES,
    "regs_wy": _REGS,
    "wy_inverse": ("recompute", "stored"),
    "inverse": ("workspace", "kernel", "registers"),
    "warps_inverse": _WARPS,
    "save_for_backward": ("intermediates", "inputs"),
    "output": ("auto", "fused", "separate"),
    "block_v_output": _TILES + (256,),
    "warps_output": _WARPS,
    "stages_output": _STAGES,
    "forward_scan": ("auto", "wu", "tm"),
    "block_v_tm": _TILES,
    "warps_tm": _WARPS,
    "stages_tm": _STAGES,
    "scan_segments": (0, 1, 2, 4, 8, 16, 32),
    "block_summary": _TILES,
    "warps_summary": _WARPS,
    "stages_summary": _STAGES,
    "tma": ("auto", "on", "off"),
    "inverse_gluon": ("auto", "on", "off"),
    "summary_order": ("auto", "kv", "vk"),
    "scan_gluon": ("auto", "on", "off"),
}

DEFAULT_CONFIG: Config = {key: 0 for key in SPACE}
DEFAULT_CONFIG.update(chunk_size=64, input_precision="ieee", wy_inverse="stored", inverse="kernel",
                      save_for_backward="intermediates", output="auto", grads_keys="auto",
                      forward_scan="auto", tma="auto", inverse_gluon="auto",
                      summary_order="auto", scan_gluon="auto")

# H100/H200: 132 SMs, 227 KB shared memory per block (opt-in); used when no CUDA device is visible
_DEFAULT_SMS = 132
_DEFAULT_SMEM = 232448
_MAX_REGS = 255  # 32-bit registers per thread


@functools.lru_cache(maxsize=None)
def device_limits() -> tuple[int, int]:
    """(SM count, shared memory bytes per block) of the current CUDA device, else H200 figures."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        smem = getattr(props, "shared_memory_per_block_optin", 0) or _DEFAULT_SMEM
        return props.multi_processor_count, int(smem)
    return _DEFAULT_SMS, _DEFAULT_SMEM


def padded(dim: int) -> int:
    """The power-of-two register tile covering ``dim`` (at least 16: tl.dot's minimum)."""
    return max(16, 1 << (dim - 1).bit_length())


@dataclass(frozen=True)
class Launch:
    """One kernel's tiles and launch settings."""

    block_k: int
    block_v: int
    warps: int
    stages: int
    max_regs: int = 0  # registers per thread the compiler may use (ptxas .maxnreg); 0: its own choice

    @property
    def options(self) -> dict:
        """Triton launch / compile options."""
        options = {"num_warps": self.warps, "num_stages": self.stages}
        if self.max_regs:
            options["maxnreg"] = self.max_regs
        return options


@dataclass(frozen=True)
class ChunkPlan:
    """Everything the launchers need, resolved from a config and a problem."""

    chunk_size: int
    precision: str
    key_tile: int  # padded K: the scans hold the whole key dimension of the state
    store_tm: bool  # backward: the intra-chunk recompute stores Tm for the WY kernel (wy_inverse="stored")
    inverse: str  # where the intra-chunk kernels get Tm: "workspace", "kernel" (chunk_inverse_kernel) or "registers"
    separate_output: bool  # output="separate": the forward scan stores states, chunk_output.py reads out
    intra: Launch
    state: Launch
    state_bwd: Launch
    grads: Launch
    wy: Launch
    output: Launch  # the separate output kernel's tiles (block_k x block_v), warps, stages
    inverse_kernel: Launch  # inverse="kernel": the inverse kernel's key tile (block_k), warps, stages
    grads_key_grid: bool  # a gradient program per key tile (grads_keys="grid", or "auto" where that is faster)
    tm_scan: bool  # inference forwards run chunk_scan_tm.py (forward_scan="tm", or "auto" where that is faster)
    scan_tm: Launch  # its V tile, warps, stages
    segments: int  # the Tm scan's segments per sequence (1: one run over the whole sequence)
    summary: Launch  # segments > 1: the summary kernel's column tile (block_v), warps, stages
    combine: Launch  # segments > 1: the combine's row block of A (block_k), V tile, warps
    combine_precision: str  # the combine's float32 products
    tma: str = "off"  # the Tm scan's and summaries' tiles through tensor descriptors: "on", "off", "auto" (in graphs)
    inverse_gluon: bool = False  # the inverse kernel's Gluon version (chunk_inverse_gluon.py) runs
    summary_order: str = "kv"  # the segment summaries' column tiles: "kv" ([K, tile]) or "vk" (transposed)
    scan_gluon: str = "off"  # the Tm scan in Gluon (chunk_scan_tm_gluon.py): "on", "off", "auto" (with descriptors)
    # the Triton inverse kernel's launch: inverse_kernel's where the Gluon inverse does not run, and its fallback
    # where the Gluon inverse cannot be built (fast_paths)
    triton_inverse: Optional[Launch] = None


def _pipelined(stages: int, tiles: list[int]) -> int:
    """Shared memory of a loop's dot operands: all of them stay resident, once per stage (checked against
    ptxas for sm_90: one stage does not share one buffer between them)."""
    return sum(tiles) * max(stages, 1)


def _levels(chunk_size: int) -> int:
    return (chunk_size // 16).bit_length() - 1  # merges 16 -> ... -> chunk_size


def _intra_needs(C: int, bk: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """(shared bytes, registers per thread) of the intra-chunk kernel (the A blocks load to registers;
    the pipelined operands are the q / k^T tiles of Aqk and the k / v tiles of W and U)."""
    loop = [isz * C * max(bk, bv)] * 2
    smem = _pipelined(stages, loop) + 2 * isz * C * C
    regs = 2.5 * C * C / (32 * warps)  # Tm, Aqk and the A blocks in float32
    return smem, regs


def _state_needs(C: int, BK: int, bv: int, isz: int, stages: int, warps: int, with_output: bool = True) -> tuple[int, float]:
    """Forward scan: W, Q, K^T, U and Aqk tiles per chunk step (W, K^T and U without the output); the state
    slice in registers, converted through shared memory for the tensor cores (16-bit inputs; float32
    products run on FMA units). Matches ptxas for sm_90 within ~5 %, e.g. bf16 K=256, C=64: 2 stages
    222 KB, 1 stage 116 KB."""
    loop = [isz * C * BK] * (3 if with_output else 2) + [isz * C * bv] + ([isz * C * C] if with_output else [])
    convert = isz * (BK * bv + C * bv) if isz < 4 else isz * C * bv
    smem = _pipelined(stages, loop) + convert
    # the float32 state, its input-dtype copy for the products, Vn / O, and the W / Q tiles: at K = 256
    # with 32-wide V tiles this asks for 8 warps (4 spill on sm_90)
    regs = (BK * bv * (1 + isz / 4) + 2 * C * bv + (2 if with_output else 1) * C * BK * isz / 4) / (32 * warps)
    return smem, regs


def _scan_tm_needs(C: int, BK: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """Inference scan with forward_scan="tm" (chunk_scan_tm.py): K, Q, V and Tm tiles per chunk step; the
    state, X, Vn and Aqk converted through shared memory for the tensor cores (16-bit inputs); in registers
    the float32 state and its copy, K h / O / Vn accumulators and Q K^T."""
    loop = [isz * C * BK] * 2 + [isz * C * bv, isz * C * C]
    convert = isz * (BK * bv + 2 * C * bv + C * C) if isz < 4 else isz * C * (bv + C)
    smem = _pipelined(stages, loop) + convert
    regs = (BK * bv * (1 + isz / 4) + 3 * C * bv + C * C) / (32 * warps)
    return smem, regs


def _summary_needs(C: int, BK: int, bn: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """The segments' summary kernel (chunk_segments.py): the Tm scan's state chain without Q and O -- K, V
    and Tm tiles per chunk step; the state and X, Vn through shared memory for the tensor cores."""
    loop = [isz * C * BK, isz * C * bn, isz * C * C]
    convert = isz * (BK * bn + 2 * C * bn) if isz < 4 else isz * C * bn
    smem = _pipelined(stages, loop) + convert
    regs = (BK * bn * (1 + isz / 4) + 2 * C * bn) / (32 * warps)
    return smem, regs


def _state_no_output_needs(C: int, BK: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """The forward scan without the output (output="separate", and the backward's recompute)."""
    return _state_needs(C, BK, bv, isz, stages, warps, with_output=False)


def _state_bwd_needs(C: int, BK: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """Reverse scan: Q^T, W^T, K, Aqk^T and dO tiles per chunk step (bf16 K=256, C=128: 240 KB)."""
    loop = [isz * C * BK] * 3 + [isz * C * bv, isz * C * C]
    convert = isz * (BK * bv + C * bv) if isz < 4 else isz * C * bv
    smem = _pipelined(stages, loop) + convert
    regs = (BK * bv + C * bv + C * BK * isz / 4) / (32 * warps)
    return smem, regs


def _inverse_needs(C: int, bk: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """Inverse kernel: the K tiles of K K^T per key step; A and the growing Tm blocks in registers."""
    smem = _pipelined(stages, [isz * C * bk]) + 4 * C * C
    regs = 2 * C * C / (32 * warps)
    return smem, regs


def _output_needs(C: int, bk: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    """Separate output kernel: Q and state tiles per key step, then the Aqk and Vn tiles; O in registers."""
    loop = [isz * C * bk, isz * bk * bv]
    smem = _pipelined(stages, loop) + isz * (C * C + C * bv)
    regs = (C * bv + (C * C + C * bv) * isz / 4) / (32 * warps)
    return smem, regs


def _grads_needs(C: int, bk: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    loop = [isz * C * bv] * 3 + [isz * bk * bv] * 2
    smem = _pipelined(stages, loop) + isz * (C * C + 2 * C * bk)
    regs = (3 * C * bk + C * C) / (32 * warps)
    return smem, regs


def _wy_needs(C: int, bk: int, bv: int, isz: int, stages: int, warps: int) -> tuple[int, float]:
    loop = [isz * C * max(bk, bv)] * 2 + [4 * C * bk]  # dW/dU, k/v and the float32 partial dK
    smem = _pipelined(stages, loop) + isz * 2 * C * C  # Tm and dA as dot operands
    regs = (3 * C * C + 2 * C * bk) / (32 * warps)
    return smem, regs


def _auto_warps(needs, C: int, bk: int, bv: int, isz: int, least: int) -> int:
    """The fewest warps (>= ``least``, of 4, 8, 16) whose register estimate fits; 16 if none does."""
    for warps in (4, 8, 16):
        if warps >= least and needs(C, bk, bv, isz, 1, warps)[1] <= _MAX_REGS:
            return warps
    return 16


def _auto_stages(needs, C: int, bk: int, bv: int, isz: int, warps: int) -> int:
    """Two stages (prefetch the next tile) when they fit in shared memory, else one."""
    _, smem_limit = device_limits()
    return 2 if needs(C, bk, bv, isz, 2, warps)[0] <= smem_limit else 1


# The scans' automatic pipeline depth. A scan step waits on its chunk's W / K / Q tiles (L2 or HBM latency);
# prefetching more steps ahead hides it. On an H200 (bf16 forward scan, D = 128, 1 x 16K;
# reports/h200-2026-11-29-s7/): the automatic 16-wide tile 472 us at 2 stages, 279 at 3 (this rule);
# 32-wide 503 at 2 (s6), 327 at 3; without the output, 64-wide tiles 551 us at 2 stages, 395 at 4. The
# tuner had already picked 3-4 stages for D = 64 (1.08-1.38x over the 2-stage default).
# Where the programs take several waves even at two stages, they may as well run one program per SM at
# the deepest pipeline that fits: K = 256, bf16, 4 x 4K forward scan without the output (256 programs of
# 32-wide tiles, one per SM either way) 323 us at 2 stages, 223 at 3 (reports/h200-2026-11-29-s8/).
MAX_SCAN_STAGES = 4


def _scan_stages(needs, C: int, bk: int, bv: int, isz: int, warps: int, programs: int) -> int:
    """The deepest pipeline (<= MAX_SCAN_STAGES) that fits shared memory with as many of the scan's
    ``programs`` resident at once as two stages would allow (where they outnumber the SMs, several
    share one SM's shared memory: a deeper pipeline must not push some into a further wave); else
    ``_auto_stages``' choice."""
    sms, smem_limit = device_limits()
    resident = max(1, min(-(-programs // sms), smem_limit // needs(C, bk, bv, isz, 2, warps)[0]))
    for stages in range(MAX_SCAN_STAGES, 2, -1):
        if resident * needs(C, bk, bv, isz, stages, warps)[0] <= smem_limit:
            return stages
    return _auto_stages(needs, C, bk, bv, isz, warps)


# At key tiles above 128 the 16-bit scans fault at one pipeline stage on an H200 (triton 3.6.0, "an illegal
# memory access", K = V = 256: the forward scan storing states with stages_state=1, the reverse scan with
# stages_state_bwd=1, 16-wide V tiles each; the same calls at two stages match "recurrent";
# reports/h200-2026-11-29-s4/). The earlier 32-wide-tile faults (s3) were one-stage plans too: 32-wide
# tiles do not fit two stages there. Such scans get two stages, and explicit one-stage configs are
# refused. float32 runs its scans at K > 128 at one stage (two do not fit): 16-wide, checked on an H200 (s5).
WIDE_KEY_TILE = 128
WIDE_KEY_MIN_STAGES = 2


def scan_min_stages(key_tile: int, itemsize: int) -> int:
    """The fewest pipeline stages a scan may run with (see WIDE_KEY_TILE)."""
    return WIDE_KEY_MIN_STAGES if key_tile > WIDE_KEY_TILE and itemsize < 4 else 1


# The automatic scan tile: the widest whose programs keep at least this share of the SMs busy. Each V tile
# re-reads the chunk's key-side tiles, so one nearly full wave of wide tiles beats two waves of narrow
# ones: on an H200 (bf16 forward scan; reports/h200-2026-11-29-s6/) 128 programs of 32-wide tiles took
# 272 us where 256 of 16-wide took 470 (D = 128, 2 x 8K), 64-wide 170 against 32-wide 272 (4 x 4K), and
# at K = 256 (2 x 8K, separate output) 32-wide 319 against 16-wide 598; half the SMs (64 programs) lost:
# 503 us against 480 (D = 128, 1 x 16K). At key tiles above WIDE_KEY_TILE a tile must fit one stage more
# than the scan's fewest (two): at K = 256, C = 64 a 64-wide tile fits two stages only, a 32-wide one
# three (bf16, 4 x 4K, without the output: 64-wide 268 us, 32-wide at 3 stages 223;
# reports/h200-2026-11-29-s8/).
FILL_FRACTION = 7 / 8


def _auto_block_v(num_programs_per_tile: int, value_tile: int, key_tile: int, fits, wide_keys_widen: bool = False) -> int:
    """The widest V tile (<= 64) whose programs still keep FILL_FRACTION of the SMs busy and fits
    (``fits(block)``: shared memory at the stages the caller asks for); 16 at least, and 16 at key tiles above
    WIDE_KEY_TILE unless ``wide_keys_widen`` (16-bit scans without the output: wider tiles fit two stages
    there; with the output they fit one stage only -- a fault in 16-bit -- and float32 runs one stage,
    unchecked on a GPU beyond 16-wide tiles)."""
    if key_tile > WIDE_KEY_TILE and not wide_keys_widen:
        return min(16, value_tile)
    sms, _ = device_limits()
    for block in (64, 32):
        if block <= value_tile and num_programs_per_tile * -(-value_tile // block) >= FILL_FRACTION * sms and fits(block):
            return block
    return min(16, value_tile)


# scan_segments=0 (_auto_segments). Segments pay where the one-run Tm scan is starved (16-wide tiles, a
# few programs per SM, 256 steps each): H200, bf16 inference forward at B = 1, T = 16K, kernel time
# (reports/h200-2026-11-29-s11/): D = 128 508 us (W/U scan; one-run Tm scan 569) -> 445 at G = 4 (inverse
# 110, summaries 156, combine 10, scan 170 -- the scan as fast as at B = 4), 457 at 8, 495 at 16, 583 at 2;
# D = 64 522 -> 478 (G = 4), 473 (8), 468 (16). Where the one-run tiles are 32+ wide they lose: D = 128
# 2 x 8K 384 -> 448 (G = 4), 4 x 4K 282 -> 381 (G = 2), D = 64 2 x 8K 441 -> 457; and at K = 256 (B = 1
# 801 -> 938 at G = 16: the summaries 294 us, the combine 143 re-reading the 256 x 256 maps per V tile).
# Each segment at least this many chunks (its summary's steps amortise the combine and launch)
MIN_SEGMENT_CHUNKS = 8


def _auto_segments(problem: Problem, chunk_size: int, whole_block_v: int) -> int:
    """The Tm scan's automatic segment count (see scan_segments): 1 unless the one-run scan's automatic V
    tile (``whole_block_v``) is 16 wide at K <= WIDE_KEY_TILE; then the fewest segments whose 64-wide tiles
    keep FILL_FRACTION of the SMs busy, each at least MIN_SEGMENT_CHUNKS whole chunks."""
    if problem.varlen or problem.T % chunk_size or whole_block_v > 16 or padded(problem.K) > WIDE_KEY_TILE:
        return 1
    sms, _ = device_limits()
    tiles = -(-padded(problem.V) // 64)
    chunks, segments = problem.T // chunk_size, 1
    while (problem.num_seqs * problem.H * segments * tiles < FILL_FRACTION * sms and chunks % (2 * segments) == 0
           and chunks // (2 * segments) >= MIN_SEGMENT_CHUNKS):
        segments *= 2
    return segments


# the summaries' automatic column tile at most this wide: H200, bf16, B = 1, T = 16K, G = 4 (s11), 64 -> 32
# wide: the summary kernel 156 -> 144 us at D = 128, 124 -> 116 at D = 64
SUMMARY_MAX_BLOCK = 32
# summary_order "vk" (the transposed tile, chunk_segments.py): "auto" takes it at this padded K in 16 bits, with
# 64-wide tiles (the wgmma's 64 rows; narrower ones fall back to mma_v2 -- kept even where few programs would
# want narrower tiles to fill the SMs) and at least 3 stages. H200, bf16, D = 128, B = 1, T = 16K, G = 4, with
# descriptors (reports/h200-2026-11-30-s15/): the summaries 117 -> 86 us (2 stages: 105, 32-wide: 222); through
# pointers 130 -> 127; at D = 64 74 -> 76, so "kv" stays there
SUMMARY_VK_KEY_TILE = 128
SUMMARY_VK_BLOCK = 64
SUMMARY_VK_STAGES = 3


# the combine's V tile, row block of A and warps: G - 2 small steps per (sequence, head, V tile). Its
# float32 products in 16 bits: tf32 -- the chain of states it continues rounds them to the input dtype at
# every chunk step, no finer than tf32's 10-bit mantissa; three-pass tf32 spilled at K = 256 (ptxas, sm_90).
# Stages: Triton's default, what the H200 figures ran with
COMBINE_BLOCK_V = 16
COMBINE_BLOCK_ROWS = 64
COMBINE_WARPS = 8
COMBINE_STAGES = 3
COMBINE_PRECISION_16BIT = "tf32"


# forward_scan="auto" takes the Tm scan where its automatic V tile is at least this wide: with 16-wide tiles
# (few sequences x heads) its longer chain per chunk step costs more than the intra-chunk kernel it saves
TM_SCAN_MIN_BLOCK_V = 32


def resolve_plan(config: Config, problem: Problem) -> ChunkPlan:
    """Concrete tiles, warps and stages for ``problem`` (0 = automatic choices resolved here). Memoised:
    every call of the op resolves its plan twice (constraints, then the launch) forward and backward,
    which was a third of the op's host time."""
    return _resolve_plan(tuple(sorted(config.items())), problem)


def constraints(config: Config, problem: Problem) -> Optional[str]:
    """Why ``config`` cannot run ``problem`` (None when it can): checked before anything compiles."""
    return _constraints(tuple(sorted(config.items())), problem)


@functools.lru_cache(maxsize=1024)
def _resolve_plan(items: tuple, problem: Problem) -> ChunkPlan:
    config = dict(items)
    C = config["chunk_size"]
    BK, BV = padded(problem.K), padded(problem.V)
    isz = problem.itemsize
    least = 8 if C >= 128 else 4  # [C, C] float32 tiles of 128 x 128 want 8 warps
    # (warps: the fewest whose register estimate fits, at least ``fewest``: the kernels holding [C, C]
    # float32 tiles spilled at 4 warps from C = 64 on, measured with ptxas for sm_90 -- the intra-chunk
    # kernel still does; the gradient and WY kernels fit 4 in the cases noted at them)

    def launch(needs, bk: int, bv: int, warps_key: str, stages_key: Optional[str], fewest: int = least,
               min_stages: int = 1, scan_programs: int = 0) -> Launch:
        """``stages_key`` None: the stages are always the automatic choice; ``scan_programs``: a scan's
        program count (its automatic stages: ``_scan_stages``)."""
        warps = config[warps_key] or _auto_warps(needs, C, bk, bv, isz, fewest)
        auto = (_scan_stages(needs, C, bk, bv, isz, warps, scan_programs) if scan_programs
                else _auto_stages(needs, C, bk, bv, isz, warps))
        stages = (config[stages_key] if stages_key else 0) or max(min_stages, auto)
        return Launch(bk, bv, warps, stages)

    block = config["block_intra"] or (64 if C <= 64 else 32)
    intra = replace(launch(_intra_needs, min(block, BK), min(block, BV), "warps_intra", "stages_intra", 8 if C >= 64 else 4),
                    max_regs=config["regs_intra"])
    programs = problem.num_seqs * problem.H
    _, smem_limit = device_limits()

    scan_stages = scan_min_stages(BK, isz)

    def scan_block_v(key: str, needs, wide_keys_widen: bool = False) -> int:
        fit_stages = scan_stages + (BK > WIDE_KEY_TILE)  # see FILL_FRACTION
        return config[key] or _auto_block_v(
            programs, BV, BK, lambda bv: needs(C, BK, bv, isz, fit_stages, 4)[0] <= smem_limit, wide_keys_widen)

    # output="auto": separate where the scan without the output gets wider V tiles than the 16 the fused scan
    # is held to at wide 16-bit key tiles
    separate = config["output"] == "separate" or (
        config["output"] == "auto" and BK > WIDE_KEY_TILE and isz < 4
        and scan_block_v("block_v", _state_no_output_needs, True) > 16)
    state_needs = _state_no_output_needs if separate else _state_needs
    # the scans' warps: the fewest whose registers fit (4 in 16 bits). At K = 256, 8 warps (ptxas for sm_90:
    # 181 -> 130 registers) measured slower on an H200 (bf16, reports/h200-2026-11-29-s9/): forward scan
    # 224 -> 298 us at 4 x 4K (64-wide at 8: 273), reverse scan 673 -> 823 at 2 x 8K
    block_v = scan_block_v("block_v", state_needs, separate and isz < 4)
    state = launch(state_needs, BK, block_v, "warps_state", "stages_state", min_stages=scan_stages,
                   scan_programs=programs * -(-BV // block_v))
    block_v_bwd = scan_block_v("block_v_bwd", _state_bwd_needs)
    state_bwd = launch(_state_bwd_needs, BK, block_v_bwd, "warps_state_bwd", "stages_state_bwd",
                       min_stages=scan_stages, scan_programs=programs * -(-BV // block_v_bwd))
    # grads tiles: the widest (<= 64) that fit at one stage
    grads_tiles = next(
        (block for block in (64, 32, 16) if _grads_needs(C, min(BK, block), min(BV, block), isz, 1, 8)[0] <= smem_limit),
        16,
    )
    # 16-bit, C = 64, K <= 128: 4 warps (two programs per SM; at 8, 158-170 registers x 256 threads leave
    # room for one) and at K = 128 32-wide key tiles (64-wide spill at 4 warps). H200, bf16 fwd+bwd, 1 x 16K
    # (reports/h200-2026-11-29-s8/): D = 64 372 -> 211 us, D = 128 421 -> 371 (4 warps, 32 x 32 tiles: 508);
    # at K = 256 8 warps and 64-wide stay (566 us; 4 warps, 32-wide key tiles: 610)
    narrow_grads = isz < 4 and C == 64 and BK <= 128
    # a program per key tile: measured faster only at K = 128 in 16 bits (see grads_keys), where each
    # program's single 64-wide key tile fits 4 warps (ptxas for sm_90: 228 registers, no spills)
    key_grid = config["grads_keys"] == "grid" or (config["grads_keys"] == "auto" and narrow_grads and BK == 128)
    grads_key_tiles = min(grads_tiles, 32) if narrow_grads and BK > 64 and not key_grid else grads_tiles
    grads = launch(_grads_needs, config["block_k_grads"] or min(BK, grads_key_tiles),
                   config["block_v_grads"] or min(BV, grads_tiles), "warps_grads", "stages_grads",
                   4 if narrow_grads or C < 64 else 8)
    # the WY backward holds Tm^T, dTm and dA ([C, C]) beside its tiles: 64-wide tiles spill at K or V = 256.
    # Its warps in 16 bits: the fewest the register estimate allows -- 4 at C = 64 (two programs per SM;
    # ptxas for sm_90: 250-255 registers at D = 64-128, no spills; float32 spills more at 4 than at 8).
    # H200, bf16 fwd+bwd (reports/h200-2026-11-29-s8/): the kernel 409 -> 239 us at D = 128 1 x 16K and
    # 551 -> 297 at D = 256 2 x 8K against 8 warps
    block = config["block_wy"] or (64 if C <= 64 and max(BK, BV) <= 128 else 32)
    wy = replace(launch(_wy_needs, min(block, BK), min(block, BV), "warps_wy", "stages_wy",
                        fewest=4 if isz < 4 or C < 64 else 8),
                 max_regs=config["regs_wy"])
    # the separate output kernel: parallel and memory-bound; 64-wide key steps
    output = launch(_output_needs, min(BK, 64), config["block_v_output"] or min(BV, 64), "warps_output",
                    "stages_output", fewest=4)
    # inverse="kernel": the inverse alone, 4 warps where its registers fit (more programs per SM)
    inverse = launch(_inverse_needs, min(BK, 64), 16, "warps_inverse", None, fewest=4)
    # the inference forward's Tm scan (forward_scan). Its automatic tile must also fit 4 warps' registers:
    # 8 warps measured slower, and at K = 256 the 64-wide tile spills at 8 (ptxas for sm_90: 255 registers,
    # 216 bytes; 32-wide at 4 warps: 219, none; the same time on an H200)

    def auto_block_v_tm(scan_programs: int) -> int:
        return _auto_block_v(scan_programs, BV, BK, lambda bv: _scan_tm_needs(C, BK, bv, isz, scan_stages, 4)[0]
                             <= smem_limit and _scan_tm_needs(C, BK, bv, isz, 1, 4)[1] <= _MAX_REGS, True)

    segments = config["scan_segments"] or _auto_segments(problem, C, config["block_v_tm"] or auto_block_v_tm(programs))
    block_v_tm = config["block_v_tm"] or auto_block_v_tm(programs * segments)
    # "auto": the Tm scan in 16 bits at C = 64 where its V tiles are at least 32 wide, never with an explicit
    # separate output (see forward_scan)
    tm_scan = config["forward_scan"] == "tm" or (
        config["forward_scan"] == "auto" and config["output"] != "separate" and isz < 4 and C == 64
        and block_v_tm >= TM_SCAN_MIN_BLOCK_V)
    scan_tm = launch(_scan_tm_needs, BK, block_v_tm, "warps_tm", "stages_tm", min_stages=scan_stages,
                     scan_programs=programs * segments * -(-BV // block_v_tm))
    # the segments' summaries: columns of [b | A] (V + K) for all segments but the last of each sequence
    # (at most SUMMARY_MAX_BLOCK wide, SUMMARY_VK_BLOCK transposed; a column tile lies within b or within A)
    summaries = programs * (segments - 1)
    summary_order = config["summary_order"]
    if summary_order == "auto":
        summary_order = "vk" if BK == SUMMARY_VK_KEY_TILE and isz < 4 and C == 64 else "kv"
    vk = summary_order == "vk"
    block_summary = config["block_summary"] or (min(SUMMARY_VK_BLOCK, BV, BK) if vk else min(
        SUMMARY_MAX_BLOCK, BV, BK, _auto_block_v(
            summaries, BV + BK, BK, lambda bn: _summary_needs(C, BK, bn, isz, scan_stages, 4)[0] <= smem_limit
            and _summary_needs(C, BK, bn, isz, 1, 4)[1] <= _MAX_REGS, True)))
    summary = launch(_summary_needs, BK, block_summary, "warps_summary", "stages_summary",
                     min_stages=max(scan_stages, SUMMARY_VK_STAGES if vk else 1),
                     scan_programs=summaries * (-(-BV // block_summary) + -(-BK // block_summary)))
    # the inverse kernel's Gluon version (inverse_gluon) takes its own key tile and register cap
    gluon = config["inverse_gluon"] == "on" or (
        config["inverse_gluon"] == "auto" and gluon_inverse_fits(problem, C, inverse.warps) is None
        and _gluon_gpu(problem.device, measured=True) is None)
    triton_inverse = inverse
    if gluon:
        inverse = gluon_inverse_launch(inverse, BK)
    # the Tm scan's Gluon version (its own launch: GLUON_SCAN_*; scan_tm stays the Triton scan's, which runs where
    # the Gluon one does not take the call)
    scan_gluon = "off"
    if tm_scan and config["scan_gluon"] == "on":
        scan_gluon = "on"
    elif (tm_scan and config["scan_gluon"] == "auto" and gluon_scan_fits(problem, C) is None
          and _wgmma_gpu(problem.device) is None):
        scan_gluon = "auto"  # where the call takes descriptors (tma)
    return ChunkPlan(C, config["input_precision"], BK, config["wy_inverse"] == "stored", config["inverse"],
                     separate, intra, state, state_bwd, grads, wy, output, inverse, key_grid, tm_scan, scan_tm,
                     segments if tm_scan else 1, summary,
                     Launch(min(COMBINE_BLOCK_ROWS, BK), COMBINE_BLOCK_V, COMBINE_WARPS, COMBINE_STAGES),
                     config["input_precision"] if isz == 4 else COMBINE_PRECISION_16BIT,
                     tma=config["tma"] if config["tma"] != "auto" or _has_tma(problem.device) else "off",
                     inverse_gluon=gluon, summary_order=summary_order, scan_gluon=scan_gluon,
                     triton_inverse=triton_inverse)


# chunk sizes the Gluon inverse covers (16 x 16 diagonal blocks, one to four of them)
GLUON_INVERSE_CHUNKS = (16, 32, 64)
# up to this padded K, its key tile is the whole key (fewer barriers between the loads and the products) under
# a register cap of GLUON_INVERSE_MAX_REGS (four programs per SM instead of three; ptxas for sm_90: no spills).
# H200, bf16, T = 16K, with its warps in a 2-column grid (reports/h200-2026-11-30-s14/, call 8): the inverse
# 80 -> 71 us at D = 128, 124 -> 119 at D = 64 against 64-wide key tiles, no cap and a 1-column grid. At
# K = 256 whole-key tiles take 237 registers and the cap spills: 64-wide tiles, uncapped (162 registers)
GLUON_INVERSE_BLOCK_K = 128
GLUON_INVERSE_MAX_REGS = 128


# the Tm scan in Gluon (scan_gluon, chunk_scan_tm_gluon.py): one warpgroup on 64-wide V tiles (the wgmma's
# 64 rows), three chunks of tiles in flight -- two stages measured 104 -> 131 us at D = 128 on an H200 (its
# loads stream q, k, v and Tm at close to the memory's bandwidth). Session 15 measured it slower at D = 64
# (94 -> 102 us) and "auto" left it at K = 128; session 16, with the kernel as it is, faster there (95 -> 84)
GLUON_SCAN_BLOCK_V = 64
GLUON_SCAN_STAGES = 3
# its segment summaries (chunk_segments_gluon.py): 64 columns a program, one warpgroup. H200, bf16, 1 x 16K with
# descriptors (reports/h200-2026-11-30-s16/): 87.5 -> 77.1 us against the Triton ones at D = 128, 74.6 -> 61.8 at
# D = 64; 128 columns on two warpgroups (80 programs, one per SM, instead of 160) took 89.4 at D = 128
GLUON_SUMMARY_BLOCK = 64


def gluon_scan_fits(problem: Problem, chunk_size: int) -> Optional[str]:
    """Why the Gluon Tm scan (chunk_scan_tm_gluon.py) cannot take ``problem`` at ``chunk_size``, or None (it
    also needs tensor descriptors: chunk.tma_fits, checked at the launch)."""
    if problem.itemsize != 2:
        return f"16-bit inputs (its products are wgmma on 16-bit operands), not {problem.dtype}"
    if chunk_size != 64:
        return f"chunk_size=64, not {chunk_size}"
    if problem.K not in (64, 128):
        return f"K in (64, 128) (whole-key tiles, 16-row wgmma atoms), not K={problem.K}"
    if problem.V % GLUON_SCAN_BLOCK_V:
        return f"V a multiple of {GLUON_SCAN_BLOCK_V}, not V={problem.V}"
    if problem.varlen:
        return "fixed-length batches (packed sequences have no whole-chunk descriptor tiles)"
    if problem.T % chunk_size:
        return f"T a multiple of chunk_size={chunk_size} (descriptor tiles of whole chunks), not T={problem.T}"
    return None


def gluon_inverse_launch(inverse: Launch, key_tile: int) -> Launch:
    """The Gluon inverse's launch from the Triton inverse's (``inverse``: its warps, and its key tile above
    GLUON_INVERSE_BLOCK_K) at padded K ``key_tile``."""
    if key_tile > GLUON_INVERSE_BLOCK_K:
        return inverse
    return replace(inverse, block_k=key_tile, max_regs=GLUON_INVERSE_MAX_REGS)


def gluon_inverse_fits(problem: Problem, chunk_size: int, warps: int) -> Optional[str]:
    """Why the Gluon inverse (chunk_inverse_gluon.py) cannot take ``problem`` at ``chunk_size`` with ``warps``
    warps, or None."""
    if problem.itemsize != 2:
        return f"16-bit inputs (its key products are mma_v2 on 16-bit operands), not {problem.dtype}"
    if chunk_size not in GLUON_INVERSE_CHUNKS:
        return f"chunk_size in {GLUON_INVERSE_CHUNKS}, not {chunk_size}"
    if warps < 2:
        return f"at least 2 warps (its merges split the warps over two columns), not warps_inverse={warps}"
    return None


def _gpu_capability(device: str) -> Optional[tuple[int, int]]:
    """The compute capability of the GPU that ``device`` (a Problem's device type) runs on; None where that is
    no visible CUDA GPU (the interpreter's CPU tensors, a machine without one)."""
    if device != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def _gluon_gpu(device: str, measured: bool = False) -> Optional[str]:
    """Why Gluon kernels cannot run on ``device`` (a Problem's device type), or None: they need a CUDA GPU of
    compute capability 8.0 or later (``measured``: 9, where the Gluon inverse was measured faster), and
    Triton's interpreter does not run them."""
    capability = _gpu_capability(device)
    if capability is None:
        return f"a CUDA GPU (Triton's interpreter does not run Gluon kernels), not device {device!r}"
    least = 9 if measured else 8
    if capability[0] < least:
        return f"compute capability {least}.0 or later, this GPU has {capability[0]}.{capability[1]}"
    return None


def _wgmma_gpu(device: str) -> Optional[str]:
    """Why Hopper's warpgroup MMA (the Gluon Tm scan) cannot run on ``device``, or None: compute capability 9
    exactly (Blackwell has other tensor-core instructions), never in Triton's interpreter."""
    capability = _gpu_capability(device)
    if capability is None:
        return f"a CUDA GPU (Triton's interpreter does not run Gluon kernels), not device {device!r}"
    if capability[0] != 9:
        return f"compute capability 9.x (Hopper's warpgroup MMA), this GPU has {capability[0]}.{capability[1]}"
    return None


def _has_tma(device: str) -> bool:
    """Whether ``device`` (a Problem's device type) has Hopper's tensor memory accelerator."""
    capability = _gpu_capability(device)
    return capability is not None and capability[0] >= 9


@functools.lru_cache(maxsize=1024)
def _constraints(items: tuple, problem: Problem) -> Optional[str]:
    config = dict(items)
    BK, BV = padded(problem.K), padded(problem.V)
    for key, limit, what in (
        ("block_intra", max(BK, BV), f"max(K, V) padded to {max(BK, BV)}"),
        ("block_wy", max(BK, BV), f"max(K, V) padded to {max(BK, BV)}"),
        ("block_v", BV, f"V={problem.V} padded to {BV}"),
        ("block_v_bwd", BV, f"V={problem.V} padded to {BV}"),
        ("block_v_output", BV, f"V={problem.V} padded to {BV}"),
        ("block_v_tm", BV, f"V={problem.V} padded to {BV}"),
        ("block_summary", min(BK, BV), f"min(K, V) padded to {min(BK, BV)}"),
        ("block_k_grads", BK, f"K={problem.K} padded to {BK}"),
        ("block_v_grads", BV, f"V={problem.V} padded to {BV}"),
    ):
        if config.get(key, 0) > limit:
            return f"tile {key}={config[key]} exceeds {what}"
    scan_stages = scan_min_stages(BK, problem.itemsize)
    if config.get("forward_scan") == "tm" and config.get("output") == "separate":
        return ('forward_scan="tm" computes the output in its scan; output="separate" needs forward_scan="wu" '
                'or "auto"')
    # (without a visible GPU, as device_limits, nothing is known against it)
    capability = _gpu_capability(problem.device)
    if config.get("tma") == "on" and capability is not None and capability[0] < 9:
        return (f'tma="on": tensor descriptors need compute capability 9.0 or later (Hopper), this GPU has '
                f'{capability[0]}.{capability[1]}; use tma="auto" or "off"')
    if config.get("inverse_gluon") == "on":
        plan = resolve_plan(config, problem)
        reason = gluon_inverse_fits(problem, plan.chunk_size, plan.inverse_kernel.warps) or _gluon_gpu(problem.device)
        if reason:
            return f'inverse_gluon="on": the Gluon inverse needs {reason}; use inverse_gluon="auto" or "off"'
    if config.get("scan_gluon") == "on":
        plan = resolve_plan(config, problem)
        reason = (None if plan.tm_scan else "the Tm scan (forward_scan='tm' or 'auto' where it runs)") or (
            gluon_scan_fits(problem, plan.chunk_size) or _wgmma_gpu(problem.device))
        if reason:
            return f'scan_gluon="on": the Gluon Tm scan needs {reason}; use scan_gluon="auto" or "off"'
    for key in ("stages_state", "stages_state_bwd", "stages_tm", "stages_summary"):
        if 0 < config.get(key, 0) < scan_stages:
            return (f"{key}={config[key]} with K={problem.K} > {WIDE_KEY_TILE} in 16-bit: the scans fault on an "
                    f"H200 below {scan_stages} pipeline stages at such key dims; use {scan_stages}+ (or 0)")
    plan = resolve_plan(config, problem)
    C, isz = plan.chunk_size, problem.itemsize
    segments = config.get("scan_segments", 0)
    if segments > 1:
        if not plan.tm_scan:
            return (f"scan_segments={segments} splits the Tm scan, which this config does not run "
                    f"(forward_scan={config.get('forward_scan')!r}); use forward_scan='tm' or scan_segments=0/1")
        if problem.varlen:
            return f"scan_segments={segments}: packed sequences (cu_seqlens) are not split; use 0 or 1"
        if problem.T % (segments * C):
            return (f"scan_segments={segments}: T={problem.T} is not a multiple of scan_segments x chunk_size = "
                    f"{segments * C}")
    _, smem_limit = device_limits()
    # (what, plan field, resource estimate) of every kernel the plan launches
    checks = [
        ("intra-chunk kernel", "intra", _intra_needs),
        ("state scan", "state", _state_no_output_needs if plan.separate_output else _state_needs),
        ("reverse state scan", "state_bwd", _state_bwd_needs),
        ("gradient kernel", "grads", _grads_needs),
        ("WY backward", "wy", _wy_needs),
    ]
    if plan.separate_output:
        checks.append(("output kernel", "output", _output_needs))
    if plan.tm_scan:
        checks.append(("inference scan (forward_scan='tm')", "scan_tm", _scan_tm_needs))
    if plan.segments > 1:
        checks.append(("segment summary kernel (scan_segments)", "summary", _summary_needs))
    if plan.inverse == "kernel" or plan.tm_scan:
        checks.append(("inverse kernel", "inverse_kernel", _inverse_needs))
    for name, suffix, needs in checks:
        launch = getattr(plan, suffix)
        smem, regs = needs(C, launch.block_k, launch.block_v, isz, launch.stages, launch.warps)
        if smem > smem_limit:
            fewest = scan_stages if suffix in ("state", "state_bwd", "scan_tm", "summary") else 1
            lower = "tiles or chunk_size" if launch.stages <= fewest else "stages, tiles or chunk_size"
            return (
                f"{name} needs ~{smem // 1024} KB shared memory (chunk_size={C}, stages={launch.stages}, "
                f"tiles {launch.block_k}x{launch.block_v}) > {smem_limit // 1024} KB; lower {lower}"
            )
        if regs > _MAX_REGS:
            return (
                f"{name} needs ~{int(regs)} registers per thread with {launch.warps} warps (chunk_size={C}, "
                f"tiles {launch.block_k}x{launch.block_v}) > {_MAX_REGS}; use more warps or smaller tiles"
            )
    return None
