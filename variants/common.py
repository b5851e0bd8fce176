"""Helpers shared by the variants: sequence spans of (packed) batches, a generic autograd backward, and ``when``
for the kernels' masks."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl


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
    """A ``backward`` for a variant written in differentiable torch: the vector-Jacobian product of its
    forward. torch.func.vjp is used rather than torch.autograd.grad because the backward runs inside a
    torch.library custom op, below the autograd dispatch key, where only functorch's transforms still
    differentiate."""

    def backward(q, k, v, beta, *, scale, initial_state, cu_seqlens, do, dfinal_state, config, block_size):
        with_state = initial_state is not None

        def run(q, k, v, beta, *state):
            o, final_state = forward(
                q,
                k,
                v,
                beta,
                scale=scale,
                initial_state=state[0] if with_state else None,
                output_final_state=dfinal_state is not None,
                cu_seqlens=cu_seqlens,
                config=config,
                block_size=block_size,
            )
            return (o, final_state) if dfinal_state is not None else (o,)

        primals = (q, k, v, beta) + ((initial_state,) if with_state else ())
        _, vjp = torch.func.vjp(run, *primals)
        cotangents = (do, dfinal_state) if dfinal_state is not None else (do,)
        grads = vjp(cotangents)
        dq, dk, dv, dbeta = grads[:4]
        return dq, dk, dv, dbeta, (grads[4] if with_state else None)

    return backward


def triton_interpreting() -> bool:
    """True when Triton kernels run under its CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_devices() -> tuple[str, ...]:
    """Device types a Triton variant can run on: CUDA, plus CPU tensors under the interpreter."""
    return ("cuda", "cpu") if triton_interpreting() else ("cuda",)


@triton.jit
def when(mask, condition):
    """``mask`` where the scalar ``condition`` holds, else all False. The kernels combine a mask with a scalar
    condition through this, never with ``&``: Triton 3.9's interpreter makes int32 of a boolean tensor & a boolean
    scalar, which tl.load and tl.store reject ("mask has unsupported dtype")."""
    return tl.where(condition, mask, False)
