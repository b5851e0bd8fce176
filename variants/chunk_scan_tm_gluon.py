"""The Tm scan (chunk_scan_tm.py) in Gluon for Hopper: transposed state, asynchronous tensor-core products.

Each program holds the transposed state slice h^T [BLOCK_V, K] of V tile program_id(0) of (sequence, head)
program_id(1) and per chunk runs six products, three on the chain from one chunk's state to the next and
three for the output (../shared/deltanet.md, all transposed):

    chain:   (K h)^T = h^T K^T,      Vn^T = X^T Tm^T,       h^T <- h^T + Vn^T K
    output:  (Q h)^T = h^T Q^T,      Aqk^T = (K Q^T) (.) M,  O^T = scale (Q h)^T + Vn^T Aqk^T

Transposed, the chain's operand is always the left one, which Hopper's warpgroup MMA takes from registers;
the loaded tiles (K, Q, Tm) are the right ones, from shared memory. The [K, V tile] form of
chunk_scan_tm_kernel stores h, X and Vn to shared memory for every product. The products are issued
asynchronously, and each is waited for only where its result is needed, where Triton waits after every one.
The q, k, v and Tm tiles come through tensor descriptors (TMA), STAGES - 1 chunks ahead; O leaves through one.

H200, bf16, D = 128, B = 1, T = 16K, the scan's kernel time (reports/h200-2026-11-30-s15/):
- the Triton scan with descriptors: 126-130 us; the same transposed, in Triton: 119;
- this kernel: 100-104 us;
- with the registers it holds through the loop trimmed (beta in a compact layout until used, the state's
  offsets made outside the loop; ptxas had spilled): 91.

The loads set much of the pace: two stages instead of three took it from 104 to 131 us. Per chunk and
program they move 48 KB; 128 programs stream close to the memory's bandwidth.

Applies where chunk_config's ``scan_gluon`` takes it: compute capability 9, 16-bit inputs, chunk 64, V tiles
of 64 (the wgmma's 64 rows), K = 64 or 128 (whole-key tiles), fixed-length batches of whole chunks. Same
arguments as chunk_scan_tm_kernel but for the descriptors, which carry their shared-memory layouts
(chunk._scan_gluon makes them).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)

from .gluon_compat import barrier, tma_load, tma_store


def tile_layout(dtype: torch.dtype, rows: int, width: int) -> gl.NVMMASharedLayout:
    """The shared-memory layout of a [rows, width] 16-bit tile that the kernel's descriptors carry (the launch's
    and chunk_aot's)."""
    element = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([rows, width], element)


@gluon.jit
def chunk_scan_tm_gluon_kernel(
    q, k, v, tm, o, beta, h0, ht, T, scale,
    H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, C: gl.constexpr, BLOCK_V: gl.constexpr,
    HAS_H0: gl.constexpr, STORE_HT: gl.constexpr, SEGMENTS: gl.constexpr, STAGES: gl.constexpr,
):
    """O and the final state of V tile program_id(0) of (sequence, head) program_id(1); q, k, v, tm and o are
    descriptors of the [B T, H D] views with [C, K], [C, BLOCK_V] and [C, C] blocks. With SEGMENTS > 1 each
    "sequence" is a segment (chunk_segments.py): h0 holds its entering state, the last segment stores ht."""
    pid_v = gl.program_id(0)
    pid_sh = gl.program_id(1)
    head = pid_sh % H
    seq = pid_sh // H
    start = seq * T
    num_chunks = T // C
    value_col = head * V + pid_v * BLOCK_V

    # accumulators [BLOCK_V, C] (N = C) and the state [BLOCK_V, K] (N = K): one warpgroup, 16-row atoms
    acc_c: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, C, 16])
    acc_k: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, K, 16])
    lhs_c: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_c, k_width=2)
    lhs_k: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_k, k_width=2)
    dtype: gl.constexpr = k.dtype
    # the [C, C] products (K Q^T) share the [BLOCK_V, C] accumulators' layout and zeros; 16-bit tiles (tile_bytes)
    gl.static_assert(BLOCK_V == C, "BLOCK_V must equal the chunk size C")
    gl.static_assert(dtype.primitive_bitwidth == 16, "16-bit inputs")

    k_smem = gl.allocate_shared_memory(dtype, [STAGES, C, K], k.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, C, K], q.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, C, BLOCK_V], v.layout)
    tm_smem = gl.allocate_shared_memory(dtype, [STAGES, C, C], tm.layout)
    aqk_smem = gl.allocate_shared_memory(dtype, [C, C], tm.layout)
    o_smem = gl.allocate_shared_memory(dtype, [C, BLOCK_V], o.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    tile_bytes: gl.constexpr = 2 * (2 * C * K + C * BLOCK_V + C * C)

    # the first STAGES - 1 chunks in flight
    for s in gl.static_range(STAGES - 1):
        pred = s < num_chunks
        row = (start + s * C).to(gl.int32)
        mbarrier.expect(ready.index(s), tile_bytes, pred=pred)
        tma_load(k, [row, head * K], ready.index(s), k_smem.index(s), pred=pred)
        tma_load(q, [row, head * K], ready.index(s), q_smem.index(s), pred=pred)
        tma_load(v, [row, value_col], ready.index(s), v_smem.index(s), pred=pred)
        tma_load(tm, [row, head * C], ready.index(s), tm_smem.index(s), pred=pred)

    # h^T in a [K, V] state, in a blocked layout: offsets in the accumulator's layout would hold 32+ registers a
    # thread through the loop (ptxas spilled)
    state_layout: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [0, 1])
    state = gl.zeros([BLOCK_V, K], gl.float32, acc_k)
    if HAS_H0:
        state += gl.convert_layout(gl.load(h0 + _state_offsets(head, seq, pid_v, H, K, V, BLOCK_V, state_layout)), acc_k)
    rows = gl.arange(0, C, gl.SliceLayout(1, acc_c))
    cols = gl.arange(0, C, gl.SliceLayout(0, acc_c))
    zeros_c = gl.zeros([BLOCK_V, C], gl.float32, acc_c)
    # beta in a compact layout (a value or two a thread) until it is used: in the accumulators' column layout its
    # pointers alone held 32 registers a thread
    beta_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    beta_rows = gl.arange(0, C, beta_layout)
    beta_next = gl.load(beta + (start + beta_rows) * H + head)

    for c in range(num_chunks):
        stage = c % STAGES
        # refill the stage the previous chunk used (all its reads are done: the MMAs waited, the V load barred)
        ahead = c + STAGES - 1
        pred = ahead < num_chunks
        sa = ahead % STAGES
        row_ahead = (start + ahead * C).to(gl.int32)
        barrier()
        mbarrier.expect(ready.index(sa), tile_bytes, pred=pred)
        tma_load(k, [row_ahead, head * K], ready.index(sa), k_smem.index(sa), pred=pred)
        tma_load(q, [row_ahead, head * K], ready.index(sa), q_smem.index(sa), pred=pred)
        tma_load(v, [row_ahead, value_col], ready.index(sa), v_smem.index(sa), pred=pred)
        tma_load(tm, [row_ahead, head * C], ready.index(sa), tm_smem.index(sa), pred=pred)

        b = gl.convert_layout(beta_next, gl.SliceLayout(0, acc_c)).to(gl.float32)
        tok_next = start + (c + 1) * C + beta_rows
        beta_next = gl.load(beta + tok_next * H + head, mask=tok_next < start + T, other=0.0)
        mbarrier.wait(ready.index(stage), (c // STAGES) & 1)
        k_tile = k_smem.index(stage)
        q_t = q_smem.index(stage).permute((1, 0))  # [K, C]

        state_op = gl.convert_layout(state.to(dtype), lhs_c)
        # issued together, completed in order: the output's two products run while the chain forms X
        ks = warpgroup_mma(state_op, k_tile.permute((1, 0)), zeros_c, use_acc=False, is_async=True)  # chain
        qk = warpgroup_mma(k_tile, q_t, zeros_c, use_acc=False, is_async=True)  # [j, i] = (Q K^T)[i, j]
        qs = warpgroup_mma(state_op, q_t, zeros_c, use_acc=False, is_async=True)
        ks = warpgroup_mma_wait(2, deps=[ks])
        v_t = v_smem.index(stage).permute((1, 0)).load(acc_c)  # [BLOCK_V, C]
        x = gl.convert_layout(((v_t.to(gl.float32) - ks) * b[None, :]).to(dtype), lhs_c)
        vn = warpgroup_mma(x, tm_smem.index(stage).permute((1, 0)), zeros_c, use_acc=False, is_async=True)  # chain
        qk = warpgroup_mma_wait(2, deps=[qk])
        aqk_smem.store(gl.where(cols[None, :] >= rows[:, None], qk, 0.0).to(dtype))  # Aqk^T [j, i], i >= j; scaled in O
        qs, vn = warpgroup_mma_wait(0, deps=[qs, vn])
        vn_op = vn.to(dtype)
        barrier()  # every warp's rows of Aqk^T are in shared memory
        fence_async_shared()
        out = warpgroup_mma(gl.convert_layout(vn_op, lhs_c), aqk_smem, qs, is_async=True)  # O^T / scale
        state = warpgroup_mma(gl.convert_layout(vn_op, lhs_k), k_tile, state, is_async=True)  # chain
        out = warpgroup_mma_wait(1, deps=[out])  # O leaves while the state's product runs
        _store_output(o, o_smem, out * scale, (start + c * C).to(gl.int32), value_col)
        state = warpgroup_mma_wait(0, deps=[state])

    tma.store_wait(0)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
    if STORE_HT:
        if seq % SEGMENTS == SEGMENTS - 1:
            offsets = _state_offsets(head, seq // SEGMENTS, pid_v, H, K, V, BLOCK_V, state_layout)
            gl.store(ht + offsets, gl.convert_layout(state, state_layout))


@gluon.jit
def _store_output(o, o_smem, out, row, value_col):
    """O^T [BLOCK_V, C] of the chunk at ``row`` out through o_smem once the previous store has left it."""
    tma.store_wait(0)
    o_smem.store(gl.permute(out.to(o_smem.dtype), (1, 0)))
    barrier()
    fence_async_shared()
    tma_store(o, [row, value_col], o_smem)


@gluon.jit
def _state_offsets(head, seq, pid_v, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BLOCK_V: gl.constexpr,
                   layout: gl.constexpr):
    """Offsets of h^T [BLOCK_V, K] (V tile ``pid_v``) in the [N, H, K, V] states, at (seq, head)."""
    dv = pid_v * BLOCK_V + gl.arange(0, BLOCK_V, gl.SliceLayout(1, layout))
    dk = gl.arange(0, K, gl.SliceLayout(0, layout))
    return (head.to(gl.int64) + seq * H) * K * V + dv[:, None] + dk[None, :] * V
