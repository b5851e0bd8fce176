"""Backward stage B2 of variant "chunk": the reverse scan over chunks for the state gradient.

One program per (V tile, sequence, head) walks its chunks from last to first with dh = dL/dh_{c+1}
[K, BLOCK_V] in float32 registers (initialised from the final state's gradient when given), per chunk
(../shared/deltanet.md):

    store dh                                     (the gradient wrt the state leaving chunk c)
    dVn = Aqk^T dO + K dh                        [C, BLOCK_V]   stored: it is dU
    dh  <- dh + scale Q^T dO - W^T dVn           now the gradient wrt h_c

After the first chunk dh is the gradient of the initial state. The per-chunk dh and dVn feed the
parallel gradient kernel (chunk_backward_grads.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_state import scan_tile, state_tile


@triton.jit
def chunk_state_bwd_kernel(
    q, k, w, aqk, do, dht, dh0, dstates, dvn_out, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Reverse scan of V tile program_id(0) of (sequence, head) program_id(1); BLOCK_K >= K."""
    head, start, end, first_chunk, num_chunks, dk, dv, kmask, vmask, state_offs, state_mask, state_base = scan_tile(
        cu_seqlens, chunk_offsets, T, H, K, V, C, BLOCK_K, BLOCK_V, IS_VARLEN
    )
    dstate = state_tile(dht, state_base, state_offs, state_mask, BLOCK_K, BLOCK_V, HAS_DHT)
    rows = tl.arange(0, C)

    for i in range(num_chunks):
        c = num_chunks - 1 - i
        tok = start + c * C + rows
        tmask = tok < end
        km = tmask[None, :] & kmask[:, None]
        q_tile_t = tl.load(q + (tok * H + head)[None, :] * K + dk[:, None], mask=km, other=0.0)
        w_tile_t = tl.load(w + (tok * H + head)[None, :] * K + dk[:, None], mask=km, other=0.0)
        k_tile = tl.load(k + (tok * H + head)[:, None] * K + dk[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        # Aqk^T: element (j, i) = Aqk[row i, column j]
        a_tile_t = tl.load(aqk + (tok * H + head)[None, :] * C + rows[:, None], mask=tmask[None, :], other=0.0)
        do_tile = tl.load(do + (tok * H + head)[:, None] * V + dv[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        dstate_op = dstate.to(k.dtype.element_ty)
        tl.store(dstates + ((first_chunk + c) * H + head) * K * V + state_offs,
                 dstate_op.to(dstates.dtype.element_ty), mask=state_mask)
        dv_new = tl.dot(a_tile_t, do_tile, input_precision=PRECISION)
        dv_new = tl.dot(k_tile, dstate_op, dv_new, input_precision=PRECISION)
        dv_new_op = dv_new.to(k.dtype.element_ty)
        tl.store(dvn_out + (tok * H + head)[:, None] * V + dv[None, :], dv_new_op, mask=tmask[:, None] & vmask[None, :])
        dstate += scale * tl.dot(q_tile_t, do_tile, input_precision=PRECISION)
        dstate -= tl.dot(w_tile_t, dv_new_op, input_precision=PRECISION)

    if STORE_DH0:
        tl.store(dh0 + state_base + state_offs, dstate, mask=state_mask)
