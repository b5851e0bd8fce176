"""Helpers shared by the variants: sequence spans of (packed) batches and a generic autograd backward."""

from __future__ import annotations

from typing import Callable, Optional

import torch


def sequence_spans(batch: int, seq_len: int, cu_seqlens: Optional[torch.Tensor]) -> list[tuple[int, int, int]]:
    """The sequences of a call as (batch index, start, end) token ranges.

    Without ``cu_seqlens`` every batch row is one sequence of ``seq_len`` tokens; with it (B == 1) the
    packed sequences are [cu[i], cu[i+1]) of row 0.
    """
    if cu_seqlens is None:
        return [(b, 0, seq_len) for b in range(batch)]
    bounds = cu_seqlens.tolist()
    return [(0, start, end) for start, end in zip(bounds[:-1], bounds[1:])]


def state_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """States are float32, or float64 when the inputs are float64."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def autograd_backward(forward: Callable[..., tuple]) -> Callable[..., tuple]:
    """A ``backward`` for a variant written in differentiable torch: recompute forward, then autograd.grad."""

    def backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config, block_size):
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_() for x in (q, k, v, beta)]
            h0 = None if initial_state is None else initial_state.detach().requires_grad_()
            o, final_state = forward(
                *inputs,
                scale=scale,
                initial_state=h0,
                output_final_state=dfinal_state is not None,
                cu_seqlens=cu_seqlens,
                config=config,
                block_size=block_size,
            )
            outputs, grads = [o], [do]
            if dfinal_state is not None:
                outputs.append(final_state)
                grads.append(dfinal_state)
            wrt = inputs + ([h0] if h0 is not None else [])
            result = torch.autograd.grad(outputs, wrt, grads, allow_unused=True)
        result = [torch.zeros_like(x) if g is None else g for g, x in zip(result, wrt)]
        dq, dk, dv, dbeta = result[:4]
        dh0 = result[4] if h0 is not None else None
        return dq, dk, dv, dbeta, dh0

    return backward


def triton_interpreting() -> bool:
    """True when Triton kernels run under its CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_devices() -> tuple[str, ...]:
    """Device types a Triton variant can run on: CUDA, plus CPU tensors under the interpreter."""
    return ("cuda", "cpu") if triton_interpreting() else ("cuda",)
