"""The inference forward's scan with forward_scan="tm": the scan applies the UT transform itself.

W and U (chunk_intra.py) are both Tm diag(b) times a chunk tile, so (../shared/deltanet.md)

    Vn = U - W h_c = Tm diag(b) (V - K h_c)

and the scan needs only K, V, b and Tm (chunk_inverse_kernel's, in the input dtype) where the other form
(chunk_state.py) reads W, U and Aqk from the intra-chunk kernel. Per chunk, for V tile program_id(0) of
(sequence, head) program_id(1), the state slice h [K, BLOCK_V] in float32 registers:

    X       = diag(b) (V - K h_c)                 [C, BLOCK_V]   rounded to the input dtype
    Vn      = Tm X                                [C, BLOCK_V]   rounded to the input dtype
    O       = scale Q h_c + Aqk Vn                [C, BLOCK_V]   Aqk = scale (Q K^T) (.) M from the same tiles
    h_{c+1} = h_c + K^T Vn

One K tile serves K h_c, Q K^T and K^T Vn. The forward then runs two kernels (inverse, this scan) and
writes nothing but O (and the final state): no W, U or Aqk round trip through memory, at the price of a
third product on the scan's chain (Tm X, [C, C] x [C, BLOCK_V]) and Q K^T recomputed by every V tile.
A differentiated call keeps W, U and Aqk for its backward, so it runs the other form.

Aqk written by the inverse kernel instead (from the K tiles it loads anyway) measured slower on an H200:
the scan gained 4-7 % but the inverse kernel, at 198 registers a thread instead of 165, fits two programs
per SM instead of three: bf16 forward D = 64 8 x 2K 328 -> 388 us, D = 256 4 x 4K 475 -> 487
(reports/h200-2026-11-29-s10/).

beta is loaded one chunk ahead by hand: its 16-bit values, H apart, cannot go through cp.async, so Triton's
pipeliner leaves their load in the loop, and the wait for it held 24 % of this scan's warp stall samples in
Nsight Compute; prefetched, the scan on segments took 171 -> 132 us at D = 128, B = 1, T = 16K, the one-run scan
170 -> 129 at B = 4, T = 4K. Storing Tm diag(b) from the inverse kernel instead gained the same in the scan but cost
the inverse kernel 26 us there (reports/h200-2026-11-30-s12/).

With TMA (config tma, chunk.py's ``tma_views``) the q, k, v, Tm and O tiles move through tensor descriptors:
the copy engine fetches a whole [C, width] tile per request, where cp.async needed per-thread addresses and
masks (ptxas for sm_90: the loop 875 -> 810 instructions). H200, bf16: the scan 134 -> 124 us at D = 128,
B = 1, T = 16K (reports/h200-2026-11-30-s13/), for host time at every launch -- so by default only in CUDA
graphs. There, at K = 128, its Gluon version runs instead (chunk_scan_tm_gluon.py, config scan_gluon: 126 -> 91 us).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_state import scan_tile, state_tile


@triton.jit
def chunk_scan_tm_kernel(
    q, k, v, beta, tm, o, h0, ht, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
    SEGMENTS: tl.constexpr = 1, TMA: tl.constexpr = False,
):
    """O of V tile program_id(0) of (sequence, head) program_id(1); BLOCK_K >= K (one key tile). With
    SEGMENTS > 1 (chunk_segments.py) each "sequence" is one of SEGMENTS segments of a real one, h0 holds
    every segment's entering state, and only a sequence's last segment stores the final state. With TMA,
    q, k, v, tm and o are tensor descriptors of their [B T, H D] views (``tma_views``: whole chunks, K =
    BLOCK_K, V a multiple of BLOCK_V), whose tiles the copy engine moves: no per-element addresses or masks."""
    head, start, end, first_chunk, num_chunks, dk, dv, kmask, vmask, state_offs, state_mask, state_base = scan_tile(
        cu_seqlens, chunk_offsets, T, H, K, V, C, BLOCK_K, BLOCK_V, IS_VARLEN
    )
    state = state_tile(h0, state_base, state_offs, state_mask, BLOCK_K, BLOCK_V, HAS_H0)
    rows = tl.arange(0, C)
    causal = rows[:, None] >= rows[None, :]
    beta_next = tl.load(beta + (start + rows) * H + head, mask=start + rows < end, other=0.0)
    value_col = head * V + tl.program_id(0) * BLOCK_V  # with TMA: the V tile's first column in the [B T, H V] view

    for c in range(num_chunks):
        tok = start + c * C + rows
        tmask = tok < end
        b = beta_next.to(tl.float32)
        beta_next = tl.load(beta + (tok + C) * H + head, mask=tok + C < end, other=0.0)  # used one chunk on
        key_mask = tmask[:, None] & kmask[None, :]
        value_mask = tmask[:, None] & vmask[None, :]
        if TMA:
            row = (start + c * C).to(tl.int32)
            k_tile = k.load([row, head * K])
            q_tile = q.load([row, head * K])
            v_tile = v.load([row, value_col])
            tm_tile = tm.load([row, head * C])
        else:
            k_tile = tl.load(k + (tok * H + head)[:, None] * K + dk[None, :], mask=key_mask, other=0.0)
            q_tile = tl.load(q + (tok * H + head)[:, None] * K + dk[None, :], mask=key_mask, other=0.0)
            v_tile = tl.load(v + (tok * H + head)[:, None] * V + dv[None, :], mask=value_mask, other=0.0)
            # rows past the sequence's end load as zeros: Tm is lower triangular, so valid rows never meet them
            tm_tile = tl.load(tm + (tok * H + head)[:, None] * C + rows[None, :], mask=tmask[:, None], other=0.0)

        dtype = k_tile.dtype
        state_op = state.to(dtype)
        k_state = tl.dot(k_tile, state_op, input_precision=PRECISION)  # [C, BLOCK_V]
        x = ((v_tile.to(tl.float32) - k_state) * b[:, None]).to(dtype)
        v_new = tl.dot(tm_tile, x, input_precision=PRECISION).to(dtype)
        # off the chain from one chunk's state to the next: Aqk and the inter-chunk part of O
        qk = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION)
        aqk_tile = tl.where(causal, qk * scale, 0.0).to(dtype)
        out = tl.dot(q_tile, state_op, input_precision=PRECISION) * scale
        out = tl.dot(aqk_tile, v_new, out, input_precision=PRECISION)
        if TMA:
            o.store([row, value_col], out.to(dtype))
        else:
            tl.store(o + (tok * H + head)[:, None] * V + dv[None, :], out.to(o.dtype.element_ty), mask=value_mask)
        state = tl.dot(tl.trans(k_tile), v_new, state, input_precision=PRECISION)

    if STORE_HT:  # by the last segment of each sequence (every "sequence" with SEGMENTS = 1)
        segment = tl.program_id(1) // H
        if segment % SEGMENTS == SEGMENTS - 1:
            ht_base = ((segment // SEGMENTS) * H + head).to(tl.int64) * K * V
            tl.store(ht + ht_base + state_offs, state, mask=state_mask)
