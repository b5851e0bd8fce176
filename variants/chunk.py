"""Variant "chunk": the chunkwise WY algorithm (UT transform) as Triton kernels, forward and backward.

Forward, two kernels (../shared/deltanet.md):
  1. chunk_intra.py  -- per (chunk, head), in parallel: A, Tm = (I + A)^{-1} in float32, W, U and
                        Aqk = scale (Q K^T) (.) M, stored in the input dtype.
  2. chunk_state.py  -- per (V tile, sequence, head), sequential over chunks: Vn = U - W h,
                        O = scale Q h + Aqk Vn, h <- h + K^T Vn (state in float32 registers).
With output="separate" the scan stores h_c and Vn instead of computing O, and a third kernel
(chunk_output.py) computes O for all chunks in parallel. Inference forwards with forward_scan="tm" run
chunk_inverse_kernel (Tm; chunk_inverse_gluon.py on Hopper) and chunk_scan_tm.py, which applies Tm inside
the scan: no W, U or Aqk (chunk_scan_tm_gluon.py on Hopper at K = 128, in calls that take tensor
descriptors: scan_gluon); with few sequences x heads that scan runs on segments of the sequences from their
entering states (chunk_segments.py, scan_segments).
Backward, five kernels. What the backward needs from the forward -- W, U, Aqk, Tm, every chunk's entering
state h_c and Vn -- the forward keeps when the call will be differentiated (save_for_backward=
"intermediates", the default: the forward's kernels also store Tm, h_c and Vn, and stages 1-2 below are
skipped); with "inputs" the op keeps only q, k, v, beta and the initial state and the backward recomputes
them (the least memory; the peer's choice):
  1. chunk_intra.py again (W, U, Aqk; with wy_inverse="stored" also Tm, for stage 5);
  2. chunk_state.py storing every chunk's entering state h_c and Vn (no output);
  3. chunk_backward_state.py -- reverse scan: dh per chunk, dVn (= dU), the initial state's gradient;
  4. chunk_backward_grads.py -- per chunk: dQ, dK (partial), dW;
  5. chunk_backward_wy.py    -- per chunk: back through the UT transform: dK, dV, dbeta (its own
                                inverse, or the stored Tm).

Packed batches (cu_seqlens, B == 1): chunks never straddle sequences; the host builds the per-chunk
token ranges and each sequence's first chunk index from cu_seqlens. Launch settings: chunk_config.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from .chunk_backward_grads import chunk_grads_kernel
from .chunk_backward_state import chunk_state_bwd_kernel
from .chunk_backward_wy import chunk_wy_bwd_kernel
from .chunk_config import (
    DEFAULT_CONFIG, GLUON_SCAN_BLOCK_V, GLUON_SCAN_STAGES, GLUON_SUMMARY_BLOCK, SPACE, ChunkPlan, constraints,
    device_limits, resolve_plan,
)
from .chunk_intra import chunk_intra_fwd_kernel, chunk_inverse_kernel
from .chunk_output import chunk_output_kernel
from .chunk_scan_tm import chunk_scan_tm_kernel
from .chunk_segments import chunk_segment_combine_kernel, chunk_segment_summary_kernel
from .chunk_state import chunk_state_fwd_kernel
from . import fast_paths
from .common import triton_devices
from .registry import Problem, delta_rule_cost, register


@dataclass(frozen=True)
class ChunkLayout:
    """Where the chunks are: ``num_chunks`` over all sequences; for packed batches ``chunk_table``
    (int32 [num_chunks, 2] of flat token ranges) and ``chunk_offsets`` (int32 [N], first chunk of each
    sequence); None for fixed-length batches, whose chunks the kernels compute."""

    num_seqs: int
    num_chunks: int
    chunk_table: Optional[torch.Tensor]
    chunk_offsets: Optional[torch.Tensor]


def chunk_layout(batch: int, seq_len: int, cu_seqlens: Optional[torch.Tensor], chunk_size: int, device) -> ChunkLayout:
    """The chunks of a call (see ``ChunkLayout``); packed batches read cu_seqlens on the host."""
    if cu_seqlens is None:
        return ChunkLayout(batch, batch * triton.cdiv(seq_len, chunk_size), None, None)
    bounds = cu_seqlens.tolist()
    table, offsets = [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        offsets.append(len(table) // 2)
        for chunk_start in range(start, end, chunk_size):
            table += [chunk_start, min(chunk_start + chunk_size, end)]
    num_chunks = len(table) // 2
    chunk_table = torch.tensor(table or [0, 0], dtype=torch.int32, device=device).view(-1, 2)
    chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
    return ChunkLayout(len(offsets), num_chunks, chunk_table, chunk_offsets)


def _problem(q: torch.Tensor, v: torch.Tensor, layout: ChunkLayout, varlen: bool) -> Problem:
    B, T, H, K = q.shape
    return Problem(B=B, T=T, H=H, K=K, V=v.shape[-1], dtype=q.dtype, num_seqs=layout.num_seqs, varlen=varlen,
                   device=q.device.type)


# Programs per SM of the persistent per-chunk kernels: enough resident programs to hide each one's
# barrier and load latency; their workspaces (programs x C x C float32) stay small enough for L2. A multiple
# of how many fit an SM at once (ptxas for sm_90, 16 bits: the inverse kernel 3, the intra-chunk kernel 3-4,
# the WY kernel 2): the programs start in order as others end, so with 8 where 3 fit, the last of three
# rounds runs two thirds full. H200, bf16 (.ci/probes/programs_per_sm.py, reports/h200-2026-11-29-s9/):
# 8 -> 12 took the inverse kernel 221 -> 208 us at D = 64, 119 -> 110 at D = 128; the WY kernel unchanged.
PROGRAMS_PER_SM = 12


def persistent_grid(num_tiles: int, chunk_size: int, device, workspace: bool) -> tuple[int, torch.Tensor]:
    """(programs, workspace) of a persistent per-chunk kernel (intra-chunk, WY backward): at most
    PROGRAMS_PER_SM programs per SM walk the ``num_tiles`` tiles; each owns a float32 [C, C] workspace
    (``workspace``: the inverse goes through it; else a placeholder the kernels never read)."""
    sms, _ = device_limits()
    programs = max(1, min(num_tiles, sms * PROGRAMS_PER_SM))
    shape = (programs, chunk_size, chunk_size) if workspace else (1,)
    return programs, torch.empty(shape, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Intermediates:
    """What the backward needs from the forward, all in the input dtype: W [B,T,H,K], U and Vn [B,T,H,V],
    Aqk and Tm [B,T,H,C] (Tm only with wy_inverse="stored"), the chunks' entering states
    [num_chunks,H,K,V]; views into one flat buffer (the op's residual)."""

    w: torch.Tensor
    u: torch.Tensor
    aqk: torch.Tensor
    tm: Optional[torch.Tensor]
    states: torch.Tensor
    v_new: torch.Tensor

    @staticmethod
    def shapes(plan: ChunkPlan, layout: ChunkLayout, B: int, T: int, H: int, K: int, V: int) -> dict:
        C = plan.chunk_size
        return dict(w=(B, T, H, K), u=(B, T, H, V), aqk=(B, T, H, C), tm=(B, T, H, C) if plan.store_tm else None,
                    states=(layout.num_chunks, H, K, V), v_new=(B, T, H, V))

    @classmethod
    def allocate(cls, plan, layout, q, v, buffer: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, "Intermediates"]:
        """(flat buffer, views into it): a new buffer, or ``buffer`` (a forward's residual) viewed again."""
        B, T, H, K = q.shape
        shapes = cls.shapes(plan, layout, B, T, H, K, v.shape[-1])
        sizes = {name: (0 if shape is None else math.prod(shape)) for name, shape in shapes.items()}
        total = sum(sizes.values())
        if buffer is None:
            buffer = torch.empty(total, dtype=q.dtype, device=q.device)
        elif buffer.numel() != total or buffer.dtype != q.dtype:
            raise ValueError(
                f"residual: expected {total} elements of {q.dtype} (the forward's intermediates for this config "
                f"and shape), got {buffer.numel()} of {buffer.dtype}; was it made by another config?")
        views, offset = {}, 0
        for name, shape in shapes.items():
            views[name] = None if shape is None else buffer[offset:offset + sizes[name]].view(shape)
            offset += sizes[name]
        return buffer, cls(**views)


def _intra(plan: ChunkPlan, layout: ChunkLayout, q, k, v, beta, scale: float,
           tm_out: Optional[torch.Tensor] = None, out: Optional[Intermediates] = None):
    """Stage 1: W [B,T,H,K], U [B,T,H,V], Aqk [B,T,H,C] in the input dtype (and Tm into ``tm_out``,
    [B,T,H,C], when given); into ``out``'s buffers when given."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = plan.chunk_size
    if out is not None:
        w, u, aqk = out.w, out.u, out.aqk
    else:
        w = torch.empty_like(k)
        u = torch.empty_like(v)
        aqk = torch.empty(B, T, H, C, dtype=k.dtype, device=k.device)
    if layout.num_chunks:
        num_tiles = layout.num_chunks * H
        is_varlen = layout.chunk_table is not None
        inverse, tm = plan.inverse, tm_out
        if inverse == "kernel":  # Tm first, by a kernel of its own; the intra-chunk kernel reads it
            tm = _inverse(plan, layout, k, beta, tm)
            inverse = "load"
        launch = plan.intra
        programs, scratch = persistent_grid(num_tiles, C, k.device, inverse == "workspace")
        chunk_intra_fwd_kernel[(programs,)](
            q, k, v, beta, w, u, aqk, tm, scratch, layout.chunk_table, T, scale, num_tiles,
            H=H, K=K, V=V, C=C, BLOCK_K=launch.block_k, BLOCK_V=launch.block_v,
            IS_VARLEN=is_varlen, PRECISION=plan.precision, INV_PRECISION=plan.precision,
            STORE_TM=tm is not None and inverse != "load", INVERSE=inverse, **launch.options,
        )
    return w, u, aqk


def _inverse(plan: ChunkPlan, layout: ChunkLayout, k, beta, tm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Tm [B,T,H,C] (into ``tm`` when given) in the input dtype, by chunk_inverse_kernel."""
    B, T, H, K = k.shape
    C = plan.chunk_size
    if tm is None:
        tm = torch.empty(B, T, H, C, dtype=k.dtype, device=k.device)
    num_tiles = layout.num_chunks * H
    is_varlen = layout.chunk_table is not None
    if plan.inverse_gluon and fast_paths.run(
            "inverse_gluon", lambda: _inverse_gluon(plan, layout, k, beta, tm, num_tiles, is_varlen)):
        return tm
    launch = plan.triton_inverse
    programs, scratch = persistent_grid(num_tiles, C, k.device, True)
    chunk_inverse_kernel[(programs,)](
        k, beta, tm, scratch, layout.chunk_table, T, num_tiles, H=H, K=K, C=C, BLOCK_K=launch.block_k,
        IS_VARLEN=is_varlen, PRECISION=plan.precision, INV_PRECISION=plan.precision, **launch.options,
    )
    return tm


def _inverse_gluon(plan: ChunkPlan, layout: ChunkLayout, k, beta, tm, num_tiles: int, is_varlen: bool) -> None:
    """Tm by chunk_inverse_gluon.py: its workspace in shared memory (plan.inverse_gluon)."""
    from .chunk_inverse_gluon import chunk_inverse_gluon_kernel

    T, H, K = k.shape[1:]
    C = plan.chunk_size
    launch = plan.inverse_kernel
    # (12 programs per SM where 4 fit, as the Triton kernels: 8 or 4 measured no faster)
    programs, _ = persistent_grid(num_tiles, C, k.device, False)
    keys = _inverse_key_descriptor(plan, k, is_varlen, launch.block_k)
    chunk_inverse_gluon_kernel[(programs,)](
        k if keys is None else keys, beta, tm, layout.chunk_table, T, num_tiles, H=H, K=K, C=C,
        BLOCK_K=launch.block_k, IS_VARLEN=is_varlen, NUM_WARPS=launch.warps, TMA=keys is not None,
        **launch.options,
    )


def _inverse_key_descriptor(plan: ChunkPlan, k: torch.Tensor, varlen: bool, key_tile: int):
    """The Gluon inverse's keys as a descriptor of k's [B T, H K] view with [C, K] blocks where the call takes
    descriptors (plan.tma, ``_descriptors_wanted``) and they tile whole chunks with whole keys (fixed-length
    sequences of whole chunks, a key tile of all K, 16-byte aligned rows); else None (the kernel loads them
    through pointers)."""
    T, K = k.shape[1], k.shape[-1]
    if not _descriptors_wanted(plan) or key_tile != K or not tma_fits(plan, T, varlen, [(K, K)]):
        return None
    views = _gluon_descriptors(plan, [(k, K)])
    return None if views is None else views[0]


def _scan_tm(plan: ChunkPlan, layout: ChunkLayout, cu_seqlens, q, k, v, beta, scale: float, initial_state,
             output: torch.Tensor, final_state: Optional[torch.Tensor]) -> None:
    """The inference forward with forward_scan="tm": Tm by the inverse kernel, then chunk_scan_tm.py writes
    ``output`` (and ``final_state`` when given); with plan.segments > 1 the scan runs on segments from
    their entering states (chunk_segments.py)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    tm = _inverse(plan, layout, k, beta)
    segments = plan.segments
    if segments > 1:
        initial_state = _segment_states(plan, layout, k, v, beta, tm, initial_state)
    launch = plan.scan_tm
    C = plan.chunk_size
    BK = plan.key_tile
    if plan.scan_gluon != "off" and fast_paths.run("scan_gluon", lambda: _scan_gluon(
            plan, layout, q, k, v, beta, tm, output, initial_state, final_state, scale, segments)):
        return

    def scan(tiles: Optional[list]) -> None:
        """chunk_scan_tm_kernel on (q, k, v, Tm, output) descriptors, or on the tensors themselves (None)."""
        q_, k_, v_, tm_, output_ = tiles or (q, k, v, tm, output)
        chunk_scan_tm_kernel[(triton.cdiv(V, launch.block_v), layout.num_seqs * segments * H)](
            q_, k_, v_, beta, tm_, output_, initial_state, final_state, cu_seqlens, layout.chunk_offsets,
            T // segments, scale, H=H, K=K, V=V, C=C, BLOCK_K=BK, BLOCK_V=launch.block_v,
            HAS_H0=initial_state is not None, STORE_HT=final_state is not None, IS_VARLEN=cu_seqlens is not None,
            PRECISION=plan.precision, SEGMENTS=segments, TMA=tiles is not None, **launch.options,
        )

    _launch_tiled(scan, plan, cu_seqlens, [(q, BK), (k, BK), (v, launch.block_v), (tm, C), (output, launch.block_v)])


def _launch_tiled(launch, plan: ChunkPlan, cu_seqlens, tensors: list) -> None:
    """``launch(tiles)`` on tensor descriptors of ``tensors`` where they apply (tma_views) and the "tma" fast path
    builds; else ``launch(None)``, on the tensors themselves."""
    def with_descriptors() -> bool:
        tiles = tma_views(plan, cu_seqlens, tensors)
        if tiles is None:
            return False
        launch(tiles)
        return True

    if not fast_paths.run("tma", with_descriptors):
        launch(None)


def _scan_gluon(plan: ChunkPlan, layout: ChunkLayout, q, k, v, beta, tm, output, initial_state, final_state,
                scale: float, segments: int) -> bool:
    """The Tm scan by chunk_scan_tm_gluon.py where plan.scan_gluon takes the call (``_gluon_views``); False
    (nothing launched) elsewhere, and the Triton scan runs."""
    T, H, K = k.shape[1:]
    V = v.shape[-1]
    C, BV = plan.chunk_size, GLUON_SCAN_BLOCK_V
    views = _gluon_views(plan, [(q, K), (k, K), (v, BV), (tm, C), (output, BV)])
    if views is None:
        return False
    from .chunk_scan_tm_gluon import chunk_scan_tm_gluon_kernel

    chunk_scan_tm_gluon_kernel[(triton.cdiv(V, BV), layout.num_seqs * segments * H)](
        *views, beta, initial_state, final_state, T // segments, scale, H=H, K=K, V=V, C=C, BLOCK_V=BV,
        HAS_H0=initial_state is not None, STORE_HT=final_state is not None, SEGMENTS=segments,
        STAGES=GLUON_SCAN_STAGES, num_warps=4,
    )
    return True


def _gluon_views(plan: ChunkPlan, tensors: list) -> Optional[list]:
    """``_gluon_descriptors`` of (tensor, tile width) pairs where plan.scan_gluon takes the call ("on", or "auto"
    where the call takes descriptors: ``_descriptors_wanted``); else None."""
    if plan.scan_gluon == "off" or (plan.scan_gluon == "auto" and not _descriptors_wanted(plan)):
        return None
    return _gluon_descriptors(plan, tensors)


def _gluon_descriptors(plan: ChunkPlan, tensors: list) -> Optional[list]:
    """Gluon tensor descriptors -- carrying their shared-memory layouts -- of (tensor, tile width) pairs as
    tma_views makes them, or None where a tensor's base or rows are not 16-byte aligned."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .chunk_scan_tm_gluon import tile_layout

    flats = _aligned_views([tensor for tensor, _ in tensors])
    if flats is None:
        return None
    return [GluonDescriptor.from_tensor(flat, [plan.chunk_size, width],
                                        tile_layout(tensor.dtype, plan.chunk_size, width))
            for flat, (tensor, width) in zip(flats, tensors)]


def _descriptors_wanted(plan: ChunkPlan) -> bool:
    """Whether this call takes tensor descriptors (plan.tma: "on", or "auto" inside a CUDA graph capture)."""
    return plan.tma == "on" or (plan.tma == "auto" and torch.cuda.is_current_stream_capturing())


def tma_views(plan: ChunkPlan, cu_seqlens, tensors: list) -> Optional[list]:
    """Tensor descriptors (Hopper's copy engine, TMA) for [B, T, H, D] tensors read or written a chunk of rows
    by one head's column tile at a time: ``tensors`` holds (tensor, tile width) pairs; each descriptor views its
    tensor as [B T, H D] with [C, width] blocks. None where they do not apply -- plan.tma "off", or "auto"
    outside a CUDA graph capture (the descriptors cost host time at every launch, see chunk_config's tma),
    packed sequences, T not whole chunks, a width not dividing D (a tile would read the next head's columns)
    or a base or row not 16-byte aligned -- and the kernels take pointers."""
    T = tensors[0][0].shape[1]
    widths = [(t.shape[-1], width) for t, width in tensors]
    if not _descriptors_wanted(plan) or not tma_fits(plan, T, cu_seqlens is not None, widths):
        return None
    flats = _aligned_views([tensor for tensor, _ in tensors])
    if flats is None:
        return None
    return [TensorDescriptor.from_tensor(flat, [plan.chunk_size, width]) for flat, (_, width) in zip(flats, tensors)]


def _aligned_views(tensors: list) -> Optional[list]:
    """The [B T, H D] views of [B, T, H, D] tensors that descriptors tile, or None where any one's base or rows
    are not 16-byte aligned (the copy engine's unit)."""
    flats = [tensor.reshape(tensor.shape[0] * tensor.shape[1], -1) for tensor in tensors]
    if any(flat.data_ptr() % 16 or (flat.stride(0) * flat.element_size()) % 16 for flat in flats):
        return None
    return flats


def tma_fits(plan: ChunkPlan, T: int, varlen: bool, widths: list) -> bool:
    """Whether [C, width] descriptor blocks tile whole chunks of one head's columns: fixed-length sequences of
    whole chunks, and each width (``widths``: (D, width) pairs) dividing its D. Shared with chunk_aot, which
    compiles the descriptor variants without tensors at hand."""
    return not varlen and T % plan.chunk_size == 0 and all(D % width == 0 for D, width in widths)


def _segment_states(plan: ChunkPlan, layout: ChunkLayout, k, v, beta, tm, initial_state) -> torch.Tensor:
    """float32 [B G, H, K, V]: the state entering each of the G segments of every sequence (chunk_segments.py:
    the segments' summaries, then their combine from ``initial_state``)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    segments = plan.segments
    summaries = B * (segments - 1)
    seg_values = torch.empty(summaries, H, K, V, dtype=torch.float32, device=k.device)
    seg_transitions = torch.empty(summaries, H, K, K, dtype=torch.float32, device=k.device)
    BK = plan.key_tile
    launch = plan.summary

    def summarise(tiles: Optional[list]) -> None:
        """chunk_segment_summary_kernel on (k, v, Tm) descriptors, or on the tensors themselves (None)."""
        k_, v_, tm_ = tiles or (k, v, tm)
        chunk_segment_summary_kernel[(triton.cdiv(V, launch.block_v) + triton.cdiv(K, launch.block_v), summaries * H)](
            k_, v_, beta, tm_, initial_state, seg_values, seg_transitions, T // segments,
            SEGMENTS=segments, H=H, K=K, V=V, C=plan.chunk_size, BLOCK_K=BK, BLOCK_N=launch.block_v,
            HAS_H0=initial_state is not None, PRECISION=plan.precision, TMA=tiles is not None,
            TRANSPOSED=plan.summary_order == "vk", **launch.options,
        )

    if not (plan.scan_gluon != "off" and fast_paths.run("summary_gluon", lambda: _summaries_gluon(
            plan, k, v, beta, tm, initial_state, seg_values, seg_transitions, segments))):
        _launch_tiled(summarise, plan, None, [(k, BK), (v, launch.block_v), (tm, plan.chunk_size)])
    seg_h0 = torch.empty(B * segments, H, K, V, dtype=torch.float32, device=k.device)
    combine = plan.combine
    chunk_segment_combine_kernel[(triton.cdiv(V, combine.block_v), B * H)](
        initial_state, seg_values, seg_transitions, seg_h0,
        SEGMENTS=segments, H=H, K=K, V=V, BLOCK_K=BK, BLOCK_ROWS=combine.block_k, BLOCK_V=combine.block_v,
        HAS_H0=initial_state is not None, PRECISION=plan.combine_precision, **combine.options,
    )
    return seg_h0


def _summaries_gluon(plan: ChunkPlan, k, v, beta, tm, initial_state, seg_values, seg_transitions,
                     segments: int) -> bool:
    """The segment summaries by chunk_segments_gluon.py wherever the Gluon scan takes the call
    (``_gluon_views``); False (nothing launched) elsewhere, and the Triton summaries run."""
    T, H, K = k.shape[1:]
    V = v.shape[-1]
    BN = GLUON_SUMMARY_BLOCK  # divides V and K where the Gluon scan runs (chunk_config.gluon_scan_fits)
    views = _gluon_views(plan, [(k, K), (v, BN), (tm, plan.chunk_size)])
    if views is None:
        return False
    from .chunk_segments_gluon import chunk_segment_summary_gluon_kernel

    chunk_segment_summary_gluon_kernel[(V // BN + K // BN, seg_values.shape[0] * H)](
        *views, beta, initial_state, seg_values, seg_transitions, T // segments,
        SEGMENTS=segments, H=H, K=K, V=V, C=plan.chunk_size, BLOCK_N=BN, HAS_H0=initial_state is not None,
        STAGES=GLUON_SCAN_STAGES, NUM_WARPS=BN // 16, num_warps=BN // 16,
    )
    return True


def _scan(plan: ChunkPlan, layout: ChunkLayout, cu_seqlens, q, k, w, u, aqk, scale: float, initial_state,
          *, output: Optional[torch.Tensor], final_state: Optional[torch.Tensor],
          states: Optional[torch.Tensor], v_new: Optional[torch.Tensor]) -> None:
    """Stage 2 (forward scan): writes whichever of ``output``, ``final_state``, ``states`` and ``v_new``
    are given (``states`` and ``v_new`` go together)."""
    B, T, H, K = k.shape
    V = u.shape[-1]
    launch = plan.state
    grid = (triton.cdiv(V, launch.block_v), layout.num_seqs * H)
    chunk_state_fwd_kernel[grid](
        q, k, w, u, aqk, output, initial_state, final_state, states, v_new, cu_seqlens, layout.chunk_offsets, T, scale,
        H=H, K=K, V=V, C=plan.chunk_size, BLOCK_K=plan.key_tile, BLOCK_V=launch.block_v,
        HAS_H0=initial_state is not None, STORE_HT=final_state is not None, COMPUTE_O=output is not None,
        STORE_STATES=states is not None, IS_VARLEN=cu_seqlens is not None, PRECISION=plan.precision,
        **launch.options,
    )


def _contiguous(*tensors):
    """The kernels index dense [B*T, H, D] rows: direct callers (not through the op) may pass views."""
    return [None if x is None else x.contiguous() for x in tensors]


def chunk_forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size,
                  keep_residuals=None):
    """(o, final_state), the registry's contract; given ``keep_residuals`` (the op passes it), (o,
    final_state, residual): a flat buffer of ``Intermediates`` when it is True and config
    save_for_backward="intermediates", else None."""
    o, final_state, residual = _forward(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, config,
                                        bool(keep_residuals))
    return (o, final_state) if keep_residuals is None else (o, final_state, residual)


def _forward(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, config, keep_residuals):
    q, k, v, beta, initial_state = _contiguous(q, k, v, beta, initial_state)
    B, T, H, K = k.shape
    V = v.shape[-1]
    layout = chunk_layout(B, T, cu_seqlens, config["chunk_size"], q.device)
    plan = resolve_plan(config, _problem(q, v, layout, cu_seqlens is not None))
    final_state = (
        torch.empty(layout.num_seqs, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    )
    o = torch.empty_like(v)
    if T == 0:
        if final_state is not None:
            final_state.copy_(initial_state if initial_state is not None else torch.zeros_like(final_state))
        return o, final_state, None
    residual, states, v_new = None, None, None
    keep = keep_residuals and config["save_for_backward"] == "intermediates"
    if plan.tm_scan and not keep:  # nothing kept for a backward: the scan that applies Tm itself
        _scan_tm(plan, layout, cu_seqlens, q, k, v, beta, scale, initial_state, o, final_state)
        return o, final_state, None
    if keep:
        residual, kept = Intermediates.allocate(plan, layout, q, v)
        w, u, aqk = _intra(plan, layout, q, k, v, beta, scale, tm_out=kept.tm, out=kept)
        states, v_new = kept.states, kept.v_new
    else:
        w, u, aqk = _intra(plan, layout, q, k, v, beta, scale)
        if plan.separate_output:
            states = torch.empty(layout.num_chunks, H, K, V, dtype=q.dtype, device=q.device)
            v_new = torch.empty_like(v)
    _scan(plan, layout, cu_seqlens, q, k, w, u, aqk, scale, initial_state,
          output=None if plan.separate_output else o, final_state=final_state, states=states, v_new=v_new)
    if plan.separate_output:
        _output(plan, layout, q, aqk, states, v_new, o, scale)
    return o, final_state, residual


def _output(plan: ChunkPlan, layout: ChunkLayout, q, aqk, states, v_new, o, scale: float) -> None:
    """Stage 3 with output="separate": O from the stored chunk states and Vn, all chunks in parallel."""
    B, T, H, K = q.shape
    V = o.shape[-1]
    launch = plan.output
    chunk_output_kernel[(layout.num_chunks * triton.cdiv(V, launch.block_v), H)](
        q, aqk, states, v_new, o, layout.chunk_table, T, scale,
        H=H, K=K, V=V, C=plan.chunk_size, BLOCK_K=launch.block_k, BLOCK_V=launch.block_v,
        IS_VARLEN=layout.chunk_table is not None, PRECISION=plan.precision, **launch.options,
    )


def chunk_backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config, block_size,
                   residual=None):
    """Gradients; ``residual``: the forward's kept intermediates (then stages 1-2 are skipped) or None."""
    q, k, v, beta, initial_state, do, dfinal_state = _contiguous(q, k, v, beta, initial_state, do, dfinal_state)
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = config["chunk_size"]
    layout = chunk_layout(B, T, cu_seqlens, C, q.device)
    plan = resolve_plan(config, _problem(q, v, layout, cu_seqlens is not None))
    is_varlen = cu_seqlens is not None
    dh0 = None if initial_state is None else torch.empty_like(initial_state, dtype=torch.float32)
    if T == 0 or layout.num_chunks == 0:
        if dh0 is not None:
            dh0.copy_(dfinal_state if dfinal_state is not None else torch.zeros_like(dh0))
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(beta), dh0

    # B1, B2: W, U, Aqk (and Tm), every chunk's entering state (input dtype, as the products use it) and
    # Vn -- kept by the forward, or recomputed
    _, kept = Intermediates.allocate(plan, layout, q, v, residual)
    if residual is None:
        _intra(plan, layout, q, k, v, beta, scale, tm_out=kept.tm, out=kept)
        _scan(plan, layout, cu_seqlens, q, k, kept.w, kept.u, kept.aqk, scale, initial_state,
              output=None, final_state=None, states=kept.states, v_new=kept.v_new)
    w, aqk, tm, states, v_new = kept.w, kept.aqk, kept.tm, kept.states, kept.v_new

    # B3: reverse scan
    dstates = torch.empty_like(states)
    dv_new = torch.empty_like(v)
    launch = plan.state_bwd
    chunk_state_bwd_kernel[(triton.cdiv(V, launch.block_v), layout.num_seqs * H)](
        q, k, w, aqk, do, dfinal_state, dh0, dstates, dv_new, cu_seqlens, layout.chunk_offsets, T, scale,
        H=H, K=K, V=V, C=C, BLOCK_K=plan.key_tile, BLOCK_V=launch.block_v,
        HAS_DHT=dfinal_state is not None, STORE_DH0=dh0 is not None, IS_VARLEN=is_varlen, PRECISION=plan.precision,
        **launch.options,
    )

    # B4: dQ, partial dK, dW per chunk
    dq = torch.empty_like(q)
    dk_partial = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dw = torch.empty_like(k)
    launch = plan.grads
    key_programs = triton.cdiv(K, launch.block_k) if plan.grads_key_grid else 1
    chunk_grads_kernel[(layout.num_chunks, H, key_programs)](
        q, k, v_new, dv_new, do, states, dstates, dq, dk_partial, dw, layout.chunk_table, T, scale,
        H=H, K=K, V=V, C=C, BLOCK_K=launch.block_k, BLOCK_V=launch.block_v, IS_VARLEN=is_varlen,
        PRECISION=plan.precision, KEY_GRID=plan.grads_key_grid, **launch.options,
    )

    # B5: back through the UT transform
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    launch = plan.wy
    register_inverse = plan.inverse == "registers"
    programs, scratch = persistent_grid(layout.num_chunks * H, C, k.device, tm is None and not register_inverse)
    chunk_wy_bwd_kernel[(programs,)](
        k, v, beta, dw, dv_new, dk_partial, dk, dv, dbeta, tm, scratch, layout.chunk_table, T, layout.num_chunks * H,
        H=H, K=K, V=V, C=C, BLOCK_K=launch.block_k, BLOCK_V=launch.block_v, IS_VARLEN=is_varlen,
        PRECISION=plan.precision, INV_PRECISION=plan.precision, LOAD_TM=tm is not None,
        REGISTER_INVERSE=register_inverse, **launch.options,
    )
    return dq, dk, dv, dbeta, dh0


def _cost(problem: Problem, config: dict):
    return delta_rule_cost(problem, config["chunk_size"])


register(
    "chunk",
    backward=chunk_backward,
    description="chunkwise WY (UT transform) in Triton: intra-chunk kernel + state scan with fused output",
    keeps_residuals=True,
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    devices=triton_devices(),
    min_head_dim=16,
    max_head_dim=256,
    varlen=True,
    space=SPACE,
    default_config=DEFAULT_CONFIG,
    constraints=constraints,
    cost=_cost,
    is_triton=True,
)(chunk_forward)
