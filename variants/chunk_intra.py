"""Stage 1 of variant "chunk": the UT transform of every chunk, one program per (chunk, head).

For a chunk of C tokens (rows of K, V, Q, vector b of betas), ../shared/deltanet.md:

    A   = strict_lower(diag(b) K K^T)        float32; only the blocks the inverse reads are formed
    Aqk = scale (Q K^T) (.) M   [C, C]       M: lower triangle with diagonal; input dtype (computed and
                                             stored first, so its registers are free for the inverse)
    Tm  = (I + A)^{-1}                       float32, unit lower triangular: the 16x16 diagonal blocks
                                             by forward substitution, then pairs of diagonal blocks
                                             merged, 16 -> 32 -> 64 -> 128: for a pair
                                               (I + A)|pair = [L0 0; A10 L1]  with  T0 = L0^-1, T1 = L1^-1
                                               its inverse  = [T0 0; -T1 A10 T0  T1]
    W   = Tm diag(b) K     [C, K]            stored in the input dtype
    U   = Tm diag(b) V     [C, V]            stored in the input dtype

All blocks of one level are handled at once as 3-D tensors ([pairs, S, S], batched tl.dot). The inverse
helper ``chunk_inverse`` is shared with the WY backward (chunk_backward_wy.py), which recomputes Tm
rather than storing it.

Layouts: q, k, w: [B*T, H, K]; v, u: [B*T, H, V]; beta: [B*T, H]; aqk: [B*T, H, C] (row t holds its
chunk's row t - start). Chunks never straddle sequences: ``chunk_bounds`` gives each chunk's token range,
from a host-built table for packed (varlen) batches.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_bounds(pid_chunk, chunk_table, T, C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Flat token range [start, end) of chunk ``pid_chunk`` (tokens of all sequences counted together).

    Fixed-length batches: sequence n holds chunks n*NT .. n*NT+NT-1, NT = cdiv(T, C). Packed batches:
    ``chunk_table`` is int32 [num_chunks, 2] of (start, end) built on the host from cu_seqlens.
    """
    if IS_VARLEN:
        start = tl.load(chunk_table + 2 * pid_chunk).to(tl.int64)
        end = tl.load(chunk_table + 2 * pid_chunk + 1).to(tl.int64)
    else:
        chunks_per_seq = tl.cdiv(T, C)
        seq = (pid_chunk // chunks_per_seq).to(tl.int64)
        start = seq * T + (pid_chunk % chunks_per_seq) * C
        end = tl.minimum(start + C, seq * T + T)
    return start, end


@triton.jit
def _pair_rows(P: tl.constexpr, S: tl.constexpr, ODD: tl.constexpr):
    """Chunk-local rows of the even (ODD=0) or odd (ODD=1) S-block of each pair p: [P, S]."""
    p = tl.arange(0, P)[:, None]
    i = tl.arange(0, S)[None, :]
    return (2 * p + ODD) * S + i


@triton.jit
def _block_product(k, beta, start, end, head, d0, rows_left, rows_right,
                   H: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile's share of the batched blocks diag(b_left) K_left K_right^T: [P, S, S] float32.

    rows_left / rows_right: [P, S] chunk-local row numbers of the left and right blocks.
    """
    dd = d0 + tl.arange(0, BLOCK_K)
    dmask = dd < K
    tok_l = start + rows_left
    tok_r = start + rows_right
    k_left = tl.load(k + (tok_l * H + head)[:, :, None] * K + dd[None, None, :],
                     mask=(tok_l < end)[:, :, None] & dmask[None, None, :], other=0.0)
    b_left = tl.load(beta + tok_l * H + head, mask=tok_l < end, other=0.0).to(tl.float32)
    k_right_t = tl.load(k + (tok_r * H + head)[:, None, :] * K + dd[None, :, None],
                        mask=(tok_r < end)[:, None, :] & dmask[None, :, None], other=0.0)
    # beta scales rows after the product (float32): the dot's operands come straight from the loads
    return b_left[:, :, None] * tl.dot(k_left, k_right_t, input_precision=PRECISION)


@triton.jit
def _diag_block_inverse(a_diag, NB: tl.constexpr):
    """(I + a)^{-1} of NB unit lower triangular 16x16 blocks; a_diag [NB, 16, 16] strictly lower, fp32.

    Forward substitution on all blocks at once: row s of the inverse is e_s - sum_{j<s} a[s, j] inv[j].
    """
    rows = tl.arange(0, 16)[None, :, None]
    cols = tl.arange(0, 16)[None, None, :]
    inv = tl.zeros([NB, 16, 16], dtype=tl.float32) + tl.where(rows == cols, 1.0, 0.0)
    for s in tl.static_range(1, 16):
        a_row = tl.sum(tl.where(rows == s, a_diag, 0.0), axis=1)  # [NB, 16]: row s of each block
        update = tl.sum(a_row[:, :, None] * inv, axis=1)  # [NB, 16]: rows j < s are final already
        inv = inv - tl.where(rows == s, update[:, None, :], 0.0)
    return inv


@triton.jit
def _merge_pairs(inv, a_low, P: tl.constexpr, S: tl.constexpr, PRECISION: tl.constexpr):
    """Inverses of 2P diagonal S-blocks [2P, S, S] -> inverses of P diagonal 2S-blocks [P, 2S, 2S].

    a_low [P, S, S]: the block of A below each pair's first block. The new lower-left block is
    -T_odd a_low T_even (float32 products).
    """
    pairs = tl.permute(tl.reshape(inv, (P, 2, S, S)), (0, 2, 3, 1))
    t_even, t_odd = tl.split(pairs)
    if P == 1:
        # one pair (the last level): 2-D products compile to far fewer registers than batched ones
        low = tl.dot(tl.reshape(t_odd, (S, S)), tl.reshape(a_low, (S, S)), input_precision=PRECISION)
        low = -tl.dot(low, tl.reshape(t_even, (S, S)), input_precision=PRECISION)
        low = tl.reshape(low, (1, S, S))
    else:
        low = tl.dot(t_odd, a_low, input_precision=PRECISION)
        low = -tl.dot(low, t_even, input_precision=PRECISION)
    top = tl.reshape(tl.permute(tl.join(t_even, tl.zeros_like(t_even)), (0, 1, 3, 2)), (P, S, 2 * S))
    bottom = tl.reshape(tl.permute(tl.join(low, t_odd), (0, 1, 3, 2)), (P, S, 2 * S))
    return tl.reshape(tl.permute(tl.join(top, bottom), (0, 3, 1, 2)), (P, 2 * S, 2 * S))


@triton.jit
def chunk_inverse(k, beta, start, end, head,
                  H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr):
    """Tm = (I + strict_lower(diag(b) K K^T))^{-1} of one chunk, [C, C] float32.

    PRECISION: tl.dot precision of the key products (float32 inputs); INV_PRECISION: of the float32
    block merges. Only the blocks the inverse reads are formed: the 16x16 diagonal blocks and, per merge
    level, the block below each pair's first block.
    """
    NB: tl.constexpr = C // 16
    a_diag = tl.zeros([NB, 16, 16], dtype=tl.float32)
    if C >= 32:
        a_low16 = tl.zeros([C // 32, 16, 16], dtype=tl.float32)
    if C >= 64:
        a_low32 = tl.zeros([C // 64, 32, 32], dtype=tl.float32)
    if C >= 128:
        a_low64 = tl.zeros([C // 128, 64, 64], dtype=tl.float32)
    diag_rows = tl.arange(0, NB)[:, None] * 16 + tl.arange(0, 16)[None, :]
    for d0 in range(0, K, BLOCK_K):
        a_diag += _block_product(k, beta, start, end, head, d0, diag_rows, diag_rows, H, K, BLOCK_K, PRECISION)
        if C >= 32:
            a_low16 += _block_product(k, beta, start, end, head, d0, _pair_rows(C // 32, 16, 1),
                                      _pair_rows(C // 32, 16, 0), H, K, BLOCK_K, PRECISION)
        if C >= 64:
            a_low32 += _block_product(k, beta, start, end, head, d0, _pair_rows(C // 64, 32, 1),
                                      _pair_rows(C // 64, 32, 0), H, K, BLOCK_K, PRECISION)
        if C >= 128:
            a_low64 += _block_product(k, beta, start, end, head, d0, _pair_rows(C // 128, 64, 1),
                                      _pair_rows(C // 128, 64, 0), H, K, BLOCK_K, PRECISION)
    i_idx = tl.arange(0, 16)[None, :, None]
    j_idx = tl.arange(0, 16)[None, None, :]
    a_diag = tl.where(i_idx > j_idx, a_diag, 0.0)
    inv = _diag_block_inverse(a_diag, NB)
    if C >= 32:
        inv = _merge_pairs(inv, a_low16, C // 32, 16, INV_PRECISION)
    if C >= 64:
        inv = _merge_pairs(inv, a_low32, C // 64, 32, INV_PRECISION)
    if C >= 128:
        inv = _merge_pairs(inv, a_low64, C // 128, 64, INV_PRECISION)
    return tl.reshape(inv, (C, C))


@triton.jit
def chunk_intra_fwd_kernel(
    q, k, v, beta, w, u, aqk, chunk_table, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr,
):
    """Aqk, then W and U, of chunk program_id(0), head program_id(1)."""
    pid_chunk = tl.program_id(0)
    head = tl.program_id(1)
    start, end = chunk_bounds(pid_chunk, chunk_table, T, C, IS_VARLEN)
    rows = tl.arange(0, C)
    tok = start + rows
    row_mask = tok < end
    # Aqk first and stored at once: its [C, C] accumulator is dead before the inverse needs registers
    qk = tl.zeros([C, C], dtype=tl.float32)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        dmask = dd < K
        q_tile = tl.load(q + (tok * H + head)[:, None] * K + dd[None, :], mask=row_mask[:, None] & dmask[None, :], other=0.0)
        k_tile_t = tl.load(k + (tok * H + head)[None, :] * K + dd[:, None], mask=row_mask[None, :] & dmask[:, None], other=0.0)
        qk = tl.dot(q_tile, k_tile_t, qk, input_precision=PRECISION)
    qk = tl.where(rows[:, None] >= rows[None, :], qk * scale, 0.0)
    tl.store(aqk + (tok * H + head)[:, None] * C + rows[None, :], qk.to(aqk.dtype.element_ty), mask=row_mask[:, None])

    tm = chunk_inverse(k, beta, start, end, head, H, K, C, BLOCK_K, PRECISION, INV_PRECISION)
    b = tl.load(beta + tok * H + head, mask=row_mask, other=0.0).to(tl.float32)
    tm_op = tm.to(k.dtype.element_ty)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        m = row_mask[:, None] & (dd < K)[None, :]
        k_tile = tl.load(k + (tok * H + head)[:, None] * K + dd[None, :], mask=m, other=0.0)
        kb = (k_tile.to(tl.float32) * b[:, None]).to(k_tile.dtype)
        w_tile = tl.dot(tm_op, kb, input_precision=PRECISION)
        tl.store(w + (tok * H + head)[:, None] * K + dd[None, :], w_tile.to(w.dtype.element_ty), mask=m)
    for e0 in range(0, V, BLOCK_V):
        ee = e0 + tl.arange(0, BLOCK_V)
        m = row_mask[:, None] & (ee < V)[None, :]
        v_tile = tl.load(v + (tok * H + head)[:, None] * V + ee[None, :], mask=m, other=0.0)
        vb = (v_tile.to(tl.float32) * b[:, None]).to(v_tile.dtype)
        u_tile = tl.dot(tm_op, vb, input_precision=PRECISION)
        tl.store(u + (tok * H + head)[:, None] * V + ee[None, :], u_tile.to(u.dtype.element_ty), mask=m)
