"""Stage 1 of variant "chunk": the UT transform of every chunk, one (chunk, head) tile at a time.

For a chunk of C tokens (rows of K, V, Q, vector b of betas), ../shared/deltanet.md:

    Aqk = scale (Q K^T) (.) M   [C, C]       M: lower triangle with diagonal; input dtype (computed and
                                             stored first, so its registers are free for the inverse)
    A   = strict_lower(diag(b) K K^T)        float32, one product per key tile
    Tm  = (I + A)^{-1}                       float32, unit lower triangular, in 16-row blocks:
                                               diagonal blocks T_ii = (I + A_ii)^{-1} by forward
                                               substitution (all blocks at once, 15 steps);
                                               then row block by row block,
                                               Tm[i, :i] = -T_ii A[i, :i] Tm[:i, :i]   (two products)
    W   = Tm diag(b) K     [C, K]            stored in the input dtype
    U   = Tm diag(b) V     [C, V]            stored in the input dtype

Why a workspace: Triton keeps a tile in registers spread over all threads, and reading one row of it or
writing one block into it costs a reduction or a layout change through shared memory (and a barrier)
each time. So A and the growing Tm live in a per-program float32 [C, C] workspace in global memory
(L2-resident: the kernels are persistent -- a few programs per SM walk all tiles -- so the workspace is
programs x C x C x 4 bytes), with barriers between writers and readers. Rows of A come back as plain
loads, the forward substitution reduces along the warp's own axis, and the block products are 2-D dots.
The inverse helper ``chunk_inverse`` is shared with the WY backward (chunk_backward_wy.py), which
recomputes Tm rather than storing it.

Measured and dropped (H200, bf16, reports/h200-2026-11-29-s11/): the diagonal blocks as the products
(I - N)(I + N^2)(I + N^4)(I + N^8) of the strictly lower 16 x 16 blocks N (six batched float32 products in
registers in place of the 15 workspace reads of forward substitution; ~1e-6 relative against float64,
3.5e-5 on identical keys) made the inverse kernel slower: 110 -> 156 us at D = 128, 208 -> 306 at D = 64,
67 -> 85 at D = 256 (T = 16K in all): the products (float32, FMA units, layout changes through shared
memory) cost more than the reads they replace.

Layouts: q, k, w: [B*T, H, K]; v, u: [B*T, H, V]; beta: [B*T, H]; aqk: [B*T, H, C] (row t holds its
chunk's row t - start). Chunks never straddle sequences: ``chunk_bounds`` gives each chunk's token range,
from a host-built table for packed (varlen) batches. Tiles are numbered chunk * H + head.
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
def persistent_tile(tile, chunk_table, T, H: tl.constexpr, C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """What tile ``tile`` (= chunk * H + head) of a persistent per-chunk kernel works on: its head, the
    chunk's token range [start, end), its token indices [C] and their mask."""
    head = tile % H
    start, end = chunk_bounds(tile // H, chunk_table, T, C, IS_VARLEN)
    tok = start + tl.arange(0, C)
    return head, start, end, tok, tok < end


@triton.jit
def chunk_program_tile(pid_chunk, head, chunk_table, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """What a per-(chunk, head) program (the gradient and output kernels) works on: the chunk's rows, token
    indices and their mask, and the offset of the chunk's [K, V] state in a [num_chunks, H, K, V] tensor."""
    start, end = chunk_bounds(pid_chunk, chunk_table, T, C, IS_VARLEN)
    rows = tl.arange(0, C)
    tok = start + rows
    tmask = tok < end
    state_base = (pid_chunk.to(tl.int64) * H + head) * K * V
    return rows, tok, tmask, state_base


@triton.jit
def chunk_inverse(k, beta, start, end, head, scratch,
                  H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr):
    """Tm = (I + strict_lower(diag(b) K K^T))^{-1} of one chunk (see the module doc), left in ``scratch``,
    this program's float32 [C, C] workspace: read it with ``load_tm``. PRECISION: tl.dot precision of
    the key products (float32 inputs); INV_PRECISION: of the float32 block products of the inverse.
    """
    rows = tl.arange(0, C)
    tok = start + rows
    tmask = tok < end
    a = tl.zeros([C, C], dtype=tl.float32)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        k_tile = tl.load(k + (tok * H + head)[:, None] * K + dd[None, :], mask=tmask[:, None] & (dd < K)[None, :], other=0.0)
        a = tl.dot(k_tile, tl.trans(k_tile), a, input_precision=PRECISION)
    b = tl.load(beta + tok * H + head, mask=tmask, other=0.0).to(tl.float32)
    a = tl.where(rows[:, None] > rows[None, :], a * b[:, None], 0.0)
    tl.debug_barrier()  # the previous tile's reads of the workspace are done
    tl.store(scratch + rows[:, None] * C + rows[None, :], a)
    tl.debug_barrier()

    # Diagonal 16x16 blocks, all NB at once, held transposed: inv_t[n, c, j] = T_nn[j, c], so the sum
    # over j runs along the last axis -- the axis the loads and the store keep contiguous, which puts it
    # on one warp's lanes (shuffles, no barrier). Row s of T_nn is e_s - sum_{j<s} A_nn[s, j] T_nn[j, :];
    # rows j >= s still hold e_j but meet A_nn[s, j] = 0.
    NB: tl.constexpr = C // 16
    i16 = tl.arange(0, 16)
    blocks = tl.arange(0, NB)
    cc = i16[None, :, None]
    jj = i16[None, None, :]
    inv_t = tl.zeros([NB, 16, 16], dtype=tl.float32) + tl.where(cc == jj, 1.0, 0.0)
    diag_row = (blocks[:, None] * 16) * C + blocks[:, None] * 16 + i16[None, :]  # A_nn[0, j] of every block
    for s in tl.static_range(1, 16):
        a_row = tl.load(scratch + diag_row + s * C)  # [NB, 16]: row s of every diagonal block
        update = tl.sum(a_row[:, None, :] * inv_t, axis=2)  # [NB, 16]: sum_j A_nn[s, j] T_nn[j, c]
        inv_t = tl.where(jj == s, inv_t - update[:, :, None], inv_t)
    blocks3 = blocks[:, None, None] * 16
    tl.debug_barrier()  # every row of A's diagonal blocks is read before they are overwritten
    # stored as computed (transposed: no layout change), then transposed in place through the workspace.
    # Storing with transposing addresses instead (one trip fewer) measured slower on an H200: the inverse
    # kernel 223 -> 389 us at D = 64, 8 x 2K (reports/h200-2026-11-29-s9/)
    tl.store(scratch + (blocks3 + cc) * C + blocks3 + jj, inv_t)
    tl.debug_barrier()
    t_diag = tl.load(scratch + (blocks3 + jj) * C + blocks3 + cc)  # [NB, 16, 16]: T_nn
    tl.debug_barrier()
    tl.store(scratch + (blocks3 + cc) * C + blocks3 + jj, t_diag)
    tl.debug_barrier()

    # Row blocks below: Tm[i, :i] = -T_ii (A[i, :i] Tm[:i, :i]), written into the workspace row block i.
    # Tm's rows above block i are final there, with zeros right of their diagonal block (where A's upper
    # triangle was stored).
    for i in tl.static_range(1, NB):
        _row_block(scratch, i * 16, 16 if i == 1 else (32 if i == 2 else (64 if i <= 4 else 128)), C, INV_PRECISION)


@triton.jit
def _gram_blocks(k, beta, start, end, head, rows_b, rows_a, H: tl.constexpr, K: tl.constexpr, NP: tl.constexpr,
                 P: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """[NP, P, P] float32: diag(b_B) K_B K_A^T for NP pairs of P-row blocks of the chunk, block n's rows
    starting at chunk rows rows_b[n] (B) and rows_a[n] (A). Rows past the chunk's end read as zero."""
    i = tl.arange(0, P)
    tok_b = start + rows_b[:, None] + i[None, :]  # [NP, P]
    tok_a = start + rows_a[:, None] + i[None, :]
    mask_b = tok_b < end
    mask_a = tok_a < end
    gram = tl.zeros([NP, P, P], dtype=tl.float32)
    for d0 in range(0, K, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        dmask = dd < K
        k_b = tl.load(k + (tok_b * H + head)[:, :, None] * K + dd[None, None, :],
                      mask=mask_b[:, :, None] & dmask[None, None, :], other=0.0)  # [NP, P, BLOCK_K]
        k_a_t = tl.load(k + (tok_a * H + head)[:, None, :] * K + dd[None, :, None],
                        mask=mask_a[:, None, :] & dmask[None, :, None], other=0.0)  # [NP, BLOCK_K, P]
        gram = tl.dot(k_b, k_a_t, gram, input_precision=PRECISION)
    b = tl.load(beta + tok_b * H + head, mask=mask_b, other=0.0).to(tl.float32)
    return gram * b[:, :, None]


@triton.jit
def _merge_pairs(tm, k, beta, start, end, head, H: tl.constexpr, K: tl.constexpr, NP: tl.constexpr,
                 P: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr):
    """[NP, P, P] inverses of consecutive P-row diagonal blocks -> [NP / 2, 2P, 2P]: each pair (T_A, T_B)
    becomes [[T_A, 0], [-T_B A_BA T_A, T_B]] with A_BA = diag(b_B) K_B K_A^T (all of it below the diagonal)."""
    NPAIRS: tl.constexpr = NP // 2
    t_a, t_b = tl.split(tl.permute(tl.reshape(tm, [NPAIRS, 2, P, P]), [0, 2, 3, 1]))
    rows_a = tl.arange(0, NPAIRS) * (2 * P)
    a_ba = _gram_blocks(k, beta, start, end, head, rows_a + P, rows_a, H, K, NPAIRS, P, BLOCK_K, PRECISION)
    lower = -tl.dot(t_b, tl.dot(a_ba, t_a, input_precision=INV_PRECISION), input_precision=INV_PRECISION)
    # [n, row, half, col] -> [n, row, half * P + col], then the two row halves the same way
    top = tl.reshape(tl.permute(tl.join(t_a, tl.zeros_like(t_a)), [0, 1, 3, 2]), [NPAIRS, P, 2 * P])
    bottom = tl.reshape(tl.permute(tl.join(lower, t_b), [0, 1, 3, 2]), [NPAIRS, P, 2 * P])
    return tl.reshape(tl.permute(tl.join(top, bottom), [0, 3, 1, 2]), [NPAIRS, 2 * P, 2 * P])


@triton.jit
def chunk_inverse_registers(k, beta, start, end, head, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                            BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr):
    """Tm = (I + strict_lower(diag(b) K K^T))^{-1} of one chunk, [C, C] float32, without a workspace: the
    16 x 16 diagonal blocks of A as one batched product and their inverses by forward substitution (all
    blocks at once, 15 steps), then pairs of neighbouring inverses merged (16 -> 32 -> ... -> C), each
    merge's off-diagonal block of A a batched product of its own. Every tile stays in registers (layout
    changes go through shared memory) -- no global round trips in the chain."""
    NB: tl.constexpr = C // 16
    r = tl.arange(0, 16)
    firsts = tl.arange(0, NB) * 16
    a = _gram_blocks(k, beta, start, end, head, firsts, firsts, H, K, NB, 16, BLOCK_K, PRECISION)
    row = r[None, :, None]
    a = tl.where(row > r[None, None, :], a, 0.0)
    # Row s of T_nn is e_s - sum_{j<s} A_nn[s, j] T_nn[j, :]; rows j >= s still hold e_j but meet A_nn[s, j] = 0
    tm = tl.zeros([NB, 16, 16], dtype=tl.float32) + tl.where(row == r[None, None, :], 1.0, 0.0)
    for s in tl.static_range(1, 16):
        a_row = tl.sum(tl.where(row == s, a, 0.0), axis=1)  # [NB, 16]: A_nn[s, :]
        update = tl.sum(a_row[:, :, None] * tm, axis=1)  # [NB, 16]: sum_j A_nn[s, j] T_nn[j, :]
        tm = tl.where(row == s, tm - update[:, None, :], tm)
    if NB >= 2:
        tm = _merge_pairs(tm, k, beta, start, end, head, H, K, NB, 16, BLOCK_K, PRECISION, INV_PRECISION)
    if NB >= 4:
        tm = _merge_pairs(tm, k, beta, start, end, head, H, K, NB // 2, 32, BLOCK_K, PRECISION, INV_PRECISION)
    if NB >= 8:
        tm = _merge_pairs(tm, k, beta, start, end, head, H, K, NB // 4, 64, BLOCK_K, PRECISION, INV_PRECISION)
    return tl.reshape(tm, [C, C])


@triton.jit
def _row_block(scratch, first_row, P: tl.constexpr, C: tl.constexpr, INV_PRECISION: tl.constexpr):
    """Row block i of Tm (rows first_row = 16 i ...): -T_ii (A[i, :i] Tm[:i, :i]), over the P =
    next_pow2(16 i) leading columns only (beyond them Tm[:i, :i] is zero), into the workspace."""
    i16 = tl.arange(0, 16)
    cols = tl.arange(0, P)
    r = first_row + i16
    left = cols[None, :] < first_row
    a_block = tl.load(scratch + r[:, None] * C + cols[None, :], mask=left, other=0.0)  # [16, P]
    t_above = tl.load(scratch + cols[:, None] * C + cols[None, :], mask=cols[:, None] < first_row, other=0.0)
    t_ii = tl.load(scratch + r[:, None] * C + (first_row + i16)[None, :])  # [16, 16]
    x = tl.dot(a_block, t_above, input_precision=INV_PRECISION)  # [16, P]
    x = -tl.dot(t_ii, x, input_precision=INV_PRECISION)
    tl.debug_barrier()  # row block i of A is read everywhere before it is overwritten
    tl.store(scratch + r[:, None] * C + cols[None, :], x, mask=left)
    tl.debug_barrier()


@triton.jit
def load_tm(scratch, C: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Tm [C, C] float32 (or Tm^T with TRANSPOSED) from the workspace ``chunk_inverse`` filled."""
    rows = tl.arange(0, C)
    if TRANSPOSED:
        return tl.load(scratch + rows[None, :] * C + rows[:, None])
    return tl.load(scratch + rows[:, None] * C + rows[None, :])


@triton.jit
def chunk_inverse_kernel(
    k, beta, tm, scratch, chunk_table, T, num_tiles,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr,
):
    """Tm of tiles program_id(0), + num_programs(0), ... into ``tm`` (input dtype, laid out like Aqk), for
    inverse="kernel": ``chunk_inverse`` on its own, so that more programs share an SM than the intra-chunk
    kernel's (which holds the W / U / Aqk tiles besides) -- the inverse is a latency-bound chain."""
    scratch += tl.program_id(0).to(tl.int64) * C * C
    rows = tl.arange(0, C)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        head, start, end, tok, row_mask = persistent_tile(tile, chunk_table, T, H, C, IS_VARLEN)
        chunk_inverse(k, beta, start, end, head, scratch, H, K, C, BLOCK_K, PRECISION, INV_PRECISION)
        tm_tile = load_tm(scratch, C, False)
        tl.store(tm + (tok * H + head)[:, None] * C + rows[None, :], tm_tile.to(tm.dtype.element_ty),
                 mask=row_mask[:, None])


@triton.jit
def chunk_intra_fwd_kernel(
    q, k, v, beta, w, u, aqk, tm, scratch, chunk_table, T, scale, num_tiles,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr, STORE_TM: tl.constexpr, INVERSE: tl.constexpr,
):
    """Aqk, then W and U (and with STORE_TM Tm in the input dtype into ``tm``, laid out like Aqk), of
    tiles program_id(0), + num_programs(0), ... (tile = chunk * H + head). INVERSE: where Tm comes from --
    "workspace" (``chunk_inverse``, through ``scratch``), "registers" (``chunk_inverse_registers``) or
    "load" (read from ``tm``, which ``chunk_inverse_kernel`` filled; ``scratch`` unused)."""
    scratch += tl.program_id(0).to(tl.int64) * C * C
    rows = tl.arange(0, C)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        head, start, end, tok, row_mask = persistent_tile(tile, chunk_table, T, H, C, IS_VARLEN)
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

        if INVERSE == "load":
            tm_op = tl.load(tm + (tok * H + head)[:, None] * C + rows[None, :], mask=row_mask[:, None], other=0.0)
        elif INVERSE == "registers":
            tm_op = chunk_inverse_registers(k, beta, start, end, head, H, K, C, BLOCK_K, PRECISION,
                                            INV_PRECISION).to(k.dtype.element_ty)
        else:
            chunk_inverse(k, beta, start, end, head, scratch, H, K, C, BLOCK_K, PRECISION, INV_PRECISION)
            tm_op = load_tm(scratch, C, False).to(k.dtype.element_ty)
        b = tl.load(beta + tok * H + head, mask=row_mask, other=0.0).to(tl.float32)
        if STORE_TM:
            tl.store(tm + (tok * H + head)[:, None] * C + rows[None, :], tm_op, mask=row_mask[:, None])
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
