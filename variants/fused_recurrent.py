"""Variant "recurrent": the token-by-token delta rule as Triton kernels, the state held on chip.

The recurrence of ../shared/deltanet.md, one token at a time, for one (sequence, head, tile of V) per
program; the [K, block_v] float32 state tile stays in registers for the whole sequence:

    delta_t = v_t - h_{t-1}^T k_t            pseudo value before beta        [block_v]
    u_t     = beta_t delta_t
    h_t     = h_{t-1} + k_t u_t^T                                            [K, block_v]
    o_t     = h_t^T (scale q_t) = scale (h_{t-1}^T q_t + (k_t . q_t) u_t)

Writing o_t through h_{t-1} lets its reduction over K run side by side with the one for delta_t, so each
step has a single reduction on the state's dependency chain. No load depends on the state, so every load
is issued ahead of the arithmetic that needs it: the V-length vectors and scalars (v, beta; do, delta in
the backward) one token ahead, in registers; q and k too with ``num_stages=1``, while with
``num_stages >= 2`` they are loaded in the loop and Triton's software pipeliner fetches them
num_stages - 1 tokens ahead into shared memory (cp.async, which the narrower loads are too small for).
Pointers advance by one token stride per step; no index is recomputed in the loop.

Backward (the custom op saves only q, k, v, beta and the initial state, so everything is recomputed):

1. ``_recurrent_fwd_kernel`` in recompute mode runs the forward again without writing o; it writes
   delta_t (float32 [B, T, H, V]), the final state h_T, and dq_t = scale h_t do_t.
2. ``_recurrent_bwd_kernel`` walks the tokens backwards from h_T, rebuilding h_{t-1} = h_t - k_t u_t^T
   and carrying dh = dL/dh_t:
       dh   += scale q_t do_t^T
       du    = dh^T k_t;   dv_t = beta_t du;   dbeta_t = du . delta_t
       dk_t  = dh u_t - beta_t h_{t-1} du
       dh   <- dh - beta_t k_t du^T          (now dL/dh_{t-1}; after token 0 it is dL/dh_0)

dq, dk and dbeta are sums over the V tiles: with one tile the kernels store them directly, with several
they add float32 partials atomically (so their last bits may differ from run to run). The backward holds
two state tiles where the forward holds one, so it runs with the config's block_v halved until both fit in
registers (``backward_block_v``); the config otherwise applies to both directions.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from .common import triton_devices, when
from .registry import Config, Problem, delta_rule_cost, register

BLOCK_V_CHOICES = (8, 16, 32, 64, 128, 256)
NUM_WARPS_CHOICES = (1, 2, 4, 8)
NUM_STAGES_CHOICES = (1, 2, 3, 4)

# Float32 state values one thread can hold without spilling: compiled for sm_90 (ptxas), the forward keeps
# a [K, block_v] tile of up to 128 values per thread in registers, and so does the backward with its two
# tiles (h and dh) together; at 256 per thread the backward spills to local memory.
MAX_STATE_VALUES_PER_THREAD = 128
THREADS_PER_WARP = 32


# --------------------------------------------------------------------------------------------- kernels
@triton.jit
def _program_tile(cu_seqlens_ptr, seq_len_arg, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, IS_VARLEN: tl.constexpr):
    """What a recurrent program (program_id 0 = sequence n * H + head h, program_id 1 = V tile) works on:
    its head, the sequence's first flat token and length, the state tile's key / value offsets and masks,
    and the tile's offsets into an [N, H, K, V] state tensor."""
    i_nh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens_ptr + i_n).to(tl.int64)
        seq_len = (tl.load(cu_seqlens_ptr + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_n * seq_len_arg
        seq_len = seq_len_arg
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_k = offs_k < K
    mask_v = offs_v < V
    mask_h = mask_k[:, None] & mask_v[None, :]
    state_offs = i_nh * K * V + offs_k[:, None] * V + offs_v[None, :]
    return i_h, bos, seq_len, offs_k, offs_v, mask_k, mask_v, mask_h, state_offs


@triton.jit(do_not_specialize=["seq_len_arg"])
def _recurrent_fwd_kernel(
    q_ptr,  # [B, T, H, K]
    k_ptr,  # [B, T, H, K]
    v_ptr,  # [B, T, H, V]
    beta_ptr,  # [B, T, H]
    h0_ptr,  # [N, H, K, V] float32, or None
    o_ptr,  # [B, T, H, V], written when STORE_O
    ht_ptr,  # [N, H, K, V] float32, written when STORE_HT
    do_ptr,  # [B, T, H, V]: upstream gradient of o (RECOMPUTE only)
    delta_ptr,  # [B, T, H, V] float32: v_t - h_{t-1}^T k_t (RECOMPUTE only)
    dq_ptr,  # [B, T, H, K] (float32 and zeroed when DQ_ATOMIC) (RECOMPUTE only)
    cu_seqlens_ptr,  # [N + 1] offsets, or None
    scale,
    seq_len_arg,  # T (sequence length when not packed)
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_O: tl.constexpr,
    STORE_HT: tl.constexpr,
    RECOMPUTE: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """One program: sequence n, head h (program_id 0 = n * H + h) and V tile program_id 1, all tokens."""
    i_h, bos, seq_len, offs_k, offs_v, mask_k, mask_v, mask_h, state_offs = _program_tile(
        cu_seqlens_ptr, seq_len_arg, H, K, V, BLOCK_K, BLOCK_V, IS_VARLEN
    )

    # the state tile h [BLOCK_K, BLOCK_V]; padded rows and columns stay zero throughout
    if HAS_H0:
        h = tl.load(h0_ptr + state_offs, mask=mask_h, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)

    row = bos * H + i_h  # flat token-row index of token 0 of this (sequence, head)
    p_q = q_ptr + row * K + offs_k
    p_k = k_ptr + row * K + offs_k
    p_v = v_ptr + row * V + offs_v
    p_beta = beta_ptr + row
    if STORE_O:
        p_o = o_ptr + row * V + offs_v
    if RECOMPUTE:
        p_do = do_ptr + row * V + offs_v
        p_delta = delta_ptr + row * V + offs_v
        p_dq = dq_ptr + row * K + offs_k

    # Token 0's operands, loaded ahead of the loop (masked off for an empty sequence). The narrow loads
    # (v, beta, do) are always prefetched one token ahead in registers; the key-length vectors q and k too
    # when NUM_STAGES == 1, else they are loaded in the loop and Triton's pipeliner issues them
    # NUM_STAGES - 1 tokens ahead through shared memory.
    live = seq_len > 0
    b_v = tl.load(p_v, mask=when(mask_v, live), other=0.0)
    b_beta = tl.load(p_beta, mask=live, other=0.0)
    if RECOMPUTE:
        b_do = tl.load(p_do, mask=when(mask_v, live), other=0.0)
    if NUM_STAGES == 1:
        b_k = tl.load(p_k, mask=when(mask_k, live), other=0.0)
        if STORE_O:
            b_q = tl.load(p_q, mask=when(mask_k, live), other=0.0)

    for t in tl.range(0, seq_len, num_stages=NUM_STAGES):
        # issue the next token's loads first: they do not depend on the state
        live = t + 1 < seq_len
        p_v += H * V
        p_beta += H
        n_v = tl.load(p_v, mask=when(mask_v, live), other=0.0)
        n_beta = tl.load(p_beta, mask=live, other=0.0)
        if RECOMPUTE:
            p_do += H * V
            n_do = tl.load(p_do, mask=when(mask_v, live), other=0.0)
        if NUM_STAGES == 1:
            p_k += H * K
            n_k = tl.load(p_k, mask=when(mask_k, live), other=0.0)
            if STORE_O:
                p_q += H * K
                n_q = tl.load(p_q, mask=when(mask_k, live), other=0.0)
        else:
            b_k = tl.load(p_k, mask=mask_k, other=0.0)
            p_k += H * K
            if STORE_O:
                b_q = tl.load(p_q, mask=mask_k, other=0.0)
                p_q += H * K

        k_t = b_k.to(tl.float32)
        beta_t = b_beta.to(tl.float32)
        delta = b_v.to(tl.float32) - tl.sum(h * k_t[:, None], axis=0)  # [BLOCK_V]
        u = beta_t * delta
        if STORE_O:
            q_t = b_q.to(tl.float32)
            read = tl.sum(h * q_t[:, None], axis=0)  # h_{t-1}^T q_t, beside the reduction above
            o_t = scale * (read + tl.sum(k_t * q_t) * u)
            tl.store(p_o, o_t.to(o_ptr.dtype.element_ty), mask=mask_v)
            p_o += H * V
        if RECOMPUTE:
            # dq_t = scale h_t do_t = scale (h_{t-1} do_t + k_t (u_t . do_t)); partial over this V tile
            do_t = b_do.to(tl.float32)
            dq_t = scale * (tl.sum(h * do_t[None, :], axis=1) + k_t * tl.sum(u * do_t))
            if DQ_ATOMIC:
                tl.atomic_add(p_dq, dq_t, mask=mask_k, sem="relaxed")
            else:
                tl.store(p_dq, dq_t.to(dq_ptr.dtype.element_ty), mask=mask_k)
            tl.store(p_delta, delta, mask=mask_v)
            p_dq += H * K
            p_delta += H * V
            b_do = n_do
        h += k_t[:, None] * u[None, :]

        b_v = n_v
        b_beta = n_beta
        if NUM_STAGES == 1:
            b_k = n_k
            if STORE_O:
                b_q = n_q

    if STORE_HT:
        tl.store(ht_ptr + state_offs, h, mask=mask_h)


@triton.jit(do_not_specialize=["seq_len_arg"])
def _recurrent_bwd_kernel(
    q_ptr,  # [B, T, H, K]
    k_ptr,  # [B, T, H, K]
    beta_ptr,  # [B, T, H]
    delta_ptr,  # [B, T, H, V] float32, from the recompute pass
    do_ptr,  # [B, T, H, V]
    ht_ptr,  # [N, H, K, V] float32: the final state h_T, from the recompute pass
    dht_ptr,  # [N, H, K, V] float32: gradient of the final state, or None
    dh0_ptr,  # [N, H, K, V] float32: written when STORE_DH0
    dk_ptr,  # [B, T, H, K] (float32 and zeroed when ATOMIC)
    dv_ptr,  # [B, T, H, V]
    dbeta_ptr,  # [B, T, H] (float32 and zeroed when ATOMIC)
    cu_seqlens_ptr,
    scale,
    seq_len_arg,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    ATOMIC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """One program: sequence n, head h, one V tile; walks the tokens from last to first."""
    i_h, bos, seq_len, offs_k, offs_v, mask_k, mask_v, mask_h, state_offs = _program_tile(
        cu_seqlens_ptr, seq_len_arg, H, K, V, BLOCK_K, BLOCK_V, IS_VARLEN
    )

    h = tl.load(ht_ptr + state_offs, mask=mask_h, other=0.0)  # h_T [BLOCK_K, BLOCK_V]
    if HAS_DHT:
        dh = tl.load(dht_ptr + state_offs, mask=mask_h, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)

    row = (bos + seq_len - 1) * H + i_h  # flat token-row index of the last token
    p_q = q_ptr + row * K + offs_k
    p_k = k_ptr + row * K + offs_k
    p_beta = beta_ptr + row
    p_delta = delta_ptr + row * V + offs_v
    p_do = do_ptr + row * V + offs_v
    p_dk = dk_ptr + row * K + offs_k
    p_dv = dv_ptr + row * V + offs_v
    p_dbeta = dbeta_ptr + row

    # prefetching as in the forward kernel: beta, delta, do one token ahead in registers; q and k too
    # when NUM_STAGES == 1, else through Triton's pipeliner
    live = seq_len > 0
    b_beta = tl.load(p_beta, mask=live, other=0.0)
    b_delta = tl.load(p_delta, mask=when(mask_v, live), other=0.0)
    b_do = tl.load(p_do, mask=when(mask_v, live), other=0.0)
    if NUM_STAGES == 1:
        b_q = tl.load(p_q, mask=when(mask_k, live), other=0.0)
        b_k = tl.load(p_k, mask=when(mask_k, live), other=0.0)

    for t in tl.range(0, seq_len, num_stages=NUM_STAGES):
        # the previous token's loads first (the loop walks backwards)
        live = t + 1 < seq_len
        p_beta -= H
        p_delta -= H * V
        p_do -= H * V
        n_beta = tl.load(p_beta, mask=live, other=0.0)
        n_delta = tl.load(p_delta, mask=when(mask_v, live), other=0.0)
        n_do = tl.load(p_do, mask=when(mask_v, live), other=0.0)
        if NUM_STAGES == 1:
            p_q -= H * K
            p_k -= H * K
            n_q = tl.load(p_q, mask=when(mask_k, live), other=0.0)
            n_k = tl.load(p_k, mask=when(mask_k, live), other=0.0)
        else:
            b_q = tl.load(p_q, mask=mask_k, other=0.0)
            b_k = tl.load(p_k, mask=mask_k, other=0.0)
            p_q -= H * K
            p_k -= H * K

        q_t = b_q.to(tl.float32) * scale
        k_t = b_k.to(tl.float32)
        beta_t = b_beta.to(tl.float32)
        do_t = b_do.to(tl.float32)
        u = beta_t * b_delta
        dh += q_t[:, None] * do_t[None, :]  # dL/dh_t, o_t's share included
        du = tl.sum(dh * k_t[:, None], axis=0)  # [BLOCK_V]
        h -= k_t[:, None] * u[None, :]  # h_{t-1}
        beta_du = beta_t * du
        dk_t = tl.sum(dh * u[None, :] - h * beta_du[None, :], axis=1)  # [BLOCK_K], partial over V
        dbeta_t = tl.sum(du * b_delta)
        tl.store(p_dv, beta_du.to(dv_ptr.dtype.element_ty), mask=mask_v)
        if ATOMIC:
            tl.atomic_add(p_dk, dk_t, mask=mask_k, sem="relaxed")
            tl.atomic_add(p_dbeta, dbeta_t, sem="relaxed")
        else:
            tl.store(p_dk, dk_t.to(dk_ptr.dtype.element_ty), mask=mask_k)
            tl.store(p_dbeta, dbeta_t.to(dbeta_ptr.dtype.element_ty))
        dh -= k_t[:, None] * beta_du[None, :]  # dL/dh_{t-1}, without o_{t-1}'s share
        p_dk -= H * K
        p_dv -= H * V
        p_dbeta -= H

        b_beta = n_beta
        b_delta = n_delta
        b_do = n_do
        if NUM_STAGES == 1:
            b_q = n_q
            b_k = n_k

    if STORE_DH0:
        tl.store(dh0_ptr + state_offs, dh, mask=mask_h)


# --------------------------------------------------------------------------------------------- launchers
def _alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Every output buffer the kernels fully overwrite comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _device_guard(x: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _num_seqs(B: int, cu_seqlens: Optional[torch.Tensor]) -> int:
    return B if cu_seqlens is None else cu_seqlens.numel() - 1


def _check_block_size(block_size: Optional[int], K: int) -> None:
    if block_size is not None and block_size != K:
        raise ValueError(f"block_size: the recurrent delta rule needs block_size == K={K}, got {block_size}")


def _launch_forward(
    q, k, v, beta, *, scale, initial_state, cu_seqlens, config,
    o=None, final_state=None, do=None, delta=None, dq=None,
) -> None:
    """Run ``_recurrent_fwd_kernel`` into the given buffers; ``do``/``delta``/``dq`` select recompute mode."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    block_v = config["block_v"]
    num_tiles = triton.cdiv(V, block_v)
    grid = (_num_seqs(B, cu_seqlens) * H, num_tiles)
    with _device_guard(q):
        _recurrent_fwd_kernel[grid](
            q, k, v, beta, initial_state, o, final_state, do, delta, dq, cu_seqlens,
            float(scale), T,
            H=H, K=K, V=V,
            BLOCK_K=triton.next_power_of_2(K),
            BLOCK_V=block_v,
            HAS_H0=initial_state is not None,
            STORE_O=o is not None,
            STORE_HT=final_state is not None,
            RECOMPUTE=do is not None,
            DQ_ATOMIC=num_tiles > 1,
            IS_VARLEN=cu_seqlens is not None,
            NUM_STAGES=config["num_stages"],
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )


def recurrent_forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size):
    """Variant forward: (o [B, T, H, V] in v's dtype, final state [N, H, K, V] float32 or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_block_size(block_size, K)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    N = _num_seqs(B, cu_seqlens)
    o = _alloc((B, T, H, V), v.dtype, v.device)
    final_state = _alloc((N, H, K, V), torch.float32, q.device) if output_final_state else None
    if T == 0:  # nothing to launch: every sequence is empty
        if final_state is not None:
            final_state.copy_(initial_state if initial_state is not None else torch.zeros_like(final_state))
        return o, final_state
    _launch_forward(
        q, k, v, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, config=config,
        o=o, final_state=final_state,
    )
    return o, final_state


def recurrent_backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config, block_size):
    """Variant backward: (dq, dk, dv, dbeta, dinitial_state or None), by recompute then a reverse scan."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_block_size(block_size, K)
    q, k, v, beta, do = (x.contiguous() for x in (q, k, v, beta, do))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if dfinal_state is not None:
        dfinal_state = dfinal_state.contiguous()
    N = _num_seqs(B, cu_seqlens)
    device = q.device
    if T == 0:  # no tokens: the initial state's gradient is the final state's
        dh0 = None
        if initial_state is not None:
            dh0 = dfinal_state.to(torch.float32).clone() if dfinal_state is not None else torch.zeros_like(initial_state)
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(beta), dh0

    block_v = backward_block_v(config, K)
    num_tiles = triton.cdiv(V, block_v)
    # with several V tiles, dq, dk and dbeta are float32 sums of per-tile partials
    atomic = num_tiles > 1

    def reduced(like: torch.Tensor) -> torch.Tensor:
        if atomic:
            return torch.zeros(like.shape, dtype=torch.float32, device=device)
        return _alloc(like.shape, like.dtype, device)

    dq, dk, dbeta = reduced(q), reduced(k), reduced(beta)
    dv = _alloc(v.shape, v.dtype, device)
    delta = _alloc((B, T, H, V), torch.float32, device)
    final_state = _alloc((N, H, K, V), torch.float32, device)
    dh0 = _alloc((N, H, K, V), torch.float32, device) if initial_state is not None else None

    config = {**config, "block_v": block_v}
    _launch_forward(
        q, k, v, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, config=config,
        final_state=final_state, do=do, delta=delta, dq=dq,
    )
    grid = (N * H, num_tiles)
    with _device_guard(q):
        _recurrent_bwd_kernel[grid](
            q, k, beta, delta, do, final_state, dfinal_state, dh0, dk, dv, dbeta, cu_seqlens,
            float(scale), T,
            H=H, K=K, V=V,
            BLOCK_K=triton.next_power_of_2(K),
            BLOCK_V=block_v,
            HAS_DHT=dfinal_state is not None,
            STORE_DH0=dh0 is not None,
            ATOMIC=atomic,
            IS_VARLEN=cu_seqlens is not None,
            NUM_STAGES=config["num_stages"],
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )
    if atomic:
        dq, dk, dbeta = dq.to(q.dtype), dk.to(k.dtype), dbeta.to(beta.dtype)
    return dq, dk, dv, dbeta, dh0


# --------------------------------------------------------------------------------------------- registry
def _state_values_per_thread(key_dim: int, block_v: int, num_warps: int, tiles: int) -> int:
    return tiles * triton.next_power_of_2(key_dim) * block_v // (THREADS_PER_WARP * num_warps)


def backward_block_v(config: Config, key_dim: int) -> int:
    """The V tile of the backward kernels: the config's, halved until h and dh fit in registers together."""
    block_v = config["block_v"]
    while block_v > min(BLOCK_V_CHOICES) and (
        _state_values_per_thread(key_dim, block_v, config["num_warps"], tiles=2) > MAX_STATE_VALUES_PER_THREAD
    ):
        block_v //= 2
    return block_v


def recurrent_constraints(config: Config, problem: Problem) -> Optional[str]:
    """Why ``config`` cannot run ``problem`` well (None when it can); checked before anything compiles."""
    block_v, num_warps = config["block_v"], config["num_warps"]
    block_k = triton.next_power_of_2(problem.K)
    v_tile_needed = triton.next_power_of_2(problem.V)
    if block_v > v_tile_needed:
        return f"block_v={block_v} is larger than needed: V={problem.V} fits one tile of {v_tile_needed}"
    threads = THREADS_PER_WARP * num_warps
    tile = block_k * block_v
    if tile < threads:
        return (
            f"num_warps={num_warps} gives {threads} threads for a {block_k} x {block_v} state tile of only {tile} "
            f"values; use fewer warps or a larger block_v"
        )
    per_thread = _state_values_per_thread(problem.K, block_v, num_warps, tiles=1)
    if per_thread > MAX_STATE_VALUES_PER_THREAD:
        return (
            f"state tile too large for registers: {block_k} x {block_v} float32 = {tile} values, {per_thread} per "
            f"thread with num_warps={num_warps} (limit {MAX_STATE_VALUES_PER_THREAD}); use a smaller block_v or "
            f"more warps"
        )
    return None


def _cost(problem: Problem, config: Config):
    return delta_rule_cost(problem, chunk_size=1)


register(
    "recurrent",
    family="delta_rule",
    backward=recurrent_backward,
    description="Triton token-by-token recurrence, state tile on chip; parallel over sequences, heads, V tiles",
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    devices=triton_devices(),
    min_head_dim=16,
    max_head_dim=256,
    varlen=True,
    space={"block_v": BLOCK_V_CHOICES, "num_warps": NUM_WARPS_CHOICES, "num_stages": NUM_STAGES_CHOICES},
    default_config={"block_v": 8, "num_warps": 1, "num_stages": 3},
    constraints=recurrent_constraints,
    cost=_cost,
    is_triton=True,
)(recurrent_forward)
