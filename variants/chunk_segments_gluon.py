"""The segment summaries (chunk_segments.py) in Gluon for Hopper: the Gluon scan's chain without its output.

A summary program runs the state chain of chunk_scan_tm_gluon.py over one segment on a transposed column
tile of [b | A] -- [BLOCK_N, K], value tiles first, then key tiles -- and stores it, where
chunk_segment_summary_kernel (summary_order="vk") does the same in Triton:

    (K S)^T = S^T K^T,      Vn^T = X^T Tm^T (X^T = (V^T - (K S)^T) diag(b); key tiles see V = 0),
    S^T <- S^T + Vn^T K

from S = h0 (a sequence's first segment, value tiles; zeros without one) or [0 | I], over the segment's
chunks; a sequence's first segment runs no key tiles (its transition is never used). k, v and Tm come
through tensor descriptors, STAGES - 1 chunks ahead; key tiles load no V.

One warpgroup (4 warps) per 64 columns (BLOCK_N = 16 NUM_WARPS). H200, bf16, 1 x 16K, with descriptors
(reports/h200-2026-11-30-s16/): 87.5 -> 77.1 us against the Triton summaries at D = 128 (160 programs),
74.6 -> 61.8 at D = 64. 128 columns on two warpgroups sharing the loaded tiles (80 programs, one an SM)
took 89.4 at D = 128: chunk_config.GLUON_SUMMARY_BLOCK is 64.

Applies where chunk_config's ``scan_gluon`` takes the scan (with its summaries): compute capability 9, 16-bit
inputs, chunk 64, K = 64 or 128, V a multiple of BLOCK_N, fixed-length batches of whole chunks.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .chunk_scan_tm_gluon import _state_offsets
from .gluon_compat import barrier, tma_load


@gluon.jit
def chunk_segment_summary_gluon_kernel(
    k, v, tm, beta, h0, seg_values, seg_transitions, T_seg,
    SEGMENTS: gl.constexpr, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, C: gl.constexpr,
    BLOCK_N: gl.constexpr, HAS_H0: gl.constexpr, STAGES: gl.constexpr, NUM_WARPS: gl.constexpr,
):
    """Column tile program_id(0) of [b | A] of segment g < G - 1 of (sequence, head): program_id(1) =
    (sequence (G - 1) + g) H + head, as chunk_segment_summary_kernel; b_seg into seg_values [B (G - 1), H, K, V]
    and A_seg into seg_transitions [B (G - 1), H, K, K], float32. k, v and tm are descriptors of the
    [B T, H D] views with [C, K], [C, BLOCK_N] and [C, C] blocks; h0 [B, H, K, V] (HAS_H0)."""
    pid_n = gl.program_id(0)
    pid_sh = gl.program_id(1)
    head = pid_sh % H
    summary = pid_sh // H  # the summaries skip each sequence's last segment
    seq = summary // (SEGMENTS - 1)
    first_segment = summary % (SEGMENTS - 1) == 0
    start = (seq * SEGMENTS + summary % (SEGMENTS - 1)) * T_seg
    value_tiles: gl.constexpr = V // BLOCK_N
    is_value = pid_n < value_tiles
    num_chunks = gl.where(first_segment & (pid_n >= value_tiles), 0, T_seg // C)
    value_col = head * V + pid_n * BLOCK_N  # (value tiles only)

    # accumulators [BLOCK_N, C] and the state [BLOCK_N, K]: a warpgroup per 64 rows, 16-row atoms
    acc_c: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                    instr_shape=[16, C, 16])
    acc_k: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                    instr_shape=[16, K, 16])
    lhs_c: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_c, k_width=2)
    lhs_k: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_k, k_width=2)
    dtype: gl.constexpr = k.dtype
    gl.static_assert(BLOCK_N == 16 * NUM_WARPS, "a warpgroup (4 warps) per 64 columns")
    gl.static_assert(dtype.primitive_bitwidth == 16, "16-bit inputs")
    gl.static_assert(V % BLOCK_N == 0 and K % BLOCK_N == 0, "a column tile lies within b or within A")

    k_smem = gl.allocate_shared_memory(dtype, [STAGES, C, K], k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, C, BLOCK_N], v.layout)
    tm_smem = gl.allocate_shared_memory(dtype, [STAGES, C, C], tm.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    key_bytes: gl.constexpr = 2 * (C * K + C * C)  # K and Tm; value tiles add V's
    value_bytes: gl.constexpr = key_bytes + 2 * C * BLOCK_N

    for s in gl.static_range(STAGES - 1):
        _load_chunk(k, v, tm, k_smem, v_smem, tm_smem, ready.index(s), s, s < num_chunks, start + s * C, head,
                    value_col, is_value, key_bytes, value_bytes, K, C)

    # the state's offsets in a blocked layout (in the accumulator's they would hold registers through the loop)
    state_layout: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [NUM_WARPS, 1], [0, 1])
    cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, gl.SliceLayout(1, state_layout))  # of [b | A]
    dk = gl.arange(0, K, gl.SliceLayout(0, state_layout))
    if is_value:
        state = gl.zeros([BLOCK_N, K], gl.float32, acc_k)
        if HAS_H0:
            h0_tile = gl.load(h0 + _state_offsets(head, seq, pid_n, H, K, V, BLOCK_N, state_layout),
                              mask=(dk[None, :] >= 0) & first_segment, other=0.0)
            state += gl.convert_layout(h0_tile, acc_k)
    else:
        identity = gl.where((cols - V)[:, None] == dk[None, :], 1.0, 0.0)  # A^T starts as the identity
        state = gl.convert_layout(identity, acc_k)
    zeros_c = gl.zeros([BLOCK_N, C], gl.float32, acc_c)
    beta_layout: gl.constexpr = gl.BlockedLayout([1], [32], [NUM_WARPS], [0])  # compact until used
    beta_rows = gl.arange(0, C, beta_layout)
    beta_next = gl.load(beta + (start + beta_rows) * H + head)

    for c in range(num_chunks):
        stage = c % STAGES
        barrier()  # every warp's reads of the stage refilled below (the previous chunk's) are done
        ahead = c + STAGES - 1
        _load_chunk(k, v, tm, k_smem, v_smem, tm_smem, ready.index(ahead % STAGES), ahead % STAGES,
                    ahead < num_chunks, start + ahead * C, head, value_col, is_value, key_bytes, value_bytes, K, C)
        b = gl.convert_layout(beta_next, gl.SliceLayout(0, acc_c)).to(gl.float32)
        tok_next = start + (c + 1) * C + beta_rows
        beta_next = gl.load(beta + tok_next * H + head, mask=tok_next < start + num_chunks * C, other=0.0)
        mbarrier.wait(ready.index(stage), (c // STAGES) & 1)
        k_tile = k_smem.index(stage)

        ks = warpgroup_mma(gl.convert_layout(state.to(dtype), lhs_c), k_tile.permute((1, 0)), zeros_c,
                           use_acc=False, is_async=True)
        ks = warpgroup_mma_wait(0, deps=[ks])
        v_t = v_smem.index(stage).permute((1, 0)).load(acc_c)  # [BLOCK_N, C]; stale for key tiles, unused
        x = (gl.where(is_value, v_t.to(gl.float32), 0.0) - ks) * b[None, :]
        vn = warpgroup_mma(gl.convert_layout(x.to(dtype), lhs_c), tm_smem.index(stage).permute((1, 0)), zeros_c,
                           use_acc=False, is_async=True)
        vn = warpgroup_mma_wait(0, deps=[vn])
        state = warpgroup_mma(gl.convert_layout(vn.to(dtype), lhs_k), k_tile, state, is_async=True)
        state = warpgroup_mma_wait(0, deps=[state])

    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
    state = gl.convert_layout(state, state_layout)
    if is_value:
        gl.store(seg_values + _state_offsets(head, summary, pid_n, H, K, V, BLOCK_N, state_layout), state)
    else:
        gl.store(seg_transitions + (summary * H + head).to(gl.int64) * K * K + (cols - V)[:, None] + dk[None, :] * K,
                 state, mask=(dk[None, :] >= 0) & (first_segment == 0))


@gluon.jit
def _load_chunk(k, v, tm, k_smem, v_smem, tm_smem, bar, stage, pred, row, head, value_col, is_value,
                key_bytes: gl.constexpr, value_bytes: gl.constexpr, K: gl.constexpr, C: gl.constexpr):
    """The K, Tm (and, for value tiles, V) tiles of the chunk at token ``row`` into ``stage``, signalling ``bar``
    with their bytes where ``pred``."""
    row = row.to(gl.int32)
    # one of the two: the barrier counts one arrival with the bytes to come
    mbarrier.expect(bar, value_bytes, pred=pred & is_value)
    mbarrier.expect(bar, key_bytes, pred=pred & (is_value == 0))
    tma_load(k, [row, head * K], bar, k_smem.index(stage), pred=pred)
    tma_load(tm, [row, head * C], bar, tm_smem.index(stage), pred=pred)
    tma_load(v, [row, value_col], bar, v_smem.index(stage), pred=pred & is_value)
