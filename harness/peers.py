"""Peers: other implementations the sweeps time next to ours, on the same inputs.

* "fla_chunk", "fla_recurrent" -- flash-linear-attention's ``chunk_delta_rule`` and
  ``fused_recurrent_delta_rule`` (PyPI ``fla-core``, optional; imported lazily, only when installed).
  Benchmark peers only: the op never imports them.
* "sdpa" -- ``torch.nn.functional.scaled_dot_product_attention`` with a causal mask, the Transformer
  baseline (q, k, v as [B, H, T, D] views of the [B, T, H, D] inputs).

Each peer has a support check (``unsupported_reason``), a forward over the harness's inputs
(``make_forward``) and a cost model (``cost``) for roofline figures.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable, Optional

import torch

from deltalab.variants.registry import Cost, Problem, delta_rule_cost

FLA_PEERS = ("fla_chunk", "fla_recurrent")
PEERS = FLA_PEERS + ("sdpa",)


def is_peer(name: str) -> bool:
    return name in PEERS


@functools.lru_cache(maxsize=1)
def _fla_ops() -> Optional[tuple[Callable, Callable]]:
    """(chunk_delta_rule, fused_recurrent_delta_rule) from fla, or None when fla is not importable."""
    if importlib.util.find_spec("fla") is None:
        return None
    try:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
    except Exception:  # noqa: BLE001 -- a broken install is the same as none for a benchmark peer
        return None
    return chunk_delta_rule, fused_recurrent_delta_rule


def available() -> list[str]:
    """The peers installed here: the fla pair when ``fla.ops.delta_rule`` imports, and "sdpa"."""
    names = list(FLA_PEERS) if _fla_ops() is not None else []
    return names + ["sdpa"]


def unsupported_reason(name: str, problem: Problem, family: str = "delta_rule") -> Optional[str]:
    """Why peer ``name`` cannot run ``problem`` (None when it can)."""
    if name not in PEERS:
        raise ValueError(f"peer: unknown peer {name!r} (known: {', '.join(PEERS)})")
    if family != "delta_rule" or problem.block_size != problem.K:
        return "peers run the ordinary delta rule (family delta_rule) only"
    if name in FLA_PEERS:
        if _fla_ops() is None:
            return "flash-linear-attention (fla-core) is not installed"
        if problem.device != "cuda":
            return "fla kernels need a CUDA device"
        if name == "fla_chunk" and problem.dtype not in (torch.float16, torch.bfloat16):
            return "fla's chunk_delta_rule rejects float32/float64 (bf16, fp16 only)"
        if problem.dtype == torch.float64:
            return "fla kernels do not take float64"
        if problem.K > 256 or problem.V > 256:
            return "fla's kernels support head dims up to 256"
        return None
    if problem.varlen:
        return "sdpa: packed varlen batches are not supported (no cu_seqlens)"
    return None


def make_forward(name: str, problem: Problem, inputs) -> Callable[..., torch.Tensor]:
    """``forward(q, k, v, beta) -> o`` [B, T, H, V] for peer ``name`` (``inputs``: numerics.Inputs,
    used for ``cu_seqlens``). Raises ValueError with the reason when the peer cannot run ``problem``."""
    reason = unsupported_reason(name, problem)
    if reason is not None:
        raise ValueError(f"peer {name!r} cannot run {problem.describe()} on {problem.device}: {reason}")
    cu_seqlens = inputs.cu_seqlens
    if name == "sdpa":
        def sdpa_forward(q, k, v, beta):
            # [B, T, H, D] -> [B, H, T, D] views; beta has no counterpart in attention
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            return o.transpose(1, 2)

        return sdpa_forward
    chunk_op, recurrent_op = _fla_ops()
    peer_op = chunk_op if name == "fla_chunk" else recurrent_op

    def fla_forward(q, k, v, beta):
        return peer_op(q, k, v, beta, cu_seqlens=cu_seqlens)[0]

    return fla_forward


def cost(name: str, problem: Problem, mode: str = "fwd") -> Cost:
    """FLOPs and minimum bytes of peer ``name`` on ``problem`` in ``mode`` ("fwd", "bwd", "fwd+bwd").

    fla: the delta rule's cost model (chunk 64 for fla_chunk, 1 for fla_recurrent). sdpa: causal
    attention, 2 T^2/2 (K + V) FLOPs per head forward, 2.5x that backward (FlashAttention's count);
    bytes: q, k, v read and o written (backward: also do read and dq, dk, dv written).
    """
    if name in FLA_PEERS:
        chunk_size = 64 if name == "fla_chunk" else 1
        fwd = delta_rule_cost(problem, chunk_size)
        bwd = delta_rule_cost(problem, chunk_size, backward=True)
    else:
        p = problem
        fwd_flops = float(p.num_seqs) * p.H * (p.tokens / p.num_seqs) ** 2 * (p.K + p.V)
        io = float(p.tokens * p.H * (2 * p.K + 2 * p.V) * p.itemsize)
        fwd = Cost(fwd_flops, io)
        bwd = Cost(2.5 * fwd_flops, 2 * io + p.tokens * p.H * p.V * p.itemsize)
    if mode == "fwd":
        return fwd
    if mode == "bwd":
        return bwd
    return Cost(fwd.flops + bwd.flops, fwd.bytes + bwd.bytes)
