"""Variant "torch_chunk": the chunkwise WY algorithm (UT transform) in plain PyTorch.

The CPU fallback and a second implementation, independent of the recurrence. Per chunk of C tokens
(../shared/deltanet.md):

    A  = strict_lower(diag(beta) K K^T)          [C, C]
    Tm = (I + A)^{-1}                            unit lower triangular (triangular solve)
    W  = Tm diag(beta) K    [C, K];    U = Tm diag(beta) V    [C, V]
    Vn = U - W h;   O = scale Q h + ((scale Q K^T) * M) Vn;   h <- h + K^T Vn

The intra-chunk products run batched over all chunks; only the state scan loops over chunks. Computes
in float32 (float64 for float64 inputs); differentiable through torch autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import autograd_backward, sequence_spans, state_dtype
from .registry import Problem, delta_rule_cost, register

CHUNK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def chunk_scan(q, k, v, beta, h0, scale: float, chunk_size: int):
    """Chunkwise delta rule over N equal-length sequences.

    q, k: [N, L, H, K]; v: [N, L, H, V]; beta: [N, L, H]; h0: [N, H, K, V]. Returns (o [N, L, H, V],
    final state [N, H, K, V]), all in the inputs' dtype.
    """
    N, L, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    if L == 0:
        return v.new_zeros(N, 0, H, V), h0
    pad = (-L) % C
    if pad:
        # padded rows have k = 0 and beta = 0: they add nothing to A, W, U or the state
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, 0, 0, pad))
    num_chunks = (L + pad) // C

    def chunks(x):  # [N, L', H, D] -> [N, H, NC, C, D]
        return x.reshape(N, num_chunks, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunks(q * scale), chunks(k), chunks(v)
    bc = beta.reshape(N, num_chunks, C, H).permute(0, 3, 1, 2)[..., None]  # [N, H, NC, C, 1]
    k_beta = kc * bc
    A = (k_beta @ kc.transpose(-1, -2)).tril(-1)
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    Tm = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    W = Tm @ k_beta
    U = Tm @ (vc * bc)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    attn = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0)  # [N, H, NC, C, C]

    h = h0
    outs = []
    for c in range(num_chunks):
        v_new = U[:, :, c] - W[:, :, c] @ h  # [N, H, C, V]
        outs.append(qc[:, :, c] @ h + attn[:, :, c] @ v_new)
        h = h + kc[:, :, c].transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(N, num_chunks * C, H, V)
    return o[:, :L], h


def torch_chunk_forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size):
    B, T, H, K = k.shape
    V = v.shape[-1]
    chunk_size = config["chunk_size"]
    compute = state_dtype(q.dtype)
    q_, k_, v_, b_ = (x.to(compute) for x in (q, k, v, beta))
    if initial_state is None:
        num_seqs = B if cu_seqlens is None else cu_seqlens.numel() - 1
        h0 = q_.new_zeros(num_seqs, H, K, V)
    else:
        h0 = initial_state.to(compute)
    if cu_seqlens is None:
        o, final_state = chunk_scan(q_, k_, v_, b_, h0, scale, chunk_size)
    else:
        outs, finals = [], []
        for n, (_, start, end) in enumerate(sequence_spans(B, T, cu_seqlens)):
            o_n, h_n = chunk_scan(
                q_[:, start:end], k_[:, start:end], v_[:, start:end], b_[:, start:end], h0[n : n + 1], scale, chunk_size
            )
            outs.append(o_n)
            finals.append(h_n)
        o = torch.cat(outs, dim=1)
        final_state = torch.cat(finals)
    return o.to(v.dtype), (final_state.to(state_dtype(q.dtype)) if output_final_state else None)


def _cost(problem: Problem, config: dict):
    return delta_rule_cost(problem, config["chunk_size"])


register(
    "torch_chunk",
    backward=autograd_backward(torch_chunk_forward),
    description="chunkwise WY (UT transform) in PyTorch; any chunk size",
    dtypes=(torch.float64, torch.float32, torch.float16, torch.bfloat16),
    devices=("cpu", "cuda"),
    max_head_dim=4096,
    space={"chunk_size": CHUNK_SIZES},
    default_config={"chunk_size": 64},
    cost=_cost,
)(torch_chunk_forward)
