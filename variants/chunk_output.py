"""Forward stage 3 of variant "chunk" (when the output is not fused into the scan): every chunk's output
in parallel, one program per (chunk, head, V tile) (../shared/deltanet.md):

    O = scale Q h_c + Aqk Vn        [C, BLOCK_V]

h_c (the state entering chunk c, input dtype) and Vn come from the forward scan run with STORE_STATES
(chunk_state.py), Aqk from the intra-chunk kernel. Why a separate kernel: with few sequences x heads the
scan is a long chain of small steps on few SMs; taking the two output products off that chain (and
doing them fully parallel here) shortens it, at the price of writing and reading the chunk states.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_intra import chunk_bounds


@triton.jit
def chunk_output_kernel(
    q, states, vn, aqk, o, chunk_table, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """O of chunk program_id(0), head program_id(1), V tile program_id(2)."""
    pid_chunk = tl.program_id(0)
    head = tl.program_id(1)
    start, end = chunk_bounds(pid_chunk, chunk_table, T, C, IS_VARLEN)
    rows = tl.arange(0, C)
    tok = start + rows
    tmask = tok < end
    ee = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = ee < V
    state_base = states + (pid_chunk.to(tl.int64) * H + head) * K * V

    out = tl.zeros([C, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        dmask = dd < K
        q_tile = tl.load(q + (tok * H + head)[:, None] * K + dd[None, :], mask=tmask[:, None] & dmask[None, :], other=0.0)
        h_tile = tl.load(state_base + dd[:, None] * V + ee[None, :], mask=dmask[:, None] & vmask[None, :], other=0.0)
        out = tl.dot(q_tile, h_tile, out, input_precision=PRECISION)
    out = out * scale
    a_tile = tl.load(aqk + (tok * H + head)[:, None] * C + rows[None, :], mask=tmask[:, None], other=0.0)
    vn_tile = tl.load(vn + (tok * H + head)[:, None] * V + ee[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
    out = tl.dot(a_tile, vn_tile, out, input_precision=PRECISION)
    tl.store(o + (tok * H + head)[:, None] * V + ee[None, :], out.to(o.dtype.element_ty), mask=tmask[:, None] & vmask[None, :])
