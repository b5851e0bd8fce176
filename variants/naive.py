"""Variant "reference": the token-by-token recurrence of ../shared/deltanet.md in float64.

The oracle every other variant is checked against. Whatever the input dtype it computes in float64
(o is returned in v's dtype, the final state in float32 -- or float64 for float64 inputs) and is
differentiable through torch autograd.

    u_t = beta_t (v_t - h_{t-1}^T k_t);  h_t = h_{t-1} + k_t u_t^T;  o_t = h_t^T (scale q_t)
"""

from __future__ import annotations

import torch

from .common import autograd_backward, sequence_spans, state_dtype
from .registry import register


def reference_forward(q, k, v, beta, *, scale, initial_state, output_final_state, cu_seqlens, config, block_size):
    B, T, H, K = k.shape
    V = v.shape[-1]
    q64, k64, v64, b64 = (x.to(torch.float64) for x in (q, k, v, beta))
    q64 = q64 * scale
    outputs, finals = [], []
    for n, (b, start, end) in enumerate(sequence_spans(B, T, cu_seqlens)):
        if initial_state is not None:
            h = initial_state[n].to(torch.float64)
        else:
            h = torch.zeros(H, K, V, dtype=torch.float64, device=q.device)
        rows = []
        for t in range(start, end):
            k_t = k64[b, t]  # [H, K]
            u = b64[b, t, :, None] * (v64[b, t] - torch.einsum("hkv,hk->hv", h, k_t))  # [H, V]
            h = h + k_t[:, :, None] * u[:, None, :]
            rows.append(torch.einsum("hkv,hk->hv", h, q64[b, t]))
        outputs.append(torch.stack(rows) if rows else v64.new_zeros(0, H, V))
        finals.append(h)
    if cu_seqlens is None:
        o = torch.stack(outputs)  # [B, T, H, V]
    else:
        o = torch.cat(outputs)[None]  # [1, T, H, V]
    final_state = torch.stack(finals).to(state_dtype(q.dtype)) if output_final_state else None
    return o.to(v.dtype), final_state


register(
    "reference",
    backward=autograd_backward(reference_forward),
    description="float64 token-by-token recurrence (the oracle)",
    dtypes=(torch.float64, torch.float32, torch.float16, torch.bfloat16),
    devices=("cpu", "cuda"),
    max_head_dim=4096,
    is_reference=True,
)(reference_forward)
