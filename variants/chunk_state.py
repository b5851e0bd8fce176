"""Stage 2 of variant "chunk": the sequential scan over chunks, with the output fused in.

One program per (V tile, sequence, head) walks its sequence's chunks in order, holding its slice of the
state h [K, BLOCK_V] in float32 registers (../shared/deltanet.md):

    Vn      = U - W h_c                         [C, BLOCK_V]   rounded to the input dtype
    O       = scale Q h_c + Aqk Vn              [C, BLOCK_V]   (forward only, COMPUTE_O)
    h_{c+1} = h_c + K^T Vn

W, U, Aqk come from stage 1 (chunk_intra.py). Splitting V over programs is exact (the columns of h are
independent); it gives the GPU's SMs work when there are few sequences x heads.

For the backward (STORE_STATES) the same scan stores every h_c (the state entering chunk c,
[num_chunks, H, K, V] in the input dtype -- float32 for float32 inputs) and Vn ([B*T, H, V]): in the
backward's recompute, or in the forward beside the output when the op keeps them for the backward.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sequence_bounds(seq, cu_seqlens, chunk_offsets, T, C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Flat token range [start, end) of sequence ``seq`` and the global index of its first chunk."""
    if IS_VARLEN:
        start = tl.load(cu_seqlens + seq).to(tl.int64)
        end = tl.load(cu_seqlens + seq + 1).to(tl.int64)
        first_chunk = tl.load(chunk_offsets + seq).to(tl.int64)
    else:
        start = seq.to(tl.int64) * T
        end = start + T
        first_chunk = seq.to(tl.int64) * tl.cdiv(T, C)
    return start, end, first_chunk


@triton.jit
def state_slice(K: tl.constexpr, V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """The [BLOCK_K, BLOCK_V] slice of a [K, V] state that V tile program_id(0) holds: its key / value
    offsets and masks, and its offsets and mask within the state."""
    dk = tl.arange(0, BLOCK_K)
    dv = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    kmask = dk < K
    vmask = dv < V
    return dk, dv, kmask, vmask, dk[:, None] * V + dv[None, :], kmask[:, None] & vmask[None, :]


@triton.jit
def scan_tile(cu_seqlens, chunk_offsets, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
              C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr):
    """What a scan program (program_id(0) = V tile, program_id(1) = sequence * H + head) works on, for
    this scan and the reverse one (chunk_backward_state.py): head; the sequence's token range
    [start, end), first global chunk and chunk count; the state tile's key / value offsets and masks,
    its offsets and mask in a [K, V] state, and the offset of this (sequence, head)'s state in an
    [N, H, K, V] tensor."""
    pid_sh = tl.program_id(1)
    seq = pid_sh // H
    head = pid_sh % H
    start, end, first_chunk = sequence_bounds(seq, cu_seqlens, chunk_offsets, T, C, IS_VARLEN)
    num_chunks = tl.cdiv(end - start, C)
    dk, dv, kmask, vmask, state_offs, state_mask = state_slice(K, V, BLOCK_K, BLOCK_V)
    state_base = (seq * H + head).to(tl.int64) * K * V
    return head, start, end, first_chunk, num_chunks, dk, dv, kmask, vmask, state_offs, state_mask, state_base


@triton.jit
def state_tile(ptr, state_base, state_offs, state_mask, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
               HAS: tl.constexpr):
    """A scan's float32 [BLOCK_K, BLOCK_V] slice of the [K, V] state at ``ptr + state_base`` (an initial
    state, or the final state's gradient); zeros without HAS."""
    tile = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)
    if HAS:
        tile += tl.load(ptr + state_base + state_offs, mask=state_mask, other=0.0)
    return tile


@triton.jit
def chunk_state_fwd_kernel(
    q, k, w, u, aqk, o, h0, ht, states, vn_out, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, COMPUTE_O: tl.constexpr, STORE_STATES: tl.constexpr,
    IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Scan of V tile program_id(0) of (sequence, head) program_id(1); BLOCK_K >= K (one key tile)."""
    head, start, end, first_chunk, num_chunks, dk, dv, kmask, vmask, state_offs, state_mask, state_base = scan_tile(
        cu_seqlens, chunk_offsets, T, H, K, V, C, BLOCK_K, BLOCK_V, IS_VARLEN
    )
    state = state_tile(h0, state_base, state_offs, state_mask, BLOCK_K, BLOCK_V, HAS_H0)
    rows = tl.arange(0, C)

    for c in range(num_chunks):
        tok = start + c * C + rows
        tmask = tok < end
        w_tile = tl.load(w + (tok * H + head)[:, None] * K + dk[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        u_tile = tl.load(u + (tok * H + head)[:, None] * V + dv[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        k_tile_t = tl.load(k + (tok * H + head)[None, :] * K + dk[:, None], mask=tmask[None, :] & kmask[:, None], other=0.0)
        state_op = state.to(k.dtype.element_ty)
        if STORE_STATES:
            tl.store(states + ((first_chunk + c) * H + head) * K * V + state_offs,
                     state_op.to(states.dtype.element_ty), mask=state_mask)
        v_new = u_tile.to(tl.float32) - tl.dot(w_tile, state_op, input_precision=PRECISION)
        v_new_op = v_new.to(k.dtype.element_ty)
        if STORE_STATES:
            tl.store(vn_out + (tok * H + head)[:, None] * V + dv[None, :], v_new_op, mask=tmask[:, None] & vmask[None, :])
        if COMPUTE_O:
            q_tile = tl.load(q + (tok * H + head)[:, None] * K + dk[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
            a_tile = tl.load(aqk + (tok * H + head)[:, None] * C + rows[None, :], mask=tmask[:, None], other=0.0)
            out = tl.dot(q_tile, state_op, input_precision=PRECISION) * scale
            out = tl.dot(a_tile, v_new_op, out, input_precision=PRECISION)
            tl.store(o + (tok * H + head)[:, None] * V + dv[None, :], out.to(o.dtype.element_ty),
                     mask=tmask[:, None] & vmask[None, :])
        state = tl.dot(k_tile_t, v_new_op, state, input_precision=PRECISION)

    if STORE_HT:
        tl.store(ht + state_base + state_offs, state, mask=state_mask)
