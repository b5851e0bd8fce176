"""The chunks' UT-transform inverse Tm = (I + strict_lower(diag(b) K K^T))^{-1} in Gluon, its workspace in
shared memory (config inverse_gluon; chunk_intra.chunk_inverse_kernel computes the same matrix in Triton).

Why a second kernel: Triton spreads every tile over all threads and does not expose shared memory, so the
Triton inverse moves A and the growing Tm through a float32 workspace in global memory -- ~25 L2 round trips
and 27 barriers per chunk. Gluon, Triton's lower-level dialect, names each tile's layout and allocates
shared memory. Per tile (chunk * H + head; one program walks tiles program_id(0), + num_programs(0), ...):

    A = diag(b) K K^T, strictly lower     mma_v2 on 16-bit key tiles, float32 accumulation, [C, C]
                                          -> shared memory (16-byte units swizzled over four rows)
    T_nn = (I + A_nn)^{-1}, n < C / 16     all 16 x 16 diagonal blocks at once by forward substitution:
                                          a thread holds 8 rows of one column of one block, so each of the
                                          15 steps is in-register FMAs and one shuffle, with row s of every
                                          block read from a staging buffer (broadcast)
    merges 16 -> 32 -> ... -> C            [[T_a, 0], [-T_b A_ba T_a, T_b]] for neighbouring diagonal blocks:
                                          two products per pair on the tensor cores in three tf32 passes
                                          (hi hi + hi lo + lo hi: float32's precision, as input_precision=
                                          "ieee" gives the Triton kernel; 1e-5 of float64 in the tests)
    Tm -> global memory                   in the input dtype, laid out like Aqk: [B T, H, C]

H200, bf16, T = 16K (reports/h200-2026-11-30-s14/): the inverse kernel 110 -> 70 us at D = 128 (4096
tiles), 210 -> 118 at D = 64 (8192), 67 -> 53 at D = 256. How it got there: a first version (A and Tm
unswizzled, the merges as FMA products from shared memory, dot_fma) took 104 / 188 us -- Nsight Compute had
it bound on shared-memory bandwidth (94 % of the L1 pipe; 8-way bank conflicts on A's stores, 2.8-way on
loads); the swizzle 91 / 161; the merges on the tensor cores 80 / 124; whole-key tiles up to K = 128, a
2-column warp grid and a 128-register cap (chunk_config.gluon_inverse_launch) 70 / 118. At 8 warps the first
version took twice as long. Session 16 (reports/h200-2026-11-30-s16/): where its 70 us go at D = 128, from
copies with one stage left out -- the merges 20 us (35 of 119 at D = 64), the keys' loads 8, K K^T 8.5, the
substitution 7, the store 2; Nsight Compute: 89 % of the L1 / shared-memory pipe, short-scoreboard stalls.
The keys through a descriptor (TMA, next tile prefetched; config tma) 70.2 -> 67.8 us, 118.7 -> 114.8 at
D = 64; the level's two pairs side by side 67.8 -> 67.1, 114.8 -> 113.1; one tf32 pass instead of three 3 us
(not taken: float32's precision is the point of the merges); 4 or 8 programs per SM instead of 12 no faster.
The interpreter (TRITON_INTERPRET=1) cannot run Gluon, so CPU runs take
the Triton kernel; the tests compile this one for sm_90 without a GPU and run it against float64 on a GPU.
16-bit inputs and C in {16, 32, 64} (chunk_config.GLUON_INVERSE_CHUNKS); elsewhere the Triton kernel runs.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from .chunk_intra import chunk_bounds  # scalar code: Triton's jit functions serve Gluon kernels too
from .gluon_compat import barrier, reinterpret, tma_load


@gluon.jit
def _split_tf32(x):
    """x = hi + lo with hi exact in tf32 (its low 13 mantissa bits cleared): hi's and lo's products on the
    tensor cores together carry float32's precision (tf32x3)."""
    hi = (x.to(gl.int32, bitcast=True) & -8192).to(gl.float32, bitcast=True)
    return hi, x - hi


@gluon.jit
def _dot_tf32x3(a_view, b_view, acc, mma: gl.constexpr):
    """acc + a @ b for float32 shared-memory views, on the tensor cores in three tf32 passes (hi hi, hi lo,
    lo hi; lo lo is below float32's rounding)."""
    a_hi, a_lo = _split_tf32(a_view.load(gl.DotOperandLayout(0, mma, 1)))
    b_hi, b_lo = _split_tf32(b_view.load(gl.DotOperandLayout(1, mma, 1)))
    acc = mma_v2(a_lo, b_hi, acc, input_precision="tf32")
    acc = mma_v2(a_hi, b_lo, acc, input_precision="tf32")
    return mma_v2(a_hi, b_hi, acc, input_precision="tf32")


@gluon.jit
def _merge_level(a_smem, tm_smem, P: gl.constexpr, C: gl.constexpr, mma: gl.constexpr):
    """Pairs of P x P diagonal blocks of Tm (in tm_smem) -> 2P x 2P: the block below the pair's diagonal
    becomes -T_b (A_ba T_a), A_ba = A[b rows, a columns] (from a_smem); both products tf32x3. Tm's blocks
    above the diagonal are zero (T_a and T_b are read whole). C / 2P is 1 or 2 (C <= 64): two pairs run
    their products side by side, sharing the barriers between them."""
    gl.static_assert(C // (2 * P) <= 2, "one or two pairs a level")
    y0 = _dot_tf32x3(_block(a_smem, 1, 0, P), _block(tm_smem, 0, 0, P), gl.zeros([P, P], gl.float32, mma), mma)
    if C // (2 * P) == 2:
        y1 = _dot_tf32x3(_block(a_smem, 3, 2, P), _block(tm_smem, 2, 2, P), gl.zeros([P, P], gl.float32, mma), mma)
    # through shared memory: T_b's product reads it as its right operand
    _block(tm_smem, 1, 0, P).store(y0)
    if C // (2 * P) == 2:
        _block(tm_smem, 3, 2, P).store(y1)
    barrier()
    z0 = _dot_tf32x3(_block(tm_smem, 1, 1, P), _block(tm_smem, 1, 0, P), gl.zeros([P, P], gl.float32, mma), mma)
    if C // (2 * P) == 2:
        z1 = _dot_tf32x3(_block(tm_smem, 3, 3, P), _block(tm_smem, 3, 2, P), gl.zeros([P, P], gl.float32, mma),
                         mma)
    barrier()
    _block(tm_smem, 1, 0, P).store(-z0)
    if C // (2 * P) == 2:
        _block(tm_smem, 3, 2, P).store(-z1)
    barrier()


@gluon.jit
def _block(smem, row: gl.constexpr, col: gl.constexpr, P: gl.constexpr):
    """The P x P block (row, col) of a [C, C] shared-memory matrix."""
    return smem.slice(row * P, P, dim=0).slice(col * P, P, dim=1)


@gluon.jit
def chunk_inverse_gluon_kernel(
    k, beta, tm, chunk_table, T, num_tiles,
    H: gl.constexpr, K: gl.constexpr, C: gl.constexpr, BLOCK_K: gl.constexpr, IS_VARLEN: gl.constexpr,
    NUM_WARPS: gl.constexpr, TMA: gl.constexpr = False,
):
    """Tm of tiles program_id(0), + num_programs(0), ... into ``tm`` ([B T, H, C], input dtype); k [B T, H, K]
    and beta [B T, H] as the Triton kernel takes them. 16-bit k, C in {16, 32, 64}, NUM_WARPS = num_warps >= 2.
    With TMA, k is a tensor descriptor of its [B T, H K] view with [C, K] blocks (fixed-length sequences of
    whole chunks, BLOCK_K = K): the copy engine brings each tile's keys into shared memory, the next tile's
    while this one's inverse runs, where the loads through registers stall on them (and store them again)."""
    NB: gl.constexpr = C // 16
    # global loads of a [C, BLOCK_K] key tile: 16 bytes a thread
    load_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NUM_WARPS, 1], [1, 0])
    # the tensor-core products (K K^T and the merges): warps in a 2-column grid, so that each warp reads half of
    # K^T's columns from shared memory instead of all of them
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS // 2, 2], instr_shape=[16, 8])
    # [C, C] float32 tiles in and out of shared memory: 16 bytes a thread along rows
    tile_layout: gl.constexpr = gl.BlockedLayout([1, 4], [2, 16], [NUM_WARPS, 1], [1, 0])
    # the diagonal blocks [NB, 16 rows, 16 columns]: a thread holds 8 rows of one column of one block
    diag_layout: gl.constexpr = gl.BlockedLayout([1, 8, 1], [1, 2, 16], [NUM_WARPS, 1, 1], [2, 1, 0])
    row_layout: gl.constexpr = gl.SliceLayout(2, diag_layout)  # [NB, 16]: row s of every block
    block_layout: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [NUM_WARPS, 1], [1, 0])  # [16, 16] copies
    # [16, 1, 16] views of the diagonal blocks for the 3-D staging buffer
    staging_layout: gl.constexpr = gl.BlockedLayout([1, 1, 4], [8, 1, 4], [NUM_WARPS, 1, 1], [2, 1, 0])
    plain2: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    # A and Tm [C, C]: 16-byte units XOR-swizzled over four rows -- the accumulator's stores (8 rows x 32 bytes
    # a warp) hit 4-way fewer banks; a period of 16 columns, so the 16 x 16 blocks are slices of the pattern
    swizzled: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 4, [1, 0])
    plain3: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])

    if TMA:
        gl.static_assert(BLOCK_K == K, "whole-key tiles through the descriptor")
        gl.static_assert(k.dtype.primitive_bitwidth == 16, "16-bit keys")
        key_smem = gl.allocate_shared_memory(k.dtype, [C, K], k.layout)
        ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        mbarrier.init(ready.index(0), count=1)
        _load_keys(k, key_smem, ready.index(0), gl.program_id(0), num_tiles, H, K, C)
    else:
        key_smem = gl.allocate_shared_memory(k.dtype.element_ty, [C, BLOCK_K],
                                             gl.NVMMASharedLayout.get_default_for([C, BLOCK_K], k.dtype.element_ty))
    a_smem = gl.allocate_shared_memory(gl.float32, [C, C], swizzled)
    tm_smem = gl.allocate_shared_memory(gl.float32, [C, C], swizzled)
    # A's diagonal blocks row by row, diag_rows[s NB + n, j] = A[16 n + s, 16 n + j]: row s of every block is
    # one slice. Written through a 3-D view of the same bytes (Gluon indexes and slices 2-D buffers)
    diag_rows = gl.allocate_shared_memory(gl.float32, [16 * NB, 16], plain2)
    diag_rows_3d = reinterpret(diag_rows, gl.float32, [16, NB, 16], plain3)
    # the diagonal blocks' inverses, block n at rows 16 n
    inv_smem = gl.allocate_shared_memory(gl.float32, [NB * 16, 16], plain2)
    # Tm's blocks above the diagonal stay zero for every tile; the others are rewritten
    tm_smem.store(gl.zeros([C, C], gl.float32, tile_layout))

    rows_load = gl.arange(0, C, gl.SliceLayout(1, load_layout))
    cols_load = gl.arange(0, BLOCK_K, gl.SliceLayout(0, load_layout))
    rows_mma = gl.arange(0, C, gl.SliceLayout(1, mma))
    cols_mma = gl.arange(0, C, gl.SliceLayout(0, mma))
    rows_tile = gl.arange(0, C, gl.SliceLayout(1, tile_layout))
    cols_tile = gl.arange(0, C, gl.SliceLayout(0, tile_layout))
    s_idx = gl.arange(0, 16, gl.SliceLayout(0, gl.SliceLayout(2, diag_layout)))[None, :, None]
    c_idx = gl.arange(0, 16, gl.SliceLayout(0, gl.SliceLayout(1, diag_layout)))[None, None, :]
    identity = gl.where(s_idx == c_idx, 1.0, 0.0) + gl.zeros([NB, 16, 16], gl.float32, diag_layout)

    phase = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        head = tile % H
        start, end = chunk_bounds(tile // H, chunk_table, T, C, IS_VARLEN)
        acc = gl.zeros([C, C], gl.float32, mma)
        if TMA:
            mbarrier.wait(ready.index(0), phase)
            phase ^= 1
            acc = mma_v2(key_smem.load(gl.DotOperandLayout(0, mma, 2)),
                         key_smem.permute([1, 0]).load(gl.DotOperandLayout(1, mma, 2)), acc)
            barrier()  # every warp's reads of key_smem are done: the next tile's keys may come
            _load_keys(k, key_smem, ready.index(0), tile + gl.num_programs(0), num_tiles, H, K, C)
        else:
            tok = start + rows_load
            tmask = tok < end
            for d0 in gl.static_range(0, K, BLOCK_K):
                dd = d0 + cols_load
                key_tile = gl.load(k + (tok * H + head)[:, None] * K + dd[None, :],
                                   mask=tmask[:, None] & (dd < K)[None, :], other=0.0)
                barrier()  # the last reads of key_smem are done
                key_smem.store(key_tile)
                barrier()
                acc = mma_v2(key_smem.load(gl.DotOperandLayout(0, mma, 2)),
                             key_smem.permute([1, 0]).load(gl.DotOperandLayout(1, mma, 2)), acc)
        tok_mma = start + rows_mma
        b = gl.load(beta + tok_mma * H + head, mask=tok_mma < end, other=0.0).to(gl.float32)
        a = gl.where(rows_mma[:, None] > cols_mma[None, :], acc * b[:, None], 0.0)
        a_smem.store(a)
        barrier()
        for n in gl.static_range(NB):  # A_nn -> diag_rows[:, n, :] of its 3-D view
            a_nn = a_smem.slice(16 * n, 16, dim=0).slice(16 * n, 16, dim=1).load(gl.SliceLayout(1, staging_layout))
            diag_rows_3d.slice(n, 1, dim=1).store(gl.expand_dims(a_nn, 1))
        barrier()

        # T_nn row by row: row s = e_s - sum_{j<s} A_nn[s, j] T_nn[j, :] (rows j >= s still e_j, A_nn[s, j] = 0)
        inv = identity
        for s in gl.static_range(1, 16):
            a_row = diag_rows.slice(s * NB, NB, dim=0).load(row_layout)  # [NB, 16]: A_nn[s, :] of every block
            update = gl.sum(a_row[:, :, None] * inv, axis=1)  # [NB, 16]: sum_j A_nn[s, j] T_nn[j, c]
            inv = gl.where(s_idx == s, inv - update[:, None, :], inv)
        reinterpret(inv_smem, gl.float32, [NB, 16, 16], plain3).store(inv)
        barrier()
        for n in gl.static_range(NB):
            tm_smem.slice(16 * n, 16, dim=0).slice(16 * n, 16, dim=1).store(inv_smem.slice(16 * n, 16).load(block_layout))
        barrier()

        if C >= 32:
            _merge_level(a_smem, tm_smem, 16, C, mma)
        if C >= 64:
            _merge_level(a_smem, tm_smem, 32, C, mma)

        tm_tile = tm_smem.load(tile_layout)
        tok_tile = start + rows_tile
        gl.store(tm + (tok_tile * H + head)[:, None] * C + cols_tile[None, :], tm_tile.to(tm.dtype.element_ty),
                 mask=(tok_tile < end)[:, None])
        barrier()  # tm_smem is read before the next tile writes it
    if TMA:
        mbarrier.invalidate(ready.index(0))


@gluon.jit
def _load_keys(k, key_smem, bar, tile, num_tiles, H: gl.constexpr, K: gl.constexpr, C: gl.constexpr):
    """Tile ``tile``'s keys [C, K] (chunk tile // H, whole chunks: token row (tile // H) C) into key_smem through
    descriptor k, signalling ``bar``, if the tile exists."""
    pred = tile < num_tiles
    mbarrier.expect(bar, C * K * 2, pred=pred)
    tma_load(k, [(tile // H * C).to(gl.int32), (tile % H) * K], bar, key_smem, pred=pred)
