"""Backward stage B4 of variant "chunk": back through the UT transform, one (chunk, head) tile at a time.

With X = diag(b) K, Y = diag(b) V, W = Tm X, U = Tm Y and Tm = (I + A)^{-1} recomputed in float32 by
``chunk_inverse`` (or, with LOAD_TM, read from the input-dtype copy the backward's intra-chunk recompute
stored) (../shared/deltanet.md):

    dY  = Tm^T dU                   -> dv = b (.) dY,   db += rowsum(dY (.) V)
    dTm = dW X^T + dU Y^T           [C, C]
    dA  = strict_lower(-Tm^T dTm Tm^T)   (products of input-dtype operands, float32 accumulation)
    dX  = Tm^T dW                   -> dk += b (.) dX,  db += rowsum(dX (.) K)
    A_ij = b_i k_i.k_j:   dk += b (.) (dA K) + dA^T (b (.) K),   db += rowsum((dA K) (.) K)

dk starts from the partial dK of chunk_backward_grads.py (float32) and is written in the input dtype.
Persistent like the intra-chunk kernel (a few programs per SM walk the tiles chunk * H + head), each
program with its float32 [C, C] workspace for the inverse.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_intra import chunk_inverse, chunk_inverse_registers, load_tm, persistent_tile


@triton.jit
def chunk_wy_bwd_kernel(
    k, v, beta, dw, du, dk_partial, dk, dv, dbeta, tm_in, scratch, chunk_table, T, num_tiles,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, INV_PRECISION: tl.constexpr, LOAD_TM: tl.constexpr, REGISTER_INVERSE: tl.constexpr,
):
    """dk, dv, dbeta of tiles program_id(0), + num_programs(0), ... (tile = chunk * H + head)."""
    scratch += tl.program_id(0).to(tl.int64) * C * C
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        head, start, end, tok, tmask = persistent_tile(tile, chunk_table, T, H, C, IS_VARLEN)
        rows = tl.arange(0, C)
        if LOAD_TM:
            # Tm^T from the copy the intra-chunk recompute stored (rows past the chunk's end read as 0:
            # they only ever meet zero rows of dW, dU, K and V)
            tm_op_t = tl.load(tm_in + (tok * H + head)[None, :] * C + rows[:, None], mask=tmask[None, :], other=0.0)
        elif REGISTER_INVERSE:
            tm = chunk_inverse_registers(k, beta, start, end, head, H, K, C, BLOCK_K, PRECISION, INV_PRECISION)
            tm_op_t = tl.trans(tm.to(k.dtype.element_ty))
        else:
            chunk_inverse(k, beta, start, end, head, scratch, H, K, C, BLOCK_K, PRECISION, INV_PRECISION)
            # Tm^T in the input dtype straight from the workspace: no float32 [C, C] tile held
            # (registers are this kernel's bottleneck)
            tm_op_t = load_tm(scratch, C, True).to(k.dtype.element_ty)
        b = tl.load(beta + tok * H + head, mask=tmask, other=0.0).to(tl.float32)
        dtm = tl.zeros([C, C], dtype=tl.float32)
        dbeta_acc = tl.zeros([C], dtype=tl.float32)

        for e0 in range(0, V, BLOCK_V):
            ee = e0 + tl.arange(0, BLOCK_V)
            m = tmask[:, None] & (ee < V)[None, :]
            offs = (tok * H + head)[:, None] * V + ee[None, :]
            du_tile = tl.load(du + offs, mask=m, other=0.0)
            v_tile = tl.load(v + offs, mask=m, other=0.0).to(tl.float32)
            vb = (v_tile * b[:, None]).to(du_tile.dtype)
            dtm = tl.dot(du_tile, tl.trans(vb), dtm, input_precision=PRECISION)
            dy = tl.dot(tm_op_t, du_tile, input_precision=PRECISION)
            tl.store(dv + offs, (dy * b[:, None]).to(dv.dtype.element_ty), mask=m)
            dbeta_acc += tl.sum(dy * v_tile, axis=1)

        for d0 in range(0, K, BLOCK_K):
            dd = d0 + tl.arange(0, BLOCK_K)
            m = tmask[:, None] & (dd < K)[None, :]
            offs = (tok * H + head)[:, None] * K + dd[None, :]
            dw_tile = tl.load(dw + offs, mask=m, other=0.0)
            k_tile = tl.load(k + offs, mask=m, other=0.0).to(tl.float32)
            kb = (k_tile * b[:, None]).to(dw_tile.dtype)
            dtm = tl.dot(dw_tile, tl.trans(kb), dtm, input_precision=PRECISION)

        # dA = strict_lower(-Tm^T dTm Tm^T): float32 accumulation of input-dtype operands (exact for float32)
        da = tl.dot(dtm.to(k.dtype.element_ty), tm_op_t, input_precision=PRECISION)
        da = -tl.dot(tm_op_t, da.to(k.dtype.element_ty), input_precision=PRECISION)
        da = tl.where(rows[:, None] > rows[None, :], da, 0.0)
        da_op = da.to(k.dtype.element_ty)
        da_op_t = tl.trans(da_op)

        for d0 in range(0, K, BLOCK_K):
            dd = d0 + tl.arange(0, BLOCK_K)
            m = tmask[:, None] & (dd < K)[None, :]
            offs = (tok * H + head)[:, None] * K + dd[None, :]
            dw_tile = tl.load(dw + offs, mask=m, other=0.0)
            k_raw = tl.load(k + offs, mask=m, other=0.0)
            k_tile = k_raw.to(tl.float32)
            kb = (k_tile * b[:, None]).to(k_raw.dtype)
            dx = tl.dot(tm_op_t, dw_tile, input_precision=PRECISION)
            dak = tl.dot(da_op, k_raw, input_precision=PRECISION)
            grad = tl.load(dk_partial + offs, mask=m, other=0.0)
            grad += b[:, None] * (dx + dak)
            grad = tl.dot(da_op_t, kb, grad, input_precision=PRECISION)
            tl.store(dk + offs, grad.to(dk.dtype.element_ty), mask=m)
            dbeta_acc += tl.sum((dx + dak) * k_tile, axis=1)

        tl.store(dbeta + tok * H + head, dbeta_acc.to(dbeta.dtype.element_ty), mask=tmask)
