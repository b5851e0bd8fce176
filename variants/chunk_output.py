"""Stage 3 of variant "chunk" with output="separate": the output of every chunk, all chunks in parallel.

One program per (chunk, V tile, head), from what the scan stored (chunk_state.py with STORE_STATES):

    O = scale Q h_c + Aqk Vn          [C, BLOCK_V]    h_c: the state entering the chunk [K, V] (input dtype)

This is the fused scan's read-out (the same products on the same input-dtype operands, the key dimension
summed in BLOCK_K steps) taken off the sequential scan: the scan then holds only the W, K and U tiles per
step, which at key dims above 128 leaves room for wider V tiles at two pipeline stages (each V tile
re-reads the chunk's [C, K] key-side tiles). The cost is storing every h_c ([num_chunks, H, K, V]) in the
forward, which a differentiated call keeps for its backward anyway.

A chunk's V tiles are neighbouring programs (program_id(0) = chunk * NUM_V_TILES + V tile), so the Q and
Aqk tiles they all read come from L2 once the first has loaded them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_intra import chunk_program_tile


@triton.jit
def chunk_output_kernel(
    q, aqk, states, vn, o, chunk_table, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """O [C, BLOCK_V] of one chunk, V tile (both from program_id(0)) and head (program_id(1))."""
    NUM_V_TILES: tl.constexpr = (V + BLOCK_V - 1) // BLOCK_V
    head = tl.program_id(1)
    rows, tok, tmask, state_base = chunk_program_tile(tl.program_id(0) // NUM_V_TILES, head, chunk_table, T, H, K, V,
                                                      C, IS_VARLEN)
    ee = (tl.program_id(0) % NUM_V_TILES) * BLOCK_V + tl.arange(0, BLOCK_V)
    emask = ee < V

    acc = tl.zeros([C, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        dmask = dd < K
        q_tile = tl.load(q + (tok * H + head)[:, None] * K + dd[None, :], mask=tmask[:, None] & dmask[None, :], other=0.0)
        h_tile = tl.load(states + state_base + dd[:, None] * V + ee[None, :], mask=dmask[:, None] & emask[None, :], other=0.0)
        acc = tl.dot(q_tile, h_tile, acc, input_precision=PRECISION)
    a_tile = tl.load(aqk + (tok * H + head)[:, None] * C + rows[None, :], mask=tmask[:, None], other=0.0)
    vn_tile = tl.load(vn + (tok * H + head)[:, None] * V + ee[None, :], mask=tmask[:, None] & emask[None, :], other=0.0)
    acc = tl.dot(a_tile, vn_tile, acc * scale, input_precision=PRECISION)
    tl.store(o + (tok * H + head)[:, None] * V + ee[None, :], acc.to(o.dtype.element_ty), mask=tmask[:, None] & emask[None, :])
