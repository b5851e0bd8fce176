"""Numerics: fresh random inputs, relative errors and per-dtype tolerances against the float64 reference.

Every check draws fresh random inputs (never zeros; keys L2-normalised), compares with variant
"reference" run on float64 copies of the same inputs, and measures the relative Frobenius error
||x - ref|| / ||ref||. NaN or Inf anywhere is an infinite error and always fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from deltalab.variants.registry import Problem

# (forward, gradients): relative Frobenius error allowed against the float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (1e-2, 2e-2),
}


def tolerance(dtype: torch.dtype, gradient: bool = False) -> float:
    """The allowed relative error for ``dtype`` (forward outputs, or gradients)."""
    return TOLERANCES[dtype][1 if gradient else 0]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when ``out`` holds NaN/Inf or the shapes differ."""
    if out.shape != ref.shape:
        return float("inf")
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(device=out64.device, dtype=torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


@dataclass
class Inputs:
    """One call's arguments. ``num_blocks`` > 1 only for block-diagonal problems with per-block beta."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    initial_state: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        extra = [] if self.initial_state is None else [self.initial_state]
        return [self.q, self.k, self.v, self.beta, *extra]

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "Inputs":
        """A detached copy; q, k, v, beta in ``dtype``, the state in float64 when dtype is float64."""

        def conv(x, state=False):
            if x is None:
                return None
            dt = dtype if not state or dtype == torch.float64 else torch.float32
            return x.detach().to(device=device or x.device, dtype=dt or x.dtype).clone()

        return Inputs(
            conv(self.q),
            conv(self.k),
            conv(self.v),
            conv(self.beta),
            conv(self.initial_state, state=True),
            None if self.cu_seqlens is None else self.cu_seqlens.to(device or self.cu_seqlens.device),
        )


def random_cu_seqlens(total: int, num_seqs: int, generator: torch.Generator) -> torch.Tensor:
    """Offsets of ``num_seqs`` packed sequences of random (positive) lengths summing to ``total``."""
    if not 1 <= num_seqs <= total:
        raise ValueError(f"num_seqs: need 1 <= num_seqs <= total={total}, got {num_seqs}")
    cuts = torch.randperm(total - 1, generator=generator)[: num_seqs - 1] + 1
    return torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([total])]).to(torch.int64)


def random_inputs(
    problem: Problem,
    *,
    seed: int = 0,
    device=None,
    initial_state: bool = True,
    per_block_beta: bool = False,
) -> Inputs:
    """Fresh inputs for ``problem``: q, v ~ N(0, 1); k L2-normalised per head (per key block for the
    block-diagonal family); beta = sigmoid(N(0, 1)) in (0, 1); initial state ~ N(0, 1) float32.

    For a varlen problem (``problem.varlen``), B must be 1 and ``problem.num_seqs`` random-length
    sequences are packed.
    """
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = problem.B, problem.T, problem.H, problem.K, problem.V
    device = device or ("cuda" if problem.device == "cuda" else "cpu")

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q = randn(B, T, H, K)
    block = problem.block_size
    k = F.normalize(randn(B, T, H, K // block, block), dim=-1).reshape(B, T, H, K)
    v = randn(B, T, H, V)
    nb = K // block
    beta_shape = (B, T, H, nb) if per_block_beta and problem.block_size != problem.K else (B, T, H)
    beta = torch.sigmoid(randn(*beta_shape))
    cu = random_cu_seqlens(T, problem.num_seqs, gen) if problem.varlen else None
    h0 = randn(problem.num_seqs, H, K, V) if initial_state else None
    dt = problem.dtype
    return Inputs(q, k, v, beta, h0, cu).to(dt, device)
