"""Backward stage B3 of variant "chunk": the gradients that need the chunk states, one program per
(chunk, head), all chunks in parallel (../shared/deltanet.md):

    S   = scale (dO Vn^T) (.) M                         [C, C]   M: lower triangle with diagonal
    dQ  = scale dO h_c^T + S K                          [C, K]   final
    dK  = S^T Q + Vn dh^T                               [C, K]   partial (float32): the WY backward adds
                                                                 the rest
    dW  = -dVn h_c^T                                    [C, K]   input dtype

h_c (state entering the chunk) and Vn come from the recomputing forward scan (chunk_state.py with
STORE_STATES), dh (gradient wrt the state leaving the chunk) and dVn from the reverse scan
(chunk_backward_state.py). The key dimension is tiled by BLOCK_K; each key tile reduces over V in
BLOCK_V steps; with KEY_GRID (config grads_keys="grid") each key tile is a program of its own,
program_id(2), recomputing S (the peer's split: more programs, no serial key loop).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_intra import chunk_program_tile


@triton.jit
def chunk_grads_kernel(
    q, k, vn, dvn, do, states, dstates, dq, dk_partial, dw, chunk_table, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
    KEY_GRID: tl.constexpr,
):
    """dQ, partial dK and dW of chunk program_id(0), head program_id(1): every key tile, or with KEY_GRID
    key tile program_id(2) only."""
    head = tl.program_id(1)
    rows, tok, tmask, state_base = chunk_program_tile(tl.program_id(0), head, chunk_table, T, H, K, V, C, IS_VARLEN)

    # S = scale (dO Vn^T) masked to the lower triangle
    s = tl.zeros([C, C], dtype=tl.float32)
    for e0 in range(0, V, BLOCK_V):
        ee = e0 + tl.arange(0, BLOCK_V)
        do_tile = tl.load(do + (tok * H + head)[:, None] * V + ee[None, :], mask=tmask[:, None] & (ee < V)[None, :], other=0.0)
        vn_tile_t = tl.load(vn + (tok * H + head)[None, :] * V + ee[:, None], mask=tmask[None, :] & (ee < V)[:, None], other=0.0)
        s = tl.dot(do_tile, vn_tile_t, s, input_precision=PRECISION)
    s = tl.where(rows[:, None] >= rows[None, :], s * scale, 0.0)
    s_op = s.to(k.dtype.element_ty)

    if KEY_GRID:
        key_start = tl.program_id(2) * BLOCK_K
        key_stop = key_start + BLOCK_K
    else:
        key_start = 0
        key_stop = K
    for d0 in range(key_start, key_stop, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        dmask = dd < K
        acc_dq = tl.zeros([C, BLOCK_K], dtype=tl.float32)
        acc_dk = tl.zeros([C, BLOCK_K], dtype=tl.float32)
        acc_dw = tl.zeros([C, BLOCK_K], dtype=tl.float32)
        for e0 in range(0, V, BLOCK_V):
            ee = e0 + tl.arange(0, BLOCK_V)
            emask = ee < V
            m_rows = tmask[:, None] & emask[None, :]
            do_tile = tl.load(do + (tok * H + head)[:, None] * V + ee[None, :], mask=m_rows, other=0.0)
            vn_tile = tl.load(vn + (tok * H + head)[:, None] * V + ee[None, :], mask=m_rows, other=0.0)
            dvn_tile = tl.load(dvn + (tok * H + head)[:, None] * V + ee[None, :], mask=m_rows, other=0.0)
            # transposed state tiles: element (e, d) = h[d, e]
            m_state = emask[:, None] & dmask[None, :]
            h_tile_t = tl.load(states + state_base + dd[None, :] * V + ee[:, None], mask=m_state, other=0.0)
            dh_tile_t = tl.load(dstates + state_base + dd[None, :] * V + ee[:, None], mask=m_state, other=0.0)
            acc_dq = tl.dot(do_tile, h_tile_t, acc_dq, input_precision=PRECISION)
            acc_dk = tl.dot(vn_tile, dh_tile_t, acc_dk, input_precision=PRECISION)
            acc_dw = tl.dot(dvn_tile, h_tile_t, acc_dw, input_precision=PRECISION)
        m_out = tmask[:, None] & dmask[None, :]
        q_tile = tl.load(q + (tok * H + head)[:, None] * K + dd[None, :], mask=m_out, other=0.0)
        k_tile = tl.load(k + (tok * H + head)[:, None] * K + dd[None, :], mask=m_out, other=0.0)
        acc_dq = tl.dot(s_op, k_tile, acc_dq * scale, input_precision=PRECISION)
        acc_dk = tl.dot(tl.trans(s_op), q_tile, acc_dk, input_precision=PRECISION)
        offs = (tok * H + head)[:, None] * K + dd[None, :]
        tl.store(dq + offs, acc_dq.to(dq.dtype.element_ty), mask=m_out)
        tl.store(dk_partial + offs, acc_dk, mask=m_out)
        tl.store(dw + offs, (-acc_dw).to(dw.dtype.element_ty), mask=m_out)
