"""The Tm scan split into segments: all SMs at work when sequences x heads are few (scan_segments).

The inference scan (chunk_scan_tm.py) walks each sequence's chunks in order, one program per (V tile,
sequence, head): at B = 1, T = 16K, H = 16 that is 256 chunk steps in a row on 16-wide tiles, while most
SMs idle. The chunk step is affine in the state (../shared/deltanet.md, Vn = Tm diag(b) (V - K h)):

    h_{c+1} = A_c h_c + K^T Tm diag(b) V,     A_c = I - K^T Tm diag(b) K      [K, K]

so a run of chunks -- a segment -- maps the state entering it to the state leaving it by
h_out = A_seg h_in + b_seg, with A_seg the product of its chunks' A_c and b_seg its final state from zero.
Cut every sequence into G equal segments; then

  1. ``chunk_segment_summary_kernel``: every segment but each sequence's last, all in parallel, runs the
     chunk steps on the [K, V + K] state [b | A] from [0 | I] -- the value columns see V, the key columns
     zeros -- and stores b_seg [K, V] and A_seg [K, K] in float32. The same steps as the scan's state
     chain (K S, Tm X, K^T Vn), no output. A sequence's first segment runs its value columns from the
     initial state instead, and no key columns: its b_seg is then the state leaving it, and its A_seg is
     never needed (a sixth of the summaries' work at G = 4);
  2. ``chunk_segment_combine_kernel``: per (V tile, sequence, head), the first segment's summary is the
     state entering the second, then G - 2 steps h <- A_seg h + b_seg, storing each segment's entering state;
  3. the Tm scan itself, every segment a sequence of its own (a fixed-length batch [B, T] read as
     [B G, T / G]) from its entering state: G times the programs, 1/G of the steps each. Only the last
     segment of each sequence stores the final state.

The extra work is step 1 (the state chain for V + K columns over (G - 2) / G of the chunks and for V columns
over the first 1 / G, without the output's three products); it is spread over G times as many programs.
Skipping the first segment's key columns did not shorten the summaries on an H200 (D = 128, B = 1, T = 16K:
129 -> 130 us: each program's 64-step chain sets their time, not how many run), but the combine lost a step
(10 -> 8 us; reports/h200-2026-11-30-s13/). With TMA (config tma) the summaries' k, v and Tm tiles come
through tensor descriptors: 129 -> 118 us there. With summary_order="vk" (TRANSPOSED) the summaries hold
each column tile transposed, [tile, K]: every product of the chain then takes the chain's operand on the left,
from registers, where the [K, tile] form stores it to shared memory for each product -- with 64-wide tiles
(the wgmma's 64 rows) and three stages 118 -> 86 us there (reports/h200-2026-11-30-s15/).

Segments hold whole chunks: T must be a multiple of G C (chunk_config checks it; "auto" picks G only then),
fixed-length batches only.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_state import state_slice, state_tile
from .common import when


@triton.jit
def summary_columns(T_seg, SEGMENTS: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    C: tl.constexpr, BLOCK_N: tl.constexpr):
    """What summary program (program_id(0) = column tile of [b | A], value tiles first; program_id(1) =
    (sequence (G - 1) + g) H + head) works on: its head, summary index and sequence, whether its segment is
    the sequence's first, the segment's first token, whether its columns are value columns (else key
    columns), their indices and mask, and its chunk count -- none for the first segment's key columns, whose
    transition is never used (the combine starts from the state leaving that segment)."""
    pid_n = tl.program_id(0)
    pid_sh = tl.program_id(1)
    head = pid_sh % H
    summary = pid_sh // H  # the summaries skip each sequence's last segment
    seq = summary // (SEGMENTS - 1)
    index = summary % (SEGMENTS - 1)  # of the segment within its sequence
    first_segment = index == 0
    start = (seq * SEGMENTS + index).to(tl.int64) * T_seg
    value_tiles: tl.constexpr = tl.cdiv(V, BLOCK_N)
    is_value = pid_n < value_tiles
    if is_value:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < V
    else:
        cols = (pid_n - value_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < K
    num_chunks = tl.where(first_segment & (pid_n >= value_tiles), 0, T_seg // C)
    return head, summary, seq, first_segment, start, is_value, cols, cmask, num_chunks


@triton.jit
def summary_tiles(k, v, tm, row, tok, head, is_value, cols, value_mask, dk, kmask, rows, H: tl.constexpr,
                  K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
                  TRANSPOSED: tl.constexpr):
    """A summary's tiles of the chunk at token ``row`` (``tok``: its tokens): K [C, K] and Tm [C, C] in the input
    dtype, and its value columns in float32 -- [C, BLOCK_N], or [BLOCK_N, C] with TRANSPOSED (``value_mask``
    shaped to match) -- zeros for key columns (they see V = 0)."""
    if TMA:
        row = row.to(tl.int32)
        k_tile = k.load([row, head * K])
        tm_tile = tm.load([row, head * C])
        # the key tiles read the head's first value tile and drop it
        v_values = v.load([row, head * V + tl.where(is_value, tl.program_id(0), 0) * BLOCK_N]).to(tl.float32)
        if TRANSPOSED:
            v_values = tl.trans(v_values)
        v_values = tl.where(is_value, v_values, 0.0)
    else:
        k_tile = tl.load(k + (tok * H + head)[:, None] * K + dk[None, :], mask=kmask[None, :], other=0.0)
        tm_tile = tl.load(tm + (tok * H + head)[:, None] * C + rows[None, :])
        if TRANSPOSED:
            v_offsets = (tok * H + head)[None, :] * V + cols[:, None]
        else:
            v_offsets = (tok * H + head)[:, None] * V + cols[None, :]
        v_values = tl.load(v + v_offsets, mask=value_mask, other=0.0).to(tl.float32)
    return k_tile, tm_tile, v_values


@triton.jit
def tile_offsets(cols, cmask, dk, kmask, stride, TRANSPOSED: tl.constexpr):
    """A summary's column tile in a [K, stride] matrix (b: stride V, A: stride K): its offsets and mask, laid
    out [K, BLOCK_N], or [BLOCK_N, K] with TRANSPOSED."""
    if TRANSPOSED:
        return cols[:, None] + dk[None, :] * stride, cmask[:, None] & kmask[None, :]
    else:
        return dk[:, None] * stride + cols[None, :], kmask[:, None] & cmask[None, :]


@triton.jit
def chunk_segment_summary_kernel(
    k, v, beta, tm, h0, seg_values, seg_transitions, T_seg,
    SEGMENTS: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, HAS_H0: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr = False, TRANSPOSED: tl.constexpr = False,
):
    """Column tile program_id(0) of [b | A] (value tiles first, then key tiles) of segment g < G - 1 of
    (sequence, head): program_id(1) = (sequence (G - 1) + g) H + head. Stores b_seg into seg_values
    [B (G - 1), H, K, V] and A_seg into seg_transitions [B (G - 1), H, K, K], both float32. Segment 0:
    b_seg from the initial state h0 [B, H, K, V] (zeros without HAS_H0), and no A_seg (its key tiles
    store nothing). With TMA, k, v and tm are tensor descriptors as in chunk_scan_tm_kernel (chunk.tma_views,
    v's blocks BLOCK_N wide). TRANSPOSED (summary_order="vk") holds the tile as [BLOCK_N, K], every product's
    chain operand on the left; 64-wide tiles then give the wgmma its 64 rows."""
    head, summary, seq, first_segment, start, is_value, cols, cmask, num_chunks = summary_columns(
        T_seg, SEGMENTS, H, K, V, C, BLOCK_N)
    dk = tl.arange(0, BLOCK_K)
    kmask = dk < K
    rows = tl.arange(0, C)
    if TRANSPOSED:
        value_mask = when(cmask, is_value)[:, None]
    else:
        value_mask = when(cmask, is_value)[None, :]
    if is_value:
        offsets, mask = tile_offsets(cols, cmask, dk, kmask, V, TRANSPOSED)
        state = state_tile(h0, (seq * H + head).to(tl.int64) * K * V, offsets, when(mask, first_segment),
                           BLOCK_N if TRANSPOSED else BLOCK_K, BLOCK_K if TRANSPOSED else BLOCK_N, HAS_H0)
    elif TRANSPOSED:
        state = tl.where(cols[:, None] == dk[None, :], 1.0, 0.0)  # A^T starts as the identity
    else:
        state = tl.where(dk[:, None] == cols[None, :], 1.0, 0.0)  # A starts as the identity
    # the key columns see V = 0: one masked load rather than a branch, so that Triton's pipeliner prefetches
    # it like the dot operands; beta one chunk ahead by hand (as in chunk_scan_tm.py). Loaded in the loop
    # inside an `if`, the two held a third of the stall samples (D = 128, B = 1, T = 16K: 144 -> 129 us)
    beta_next = tl.load(beta + (start + rows) * H + head)

    for c in range(num_chunks):
        tok = start + c * C + rows
        b = beta_next.to(tl.float32)
        # the next chunk's, if this segment has one ((rows >= 0): the condition as a row vector)
        beta_next = tl.load(beta + (tok + C) * H + head, mask=when(rows >= 0, c + 1 < num_chunks), other=0.0)
        k_tile, tm_tile, v_values = summary_tiles(k, v, tm, start + c * C, tok, head, is_value, cols, value_mask, dk,
                                                  kmask, rows, H, K, V, C, BLOCK_N, TMA, TRANSPOSED)
        dtype = k_tile.dtype
        state_op = state.to(dtype)
        if TRANSPOSED:
            k_state = tl.dot(state_op, tl.trans(k_tile), input_precision=PRECISION)  # [BLOCK_N, C]
            x = (v_values - k_state) * b[None, :]
            v_new = tl.dot(x.to(dtype), tl.trans(tm_tile), input_precision=PRECISION).to(dtype)
            state = tl.dot(v_new, k_tile, state, input_precision=PRECISION)
        else:
            k_state = tl.dot(k_tile, state_op, input_precision=PRECISION)  # [C, BLOCK_N]
            x = (v_values - k_state) * b[:, None]
            v_new = tl.dot(tm_tile, x.to(dtype), input_precision=PRECISION).to(dtype)
            state = tl.dot(tl.trans(k_tile), v_new, state, input_precision=PRECISION)

    # (the offsets made again, not kept through the loop: they would hold registers there)
    if is_value:
        offsets, mask = tile_offsets(cols, cmask, dk, kmask, V, TRANSPOSED)
        tl.store(seg_values + (summary * H + head).to(tl.int64) * K * V + offsets, state, mask=mask)
    else:
        offsets, mask = tile_offsets(cols, cmask, dk, kmask, K, TRANSPOSED)
        tl.store(seg_transitions + (summary * H + head).to(tl.int64) * K * K + offsets, state,
                 mask=when(mask, first_segment == 0))


@triton.jit
def chunk_segment_combine_kernel(
    h0, seg_values, seg_transitions, seg_h0,
    SEGMENTS: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_H0: tl.constexpr, PRECISION: tl.constexpr,
):
    """The state entering every segment of (sequence, head) program_id(1), V tile program_id(0), into
    seg_h0 [B G, H, K, V] float32: segment 0's is the initial state (zeros without HAS_H0), segment 1's
    the first summary's b (run from the initial state), segment g + 1's A_g h_g + b_g. A_g's rows go
    BLOCK_ROWS at a time; h_g comes back from seg_h0, where this program just stored it (a barrier between)."""
    pid_sh = tl.program_id(1)
    seq = pid_sh // H
    head = pid_sh % H
    dk, dv, kmask, vmask, state_offs, state_mask = state_slice(K, V, BLOCK_K, BLOCK_V)
    state = state_tile(h0, (seq * H + head).to(tl.int64) * K * V, state_offs, state_mask, BLOCK_K, BLOCK_V, HAS_H0)
    first = (seq * SEGMENTS * H + head).to(tl.int64) * K * V
    tl.store(seg_h0 + first + state_offs, state, mask=state_mask)
    state = tl.load(seg_values + (seq * (SEGMENTS - 1) * H + head).to(tl.int64) * K * V + state_offs,
                    mask=state_mask, other=0.0)
    tl.store(seg_h0 + first + H * K * V + state_offs, state, mask=state_mask)
    rows = tl.arange(0, BLOCK_ROWS)
    for g in range(1, SEGMENTS - 1):
        summary = (seq * (SEGMENTS - 1) + g) * H + head
        entering = first + (g + 1) * H * K * V
        for r0 in range(0, BLOCK_K, BLOCK_ROWS):
            rr = r0 + rows
            rmask = rr < K
            a_rows = tl.load(seg_transitions + summary.to(tl.int64) * K * K + rr[:, None] * K + dk[None, :],
                             mask=rmask[:, None] & kmask[None, :], other=0.0)
            b_rows = tl.load(seg_values + summary.to(tl.int64) * K * V + rr[:, None] * V + dv[None, :],
                             mask=rmask[:, None] & vmask[None, :], other=0.0)
            new_rows = tl.dot(a_rows, state, b_rows, input_precision=PRECISION)
            tl.store(seg_h0 + entering + rr[:, None] * V + dv[None, :], new_rows, mask=rmask[:, None] & vmask[None, :])
        tl.debug_barrier()  # the rows above, stored by all threads, are read back whole
        state = tl.load(seg_h0 + entering + state_offs, mask=state_mask, other=0.0)
